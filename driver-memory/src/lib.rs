//! An in-memory [`StorageDriver`](driver_core::StorageDriver).
//!
//! It holds every object in process memory behind one mutex that is never held
//! across an `.await`. It is complete (every operation, resumable writers) and
//! simple enough to be obviously right, which makes it the reference model the
//! conformance suite compares other drivers against.

mod core;
mod driver;
mod rope;
mod writer;

pub use driver::MemoryDriver;

/// The driver's name, as configuration and errors spell it.
pub const NAME: &str = "inmemory";
