use bytes::Bytes;
use driver_core::READ_CHUNK;

/// Bytes kept as the chunks they were written in, so that writing and
/// committing never copy; a reader streams slices of the chunks.
#[derive(Clone, Default)]
pub(crate) struct Rope {
    chunks: Vec<Bytes>,
    len: u64,
}

impl Rope {
    pub(crate) fn from_bytes(data: Bytes) -> Self {
        let mut rope = Self::default();
        rope.push(data);
        rope
    }

    pub(crate) fn push(&mut self, data: Bytes) {
        self.len += data.len() as u64;
        if !data.is_empty() {
            self.chunks.push(data);
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The content as one buffer: free for zero or one chunk, one copy otherwise.
    pub(crate) fn to_bytes(&self) -> Bytes {
        match self.chunks.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => many.concat().into(),
        }
    }

    /// Slices of at most [`READ_CHUNK`] bytes covering the content from `offset`.
    pub(crate) fn slices_from(&self, mut offset: u64) -> Vec<Bytes> {
        let mut out = Vec::new();
        for chunk in &self.chunks {
            let len = chunk.len() as u64;
            if offset >= len {
                offset -= len;
                continue;
            }
            let rest = chunk.slice(offset as usize..);
            offset = 0;
            for start in (0..rest.len()).step_by(READ_CHUNK) {
                out.push(rest.slice(start..(start + READ_CHUNK).min(rest.len())));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_the_rest_from_any_offset() {
        let mut rope = Rope::default();
        for part in [&b"abc"[..], b"", b"defgh", b"i"] {
            rope.push(Bytes::copy_from_slice(part));
        }
        assert_eq!(rope.len(), 9);
        assert_eq!(rope.to_bytes(), "abcdefghi");
        for offset in 0..=9 {
            let joined: Vec<u8> = rope.slices_from(offset).concat();
            assert_eq!(joined, &b"abcdefghi"[offset as usize..], "offset {offset}");
        }
    }
}
