//! What every case works with: a driver under a private random prefix,
//! content generators and assertion helpers.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use driver_core::{ErrorKind, FileWriter, Result, StorageDriver, StoragePath};
use futures::TryStreamExt;
use futures::future::BoxFuture;
use rand::{Rng, RngCore, SeedableRng, rngs::StdRng};

/// Sizes and counts the suite uses, from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Size of the large-stream case (`CONFORMANCE_LARGE_STREAM_BYTES`, default 1 GiB).
    pub large_stream_bytes: u64,
    /// Size of the object read by concurrent readers
    /// (`CONFORMANCE_CONCURRENT_READ_BYTES`, default 128 MiB).
    pub concurrent_read_bytes: usize,
    /// Random operation sequences in the model case (`CONFORMANCE_MODEL_CASES`, default 64).
    pub model_cases: u32,
}

impl Settings {
    /// Reads the settings from the environment, with defaults.
    pub fn from_env() -> Self {
        Self {
            large_stream_bytes: env_or("CONFORMANCE_LARGE_STREAM_BYTES", 1 << 30),
            concurrent_read_bytes: env_or("CONFORMANCE_CONCURRENT_READ_BYTES", 128 << 20),
            model_cases: env_or("CONFORMANCE_MODEL_CASES", 64),
        }
    }

    /// Small sizes, for running the whole suite many times (broken-driver tests).
    pub fn small() -> Self {
        Self {
            large_stream_bytes: 24 << 20,
            concurrent_read_bytes: 8 << 20,
            model_cases: 24,
        }
    }
}

/// The context of one case: the driver and a random prefix no other case uses.
#[derive(Clone)]
pub struct Ctx {
    driver: Arc<dyn StorageDriver>,
    prefix: StoragePath,
    case: &'static str,
    settings: Arc<Settings>,
}

impl Ctx {
    /// A context for `case` under a fresh random prefix.
    pub fn new(driver: Arc<dyn StorageDriver>, case: &'static str, settings: Settings) -> Self {
        let prefix = StoragePath::root()
            .join(&format!("conformance-{:016x}", rand::random::<u64>()))
            .expect("valid prefix");
        Self {
            driver,
            prefix,
            case,
            settings: Arc::new(settings),
        }
    }

    /// The driver under test.
    pub fn driver(&self) -> &dyn StorageDriver {
        &*self.driver
    }

    /// The shared handle of the driver under test.
    pub fn driver_arc(&self) -> Arc<dyn StorageDriver> {
        Arc::clone(&self.driver)
    }

    /// The case's private prefix.
    pub fn prefix(&self) -> &StoragePath {
        &self.prefix
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// `relative` beneath the case's prefix.
    pub fn path(&self, relative: &str) -> StoragePath {
        self.prefix.join(relative).expect("test paths are valid")
    }

    /// Prints why the rest of the case is skipped.
    pub fn skip(&self, why: &str) {
        println!("skipped: {} on {}: {why}", self.case, self.driver.name());
    }

    /// Puts `data` at `relative`, failing the case on error.
    pub async fn put(&self, relative: &str, data: impl Into<Bytes>) -> StoragePath {
        let path = self.path(relative);
        self.driver
            .put_content(&path, data.into())
            .await
            .expect("put_content");
        path
    }

    /// Reads the whole stream of `path` from `offset`.
    pub async fn read(&self, path: &StoragePath, offset: u64) -> Result<Bytes> {
        read_all(self.driver(), path, offset).await
    }

    /// Opens a writer, writes `chunks`, and returns it still open.
    pub async fn write_chunks(
        &self,
        path: &StoragePath,
        append: bool,
        chunks: &[Bytes],
    ) -> Box<dyn FileWriter> {
        let mut writer = self.driver.writer(path, append).await.expect("writer");
        for chunk in chunks {
            writer.write(chunk.clone()).await.expect("write");
        }
        writer
    }

    /// Deletes the prefix and checks that nothing is left under it.
    pub async fn assert_clean(&self) {
        match self.driver.delete(&self.prefix).await {
            Ok(()) => {}
            Err(e) => assert_eq!(
                e.kind(),
                ErrorKind::PathNotFound,
                "delete of the case prefix: {e}"
            ),
        }
        expect_kind(
            self.driver.list(&self.prefix).await,
            ErrorKind::PathNotFound,
            "list after cleanup",
        );
        expect_kind(
            self.driver.stat(&self.prefix).await,
            ErrorKind::PathNotFound,
            "stat after cleanup",
        );
    }
}

/// Reads the whole stream of `path` from `offset`.
pub async fn read_all(
    driver: &dyn StorageDriver,
    path: &StoragePath,
    offset: u64,
) -> Result<Bytes> {
    let chunks: Vec<Bytes> = driver.reader(path, offset).await?.try_collect().await?;
    Ok(match chunks.len() {
        1 => chunks.into_iter().next().unwrap_or_default(),
        _ => chunks.concat().into(),
    })
}

/// Asserts that `result` failed with `kind`, and that the error names a driver.
pub fn expect_kind<T: Debug>(result: Result<T>, kind: ErrorKind, what: &str) {
    match result {
        Ok(v) => panic!("{what}: expected {kind:?}, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.kind(), kind, "{what}: expected {kind:?}, got {e}");
            assert!(!e.driver().is_empty(), "{what}: error names no driver");
        }
    }
}

/// Asserts two contents are equal, reporting sizes and the first differing
/// byte rather than the bytes themselves.
#[track_caller]
pub fn assert_bytes(got: &[u8], expected: &[u8], what: &str) {
    if got != expected {
        let at = got
            .iter()
            .zip(expected)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(expected.len()));
        panic!(
            "{what}: got {} bytes, expected {}; they differ from byte {at}",
            got.len(),
            expected.len()
        );
    }
}

