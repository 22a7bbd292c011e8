use std::sync::Arc;

use bytes::Bytes;
use driver_core::{ByteStream, Error, READ_CHUNK, StoragePath};
use rustix::buffer::spare_capacity;

use crate::NAME;
use crate::error::io_error;

/// Streams `len - offset` bytes of `file` from `offset`, one chunk of at most
/// [`READ_CHUNK`] bytes per blocking read. The stream holds one chunk at a
/// time and reads nothing until polled. The file was opened before the
/// stream, so a concurrent replace of the path does not change what it
/// reads.
pub(crate) fn stream_file(
    file: Arc<std::fs::File>,
    path: StoragePath,
    offset: u64,
    len: u64,
) -> ByteStream {
    Box::pin(futures::stream::try_unfold(offset, move |pos| {
        let file = Arc::clone(&file);
        let path = path.clone();
        async move {
            if pos >= len {
                return Ok(None);
            }
            let want = usize::try_from(len - pos).map_or(READ_CHUNK, |n| n.min(READ_CHUNK));
            let chunk = tokio::task::spawn_blocking(move || {
                let mut buf = Vec::with_capacity(want);
                rustix::io::pread(&*file, spare_capacity(&mut buf), pos)
                    .map_err(|e| io_error("read", &path, e.into()))?;
                if buf.is_empty() {
                    return Err(Error::backend(
                        NAME,
                        "read",
                        &path,
                        false,
                        "the file shrank while being read",
                    ));
                }
                Ok(buf)
            })
            .await
            .map_err(|e| Error::backend(NAME, "blocking task", "", false, e))??;
            let next = pos + chunk.len() as u64;
            Ok(Some((Bytes::from(chunk), next)))
        }
    }))
}
