//! Repository names, references and digests from a URL path: whatever
//! parses must print back as itself and be free of path tricks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_proxy::oci::{Digest, RepoName, Reference};

fuzz_target!(|input: &str| {
    if let Ok(name) = RepoName::parse(input) {
        assert_eq!(name.as_str(), input);
        assert!(input.len() <= registry_proxy::oci::MAX_NAME_LEN);
        assert!(input.split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
        assert!(!input.contains(['%', '\\', ':', '@']));
    }
    if let Ok(reference) = Reference::parse(input) {
        assert_eq!(reference.to_string(), input);
        assert!(!input.contains(['/', '%', '\\']));
    }
    if let Ok(digest) = Digest::parse(input) {
        assert_eq!(digest.to_string(), input);
        assert_eq!(digest.hex().len(), 64);
        assert_eq!(Digest::from_raw(*digest.as_bytes()), digest);
    }
});
