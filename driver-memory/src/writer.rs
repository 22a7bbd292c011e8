use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use driver_core::{Error, FileWriter, Result, StoragePath, WriterState};

use crate::NAME;
use crate::core::{Staged, State, lock};

/// A writer whose staged bytes live in the shared state, so that a closed
/// writer can be resumed by another.
pub(crate) struct MemoryWriter {
    state: Arc<Mutex<State>>,
    path: StoragePath,
    id: u64,
    size: u64,
    life: WriterState,
}

impl MemoryWriter {
    pub(crate) fn new(state: Arc<Mutex<State>>, path: StoragePath, id: u64, size: u64) -> Self {
        Self {
            state,
            path,
            id,
            size,
            life: WriterState::Open,
        }
    }

    fn vanished(&self) -> Error {
        Error::backend(
            NAME,
            "write",
            &self.path,
            false,
            "the staged data was removed",
        )
    }

    /// Removes this writer's staged entry from `state`.
    fn take(&self, state: &mut State) -> Result<Staged> {
        let list = state
            .staged
            .get_mut(self.path.as_str())
            .ok_or_else(|| self.vanished())?;
        let index = list
            .iter()
            .position(|s| s.id == self.id)
            .ok_or_else(|| self.vanished())?;
        let staged = list.swap_remove(index);
        if list.is_empty() {
            state.staged.remove(self.path.as_str());
        }
        Ok(staged)
    }

    /// Marks the staged entry closed, so that `writer(path, true)` resumes it.
    fn mark_closed(&self) -> Result<()> {
        let mut state = lock(&self.state);
        let seq = state.seq();
        let mut staged = self.take(&mut state)?;
        staged.closed_seq = Some(seq);
        staged.touched = SystemTime::now();
        state
            .staged
            .entry(self.path.as_str().to_owned())
            .or_default()
            .push(staged);
        Ok(())
    }
}

#[async_trait]
impl FileWriter for MemoryWriter {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        self.life.check_open(NAME, &self.path)?;
        let mut state = lock(&self.state);
        let staged = state
            .staged
            .get_mut(self.path.as_str())
            .and_then(|l| l.iter_mut().find(|s| s.id == self.id))
            .ok_or_else(|| self.vanished())?;
        self.size += data.len() as u64;
        staged.data.push(data);
        staged.touched = SystemTime::now();
        Ok(())
    }

    fn size(&self) -> u64 {
        self.size
    }

    async fn close(&mut self) -> Result<()> {
        self.life.check_open(NAME, &self.path)?;
        self.mark_closed()?;
        self.life = WriterState::Closed;
        Ok(())
    }

    async fn commit(&mut self) -> Result<()> {
        self.life.check_open(NAME, &self.path)?;
        let mut state = lock(&self.state);
        let data = self.take(&mut state)?.data;
        if let Err(e) = state.insert(&self.path, data.clone()) {
            // Keep the writer usable: it may still be cancelled or closed.
            let staged = Staged {
                id: self.id,
                data,
                closed_seq: None,
                touched: SystemTime::now(),
            };
            state
                .staged
                .entry(self.path.as_str().to_owned())
                .or_default()
                .push(staged);
            return Err(e);
        }
        self.life = WriterState::Committed;
        Ok(())
    }

    async fn cancel(&mut self) -> Result<()> {
        self.life.check_open(NAME, &self.path)?;
        self.life = WriterState::Cancelled;
        let mut state = lock(&self.state);
        self.take(&mut state).map(drop)
    }
}

impl Drop for MemoryWriter {
    fn drop(&mut self) {
        if self.life == WriterState::Open {
            // Like close; a writer whose data vanished has nothing to keep.
            let _ = self.mark_closed();
        }
    }
}
