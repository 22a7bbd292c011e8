//! The property test: random operation sequences run against the driver
//! under test and against [`MemoryDriver`] as the model; every result and
//! error kind must agree. Failures are shrunk to a minimal sequence.

use std::sync::Arc;

use bytes::Bytes;
use driver_core::{ErrorKind, FileInfo, StorageDriver, StoragePath, WalkControl, WalkOptions};
use driver_memory::MemoryDriver;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

use crate::support::{Ctx, random_bytes, read_all};

/// Files all sit at depth three and directories above, so no operation can
/// put a file where a directory is (behaviour the contract leaves open).
const TOP: [&str; 3] = ["a", "asuffix", "b"];
const MID: [&str; 2] = ["x", "y"];
const LEAF: [&str; 2] = ["f", "g"];

fn file(i: usize) -> String {
    format!("{}/{}/{}", TOP[i / 4 % 3], MID[i / 2 % 2], LEAF[i % 2])
}

/// Directories: the base (""), the tops, and the middles.
fn dir(i: usize) -> String {
    match i % 10 {
        0 => String::new(),
        n @ 1..=3 => TOP[n - 1].to_owned(),
        n => format!("{}/{}", TOP[(n - 4) / 2], MID[(n - 4) % 2]),
    }
}

/// A file or a directory.
fn node(i: usize) -> String {
    if i % 2 == 0 { file(i / 2) } else { dir(i / 2) }
}

/// How a streaming write ends.
#[derive(Debug, Clone, Copy)]
enum End {
    Commit,
    Close,
    Cancel,
}

#[derive(Debug, Clone)]
enum Op {
    Put {
        file: usize,
        len: usize,
        seed: u64,
    },
    Get {
        file: usize,
    },
    Read {
        file: usize,
        offset: u64,
    },
    Stat {
        node: usize,
    },
    List {
        dir: usize,
    },
    Delete {
        node: usize,
    },
    Move {
        from: usize,
        to: usize,
    },
    Stream {
        file: usize,
        append: bool,
        chunks: Vec<usize>,
        seed: u64,
        end: End,
    },
    Walk {
        dir: usize,
        start_after: Option<usize>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let end = prop_oneof![Just(End::Commit), Just(End::Close), Just(End::Cancel)];
    prop_oneof![
        3 => (0..12usize, 0..3000usize, any::<u64>()).prop_map(|(file, len, seed)| Op::Put { file, len, seed }),
        2 => (0..12usize).prop_map(|file| Op::Get { file }),
        1 => (0..12usize, 0..3001u64).prop_map(|(file, offset)| Op::Read { file, offset }),
        2 => (0..44usize).prop_map(|node| Op::Stat { node }),
        2 => (0..10usize).prop_map(|dir| Op::List { dir }),
        1 => (0..44usize).prop_map(|node| Op::Delete { node }),
        2 => (0..12usize, 0..12usize).prop_map(|(from, to)| Op::Move { from, to }),
        3 => (0..12usize, any::<bool>(), prop::collection::vec(0..2000usize, 0..4), any::<u64>(), end)
            .prop_map(|(file, append, chunks, seed, end)| Op::Stream { file, append, chunks, seed, end }),
        1 => (0..10usize, prop::option::of(0..44usize)).prop_map(|(dir, start_after)| Op::Walk { dir, start_after }),
    ]
}

/// A result with everything that may legitimately differ (times, the base
/// prefix) removed.
#[derive(Debug, PartialEq)]
enum Outcome {
    Err(ErrorKind),
    Unit,
    Bytes(Bytes),
    Stat { size: u64, is_dir: bool },
    Paths(Vec<String>),
    Written { resumed_at: u64, size: u64 },
}

/// One side of the comparison: a driver and the base its paths live under.
struct Side {
    driver: Arc<dyn StorageDriver>,
    base: StoragePath,
}

impl Side {
    fn path(&self, relative: &str) -> StoragePath {
        if relative.is_empty() {
            self.base.clone()
        } else {
            self.base.join(relative).expect("model paths are valid")
        }
    }

    fn relative(&self, path: &StoragePath) -> String {
        path.as_str()[self.base.as_str().len()..].to_owned()
    }

    async fn apply(&self, op: &Op) -> Outcome {
        let d = &*self.driver;
        let unit = |r: driver_core::Result<()>| {
            r.map_or_else(|e| Outcome::Err(e.kind()), |()| Outcome::Unit)
        };
        let stat = |r: driver_core::Result<FileInfo>| match r {
            Ok(i) => Outcome::Stat {
                size: i.size,
                is_dir: i.is_dir,
            },
            Err(e) => Outcome::Err(e.kind()),
        };
        match op {
            Op::Put { file: f, len, seed } => unit(
                d.put_content(&self.path(&file(*f)), random_bytes(*seed, *len))
                    .await,
            ),
            Op::Get { file: f } => d
                .get_content(&self.path(&file(*f)))
                .await
                .map_or_else(|e| Outcome::Err(e.kind()), Outcome::Bytes),
            Op::Read { file: f, offset } => read_all(d, &self.path(&file(*f)), *offset)
                .await
                .map_or_else(|e| Outcome::Err(e.kind()), Outcome::Bytes),
            Op::Stat { node: n } => stat(d.stat(&self.path(&node(*n))).await),
            Op::List { dir: i } => match d.list(&self.path(&dir(*i))).await {
                Ok(paths) => Outcome::Paths(paths.iter().map(|p| self.relative(p)).collect()),
                Err(e) => Outcome::Err(e.kind()),
            },
            Op::Delete { node: n } => {
                let path = self.path(&node(*n));
                if path == self.base {
                    return Outcome::Unit; // the base holds the comparison together
                }
                unit(d.delete(&path).await)
            }
            Op::Move { from, to } => unit(
                d.move_file(&self.path(&file(*from)), &self.path(&file(*to)))
                    .await,
            ),
            Op::Stream {
                file: f,
                append,
                chunks,
                seed,
                end,
            } => self.stream(&file(*f), *append, chunks, *seed, *end).await,
            Op::Walk {
                dir: i,
                start_after,
            } => {
                let options = WalkOptions {
                    start_after: start_after.map(|n| self.path(&node(n))),
                };
                let mut seen = Vec::new();
                let mut visit = |info: &FileInfo| {
                    seen.push(format!(
                        "{}{}",
                        self.relative(&info.path),
                        if info.is_dir { "/" } else { "" }
                    ));
                    WalkControl::Continue
                };
                match d.walk(&self.path(&dir(*i)), &options, &mut visit).await {
                    Ok(()) => Outcome::Paths(seen),
                    Err(e) => Outcome::Err(e.kind()),
                }
            }
        }
    }

