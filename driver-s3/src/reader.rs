use aws_sdk_s3::primitives::ByteStream as SdkStream;
use driver_core::{ByteStream, Error, READ_CHUNK, StoragePath};
use futures::StreamExt;

use crate::driver::NAME;

/// Adapts a `GetObject` body: one streaming request per reader, so a
/// concurrent replace of the object cannot mix two versions (the server
/// either finishes the old one or fails the stream). Chunks larger than
/// [`READ_CHUNK`] are split.
pub(crate) fn body_stream(body: SdkStream, path: StoragePath) -> ByteStream {
    let chunks = futures::stream::try_unfold(body, move |mut body| {
        let path = path.clone();
        async move {
            match body.try_next().await {
                Ok(Some(chunk)) => Ok(Some((chunk, body))),
                Ok(None) => Ok(None),
                Err(e) => Err(Error::backend(NAME, "read", path, true, e)),
            }
        }
    });
    Box::pin(chunks.flat_map(|chunk| {
        let pieces: Vec<_> = match chunk {
            Ok(chunk) if chunk.len() > READ_CHUNK => (0..chunk.len())
                .step_by(READ_CHUNK)
                .map(|i| Ok(chunk.slice(i..(i + READ_CHUNK).min(chunk.len()))))
                .collect(),
            other => vec![other],
        };
        futures::stream::iter(pieces)
    }))
}
