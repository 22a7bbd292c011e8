//! A local filesystem [`StorageDriver`](driver_core::StorageDriver).
//!
//! Files live under a root directory with the same layout as their
//! [`StoragePath`](driver_core::StoragePath)s, so a root that CNCF distribution
//! filled (`<root>/docker/registry/v2/...`) is readable as it is.
//!
//! - `put_content` and [`commit`](driver_core::FileWriter::commit) write aside
//!   and rename into place; with [`Fsync::Always`] (the default) the data and
//!   the directory entry are flushed to disk first.
//! - Writers stage their bytes under `<root>/@writers/`, a name no storage
//!   path can reach, so a writer closed (or a process killed) before commit can
//!   be resumed with `append`.
//! - Every path is resolved inside the root through [`cap_std`]: no `..`, and
//!   symbolic links cannot lead outside it.

mod config;
mod core;
mod driver;
mod error;
mod reader;
mod writer;

pub use config::{ConfigError, FsConfig, Fsync};
pub use driver::FsDriver;

/// The driver's name, as configuration and errors spell it.
pub const NAME: &str = "filesystem";
