//! Storage path validation: an accepted path prints back as itself, has no
//! empty, `.` or `..` segment, and joins only to accepted paths.
#![no_main]

use driver_core::StoragePath;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &str)| {
    let (path, relative) = input;
    if let Ok(parsed) = StoragePath::parse(path) {
        assert_eq!(parsed.as_str(), path);
        check(&parsed);
        if let Ok(joined) = parsed.join(relative) {
            check(&joined);
            assert_eq!(StoragePath::parse(joined.as_str()).ok(), Some(joined));
        }
    }
});

fn check(path: &StoragePath) {
    if path.is_root() {
        return;
    }
    let rest = path.as_str().strip_prefix('/').expect("absolute");
    assert!(rest.split('/').all(|s| !s.is_empty() && s != "." && s != ".."));
}
