use aws_sdk_s3::primitives::ByteStream as SdkStream;
use driver_core::{ByteStream, Error, READ_CHUNK, StoragePath};
use futures::StreamExt;

use crate::NAME;

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

/// The whole size of an object from a `GetObject` answer for a read from
/// `offset`: the total of `Content-Range` (`bytes 5-9/10`) when the read was
/// ranged, else `offset` plus what is sent.
pub(crate) fn whole_size(
    content_range: Option<&str>,
    content_length: Option<i64>,
    offset: u64,
) -> u64 {
    content_range
        .and_then(|r| r.rsplit_once('/'))
        .and_then(|(_, total)| total.trim().parse().ok())
        .unwrap_or_else(|| offset + content_length.unwrap_or(0).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::whole_size;

    #[test]
    fn whole_size_comes_from_the_range_total_or_the_length() {
        assert_eq!(whole_size(Some("bytes 32-95/96"), Some(64), 32), 96);
        assert_eq!(whole_size(None, Some(96), 0), 96);
        // A server that sends no range (or an unknown total, `*`) sent the rest.
        assert_eq!(whole_size(Some("bytes 32-95/*"), Some(64), 32), 96);
        assert_eq!(whole_size(None, None, 0), 0);
    }
}