/// `len` pseudo-random bytes, the same for the same `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Bytes {
    let mut data = vec![0; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data.into()
}

/// Reports that `test` cannot run here, and why. Fails instead when the
/// variable `require` (`REQUIRE_S3`, `REQUIRE_E2E`, set by CI) is `1`, so CI
/// never passes by skipping.
pub fn skip(test: &str, require: &str, why: &str) {
    assert!(
        std::env::var(require).as_deref() != Ok("1"),
        "{require}=1 but {test} cannot run: {why}"
    );
    println!("skipped: {test}: {why}");
}

/// The variable `name` parsed as a `T`, or `default` when it is unset or
/// does not parse (the tuning knobs of the suite and the benchmarks).
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A random seed for content.
pub fn seed() -> u64 {
    rand::rng().random()
}

/// One case: a name and its function.
#[derive(Clone, Copy)]
pub struct Case {
    /// The case's name (its function's name in [`crate::cases`]).
    pub name: &'static str,
    /// Runs the case; it panics on failure.
    pub run: fn(Ctx) -> BoxFuture<'static, ()>,
}

/// Runs one case against the driver a factory makes, then checks the case
/// left nothing behind. A factory returning `None` has printed why the
/// driver is not available; the case is then skipped.
pub async fn run_case<F, Fut, G>(
    name: &'static str,
    factory: F,
    case: fn(Ctx) -> BoxFuture<'static, ()>,
) where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Option<(Arc<dyn StorageDriver>, G)>>,
{
    let Some((driver, _guard)) = factory().await else {
        println!("skipped: {name}: the driver is not available");
        return;
    };
    let ctx = Ctx::new(driver, name, Settings::from_env());
    case(ctx.clone()).await;
    ctx.assert_clean().await;
}

/// Runs every case against `driver`, each in its own task, and returns the
/// names of the cases that failed with their panic messages.
pub async fn failing_cases(
    driver: Arc<dyn StorageDriver>,
    settings: Settings,
) -> Vec<(&'static str, String)> {
    let mut failures = Vec::new();
    for case in crate::CASES {
        let ctx = Ctx::new(Arc::clone(&driver), case.name, settings.clone());
        let run = case.run;
        let outcome = tokio::spawn(async move {
            run(ctx.clone()).await;
            ctx.assert_clean().await;
        })
        .await;
        if let Err(e) = outcome {
            let message = e
                .try_into_panic()
                .ok()
                .and_then(|p| {
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                })
                .unwrap_or_else(|| "cancelled".to_owned());
            failures.push((case.name, message));
        }
    }
    failures
}
