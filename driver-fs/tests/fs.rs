//! Behaviour specific to the filesystem driver: crash survival of staged
//! writes, confinement to the root, and the on-disk layout.

use std::process::Command;

use bytes::Bytes;
use conformance::{random_bytes, read_all};
use driver_core::{ErrorKind, StorageDriver, StoragePath};
use driver_fs::{FsConfig, FsDriver, Fsync};
use tempfile::TempDir;

const CRASH_ROOT: &str = "DRIVER_FS_CRASH_ROOT";
const MIB: usize = 1 << 20;

fn open(dir: &std::path::Path) -> FsDriver {
    FsDriver::open(&FsConfig {
        root_directory: dir.to_owned(),
        fsync: Fsync::Always,
    })
    .expect("open")
}

fn path(p: &str) -> StoragePath {
    StoragePath::parse(p).expect("valid path")
}

/// Not a test by itself: when `DRIVER_FS_CRASH_ROOT` is set, it is the child
/// process of `staged_data_survives_a_crash`, which writes 3.5 MiB and dies.
#[tokio::test]
async fn crash_helper_process() {
    let Ok(root) = std::env::var(CRASH_ROOT) else {
        return;
    };
    let driver = open(root.as_ref());
    let data = random_bytes(7, 7 * MIB / 2);
    let mut writer = driver
        .writer(&path("/upload/data"), false)
        .await
        .expect("writer");
    for chunk in data.chunks(MIB / 2) {
        writer
            .write(Bytes::copy_from_slice(chunk))
            .await
            .expect("write");
    }
    std::process::abort();
}

#[tokio::test]
async fn staged_data_survives_a_crash() {
    let dir = TempDir::new().expect("tempdir");
    let status = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "crash_helper_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_ROOT, dir.path())
        .status()
        .expect("run the child");
    assert!(!status.success(), "the child was meant to abort");

    let driver = open(dir.path());
    let target = path("/upload/data");
    assert_eq!(
        driver.stat(&target).await.map(drop).unwrap_err().kind(),
        ErrorKind::PathNotFound,
        "nothing visible after the crash"
    );
    let data = random_bytes(7, 7 * MIB / 2);
    let mut writer = driver
        .writer(&target, true)
        .await
        .expect("resume after the crash");
    let kept = writer.size() as usize;
    // Everything but at most the last unflushed buffer survived.
    assert!(
        (5 * MIB / 2..=data.len()).contains(&kept),
        "kept {kept} bytes"
    );
    writer
        .write(data.slice(kept..))
        .await
        .expect("write the rest");
    writer.commit().await.expect("commit");
    assert!(
        driver.get_content(&target).await.expect("get") == data,
        "resumed content differs"
    );
}

#[tokio::test]
async fn dropped_writer_keeps_its_bytes() {
    let dir = TempDir::new().expect("tempdir");
    let driver = open(dir.path());
    let target = path("/f");
    let mut writer = driver.writer(&target, false).await.expect("writer");
    writer
        .write(Bytes::from_static(b"buffered"))
        .await
        .expect("write");
    drop(writer);
    let mut writer = driver.writer(&target, true).await.expect("resume");
    assert_eq!(writer.size(), 8);
    writer.commit().await.expect("commit");
    assert_eq!(driver.get_content(&target).await.expect("get"), "buffered");
}

#[tokio::test]
async fn symlinks_cannot_escape_the_root() {
    let outside = TempDir::new().expect("tempdir");
    std::fs::write(outside.path().join("secret"), b"secret").expect("write secret");
    let dir = TempDir::new().expect("tempdir");
    std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).expect("symlink");
    let driver = open(dir.path());
    assert!(
        driver.get_content(&path("/link/secret")).await.is_err(),
        "read through an escaping link"
    );
    assert!(
        driver
            .put_content(&path("/link/planted"), Bytes::from_static(b"x"))
            .await
            .is_err(),
        "wrote through an escaping link"
    );
    assert!(
        !outside.path().join("planted").exists(),
        "a file appeared outside the root"
    );
    assert!(
        driver
            .list(&StoragePath::root())
            .await
            .expect("list /")
            .is_empty(),
        "an escaping link is listed"
    );
}

#[tokio::test]
async fn staging_areas_are_invisible() {
    let dir = TempDir::new().expect("tempdir");
    let driver = open(dir.path());
    let mut writer = driver
        .writer(&path("/pending"), false)
        .await
        .expect("writer");
    writer.write(Bytes::from_static(b"x")).await.expect("write");
    writer.close().await.expect("close");
    assert!(
        driver
            .list(&StoragePath::root())
            .await
            .expect("list /")
            .is_empty()
    );
    let mut visit = |_: &driver_core::FileInfo| panic!("walk reported staged data");
    driver
        .walk(&StoragePath::root(), &Default::default(), &mut visit)
        .await
        .expect("walk");
}

#[tokio::test]
async fn layout_matches_distribution() {
    let dir = TempDir::new().expect("tempdir");
    let blob = dir
        .path()
        .join("docker/registry/v2/blobs/sha256/ab/abcd/data");
    std::fs::create_dir_all(blob.parent().expect("parent")).expect("mkdir");
    std::fs::write(&blob, b"layer").expect("write");
    let driver = open(dir.path());
    let stored = path("/docker/registry/v2/blobs/sha256/ab/abcd/data");
    assert_eq!(read_all(&driver, &stored, 0).await.expect("read"), "layer");
    driver
        .put_content(
            &path("/docker/registry/v2/repositories/x/link"),
            Bytes::from_static(b"sha256:abcd"),
        )
        .await
        .expect("put");
    assert_eq!(
        std::fs::read(dir.path().join("docker/registry/v2/repositories/x/link")).expect("on disk"),
        b"sha256:abcd"
    );
}

#[tokio::test]
async fn the_last_closed_writer_resumes_even_when_clocks_tie() {
    let dir = TempDir::new().expect("tempdir");
    let driver = open(dir.path());
    let target = path("/upload/data");
    let mut first = driver.writer(&target, false).await.expect("writer");
    first.write(random_bytes(1, 1949)).await.expect("write");
    first.close().await.expect("close");
    // The first writer's staged file looks newer than any clock reading
    // (a coarse or skewed clock): only the close order may decide.
    let future = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    for staging in std::fs::read_dir(dir.path().join("@writers")).expect("staging") {
        for staged in std::fs::read_dir(staging.expect("dir").path()).expect("staged") {
            std::fs::File::options()
                .append(true)
                .open(staged.expect("file").path())
                .and_then(|f| f.set_modified(future))
                .expect("set mtime");
        }
    }
    let mut second = driver.writer(&target, false).await.expect("writer");
    second.close().await.expect("close an empty writer");
    let resumed = driver.writer(&target, true).await.expect("resume");
    assert_eq!(
        resumed.size(),
        0,
        "resumed an older writer than the last closed"
    );
}