    async fn stream(
        &self,
        file: &str,
        append: bool,
        chunks: &[usize],
        seed: u64,
        end: End,
    ) -> Outcome {
        let mut writer = match self.driver.writer(&self.path(file), append).await {
            Ok(w) => w,
            Err(e) => return Outcome::Err(e.kind()),
        };
        let resumed_at = writer.size();
        for (i, len) in chunks.iter().enumerate() {
            if let Err(e) = writer.write(random_bytes(seed ^ i as u64, *len)).await {
                return Outcome::Err(e.kind());
            }
        }
        let size = writer.size();
        let ended = match end {
            End::Commit => writer.commit().await,
            End::Close => writer.close().await,
            End::Cancel => writer.cancel().await,
        };
        match ended {
            Ok(()) => Outcome::Written { resumed_at, size },
            Err(e) => Outcome::Err(e.kind()),
        }
    }

    /// Cancels what closed writers left, so that nothing stays staged.
    async fn cancel_leftovers(&self, ops: &[Op]) {
        for op in ops {
            if let Op::Stream {
                file: f,
                end: End::Close,
                ..
            } = op
            {
                if let Ok(mut w) = self.driver.writer(&self.path(&file(*f)), true).await {
                    let _ = w.cancel().await;
                }
            }
        }
    }
}

/// Runs `ops` on both sides; the first disagreement is an error.
async fn run(ctx: &Ctx, round: u64, ops: &[Op]) -> Result<(), String> {
    let subject = Side {
        driver: ctx.driver_arc(),
        base: ctx.path(&format!("m{round}")),
    };
    let model = Side {
        driver: Arc::new(MemoryDriver::new()),
        base: StoragePath::parse("/m").expect("valid"),
    };
    let mut verdict = Ok(());
    for (i, op) in ops.iter().enumerate() {
        let expected = model.apply(op).await;
        let got = subject.apply(op).await;
        if got != expected {
            verdict = Err(format!(
                "step {i} {op:?}: driver gave {got:?}, the model {expected:?}"
            ));
            break;
        }
    }
    subject.cancel_leftovers(ops).await;
    if let Err(e) = ctx.driver().delete(&subject.base).await {
        assert_eq!(e.kind(), ErrorKind::PathNotFound, "cleanup: {e}");
    }
    verdict
}

/// Generates sequences and shrinks failures on a thread of its own
/// (proptest's value trees are not `Send`): each candidate goes out on
/// `candidates`, its verdict comes back on `verdicts`. Returns the smallest
/// failing sequence found, if any.
fn search(
    cases: u32,
    candidates: tokio::sync::mpsc::Sender<Vec<Op>>,
    verdicts: std::sync::mpsc::Receiver<Result<(), String>>,
) -> Option<(Vec<Op>, String)> {
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = prop::collection::vec(op(), 1..40);
    let try_ops = |ops: Vec<Op>| -> Option<Result<(), String>> {
        candidates.blocking_send(ops).ok()?;
        verdicts.recv().ok()
    };
    for _ in 0..cases {
        let mut tree = strategy.new_tree(&mut runner).ok()?;
        let Err(first) = try_ops(tree.current())? else {
            continue;
        };
        let mut smallest = (tree.current(), first);
        let mut more = tree.simplify();
        for _ in 0..500 {
            if !more {
                break;
            }
            let ops = tree.current();
            more = match try_ops(ops.clone())? {
                Err(why) => {
                    smallest = (ops, why);
                    tree.simplify()
                }
                Ok(()) => tree.complicate(),
            };
        }
        return Some(smallest);
    }
    None
}

/// The model case: `settings().model_cases` random sequences of up to 40
/// operations; a failure is shrunk before it is reported.
pub(crate) async fn check(ctx: &Ctx) {
    let (candidates, mut incoming) = tokio::sync::mpsc::channel(1);
    let (verdicts, outgoing) = std::sync::mpsc::channel();
    let cases = ctx.settings().model_cases;
    let searcher = std::thread::spawn(move || search(cases, candidates, outgoing));
    let mut round = 0;
    while let Some(ops) = incoming.recv().await {
        round += 1;
        if verdicts.send(run(ctx, round, &ops).await).is_err() {
            break;
        }
    }
    if let Some((ops, why)) = searcher.join().expect("the sequence generator panicked") {
        panic!("the driver disagrees with the model.\nminimal sequence: {ops:#?}\n{why}");
    }
}
