//! Manifest bytes from the upstream: their media type and the digests
//! they reference are read without a panic, and every digest is valid.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_proxy::oci::{Digest, manifest_media_type, manifest_references};

fuzz_target!(|input: &[u8]| {
    manifest_media_type(input);
    for (digest, _) in manifest_references(input) {
        assert_eq!(Digest::parse(&digest.to_string()).ok(), Some(digest));
    }
});
