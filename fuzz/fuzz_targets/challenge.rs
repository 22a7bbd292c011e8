//! `WWW-Authenticate` headers from the upstream: parsed or refused,
//! never a panic; scheme and parameter names are ASCII tokens, lowercased.
#![no_main]

use libfuzzer_sys::fuzz_target;
use registry_proxy::upstream::parse_challenge;

fuzz_target!(|input: &str| {
    if let Some(challenge) = parse_challenge(input) {
        assert!(!challenge.scheme.is_empty());
        let lower_token = |s: &str| {
            !s.is_empty() && s.is_ascii() && !s.contains(' ') && s == s.to_ascii_lowercase()
        };
        assert!(lower_token(&challenge.scheme));
        assert!(challenge.params.keys().all(|k| lower_token(k)));
    }
});
