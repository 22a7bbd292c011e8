//! Helpers that give every driver the same [`walk`](crate::StorageDriver::walk) order.

use crate::driver::{FileInfo, WalkControl, WalkFn, WalkOptions};
use crate::path::StoragePath;

/// The key an entry sorts by in walk order: its path, with `/` appended for
/// directories.
pub fn walk_key(path: &StoragePath, is_dir: bool) -> String {
    if is_dir {
        path.dir_prefix()
    } else {
        path.as_str().to_owned()
    }
}

/// Drives a walk from a flat, byte-ordered sequence of files, the shape an
/// object store's listing or a sorted map yields. It synthesises each
/// directory entry just before the first file beneath it, applies
/// [`WalkOptions::start_after`], and honours [`WalkControl`].
///
/// Feed it every file beneath `from` in byte order with
/// [`file`](FlatWalk::file) until that returns `false`.
pub struct FlatWalk<'v, 'f> {
    from: StoragePath,
    start_after: Option<String>,
    visit: &'v mut WalkFn<'f>,
    /// Directories entered so far on the current branch, outermost first.
    open: Vec<StoragePath>,
    /// Key prefix of a directory the caller asked to skip.
    skipping: Option<String>,
    stopped: bool,
}

impl<'v, 'f> FlatWalk<'v, 'f> {
    /// Starts a walk beneath `from`.
    pub fn new(from: &StoragePath, options: &WalkOptions, visit: &'v mut WalkFn<'f>) -> Self {
        Self {
            from: from.clone(),
            start_after: options.start_after.as_ref().map(|p| p.as_str().to_owned()),
            visit,
            open: Vec::new(),
            skipping: None,
            stopped: false,
        }
    }

    /// Whether anything beneath `dir` can still be reported: `false` once the
    /// walk stopped, inside a skipped directory, or when everything beneath
    /// `dir` sorts before `start_after`. Drivers use it to avoid listing
    /// directories for nothing.
    pub fn wants_dir(&self, dir: &StoragePath) -> bool {
        if self.stopped {
            return false;
        }
        let prefix = dir.dir_prefix();
        if self
            .skipping
            .as_deref()
            .is_some_and(|skip| prefix.starts_with(skip))
        {
            return false;
        }
        match self.start_after.as_deref() {
            Some(start) => start < prefix.as_str() || start.starts_with(prefix.as_str()),
            None => true,
        }
    }

    /// Reports `file` and any directories above it not yet reported. Returns
    /// `false` once the walk is over (the callback stopped it).
    pub fn file(&mut self, file: FileInfo) -> bool {
        if self.stopped {
            return false;
        }
        if let Some(skip) = &self.skipping {
            if file.path.as_str().starts_with(skip.as_str()) {
                return true;
            }
            self.skipping = None;
        }
        // Leave the directories that do not contain this file.
        while let Some(top) = self.open.last() {
            if file.path.is_under(top) {
                break;
            }
            self.open.pop();
        }
        // Enter (and report) the directories between the deepest open one and the file.
        let base = self.open.last().unwrap_or(&self.from).clone();
        let mut dir = base;
        let depth = dir.segments().count();
        let segments: Vec<&str> = file.path.segments().skip(depth).collect();
        for segment in &segments[..segments.len().saturating_sub(1)] {
            dir = match dir.join(segment) {
                Ok(d) => d,
                Err(_) => return true,
            };
            self.open.push(dir.clone());
            if !self.after_start(&walk_key(&dir, true)) {
                continue;
            }
            match (self.visit)(&FileInfo::directory(dir.clone())) {
                WalkControl::Continue => {}
                WalkControl::SkipDir => {
                    self.skipping = Some(dir.dir_prefix());
                    return true;
                }
                WalkControl::Stop => {
                    self.stopped = true;
                    return false;
                }
            }
        }
        if !self.after_start(file.path.as_str()) {
            return true;
        }
        if (self.visit)(&file) == WalkControl::Stop {
            self.stopped = true;
        }
        !self.stopped
    }

    fn after_start(&self, key: &str) -> bool {
        self.start_after.as_deref().is_none_or(|s| key > s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn file(p: &str) -> FileInfo {
        FileInfo {
            path: StoragePath::parse(p).expect("valid"),
            size: 1,
            modified: SystemTime::UNIX_EPOCH,
            is_dir: false,
        }
    }

    fn run(
        files: &[&str],
        options: WalkOptions,
        mut control: impl FnMut(&FileInfo) -> WalkControl + Send,
    ) -> Vec<String> {
        let mut seen = Vec::new();
        let mut visit = |info: &FileInfo| {
            seen.push(format!(
                "{}{}",
                info.path,
                if info.is_dir { "/" } else { "" }
            ));
            control(info)
        };
        let root = StoragePath::parse("/r").expect("valid");
        let mut walk = FlatWalk::new(&root, &options, &mut visit);
        for f in files {
            if !walk.file(file(f)) {
                break;
            }
        }
        seen
    }

    const TREE: &[&str] = &["/r/a-c", "/r/a/b", "/r/a/d/e", "/r/b"];

    #[test]
    fn reports_directories_before_their_first_entry() {
        let seen = run(TREE, WalkOptions::default(), |_| WalkControl::Continue);
        assert_eq!(
            seen,
            ["/r/a-c", "/r/a/", "/r/a/b", "/r/a/d/", "/r/a/d/e", "/r/b"]
        );
    }

    #[test]
    fn skip_dir_and_stop() {
        let seen = run(TREE, WalkOptions::default(), |i| {
            if i.path.as_str() == "/r/a" {
                WalkControl::SkipDir
            } else {
                WalkControl::Continue
            }
        });
        assert_eq!(seen, ["/r/a-c", "/r/a/", "/r/b"]);
        let seen = run(TREE, WalkOptions::default(), |i| {
            if i.path.as_str() == "/r/a/b" {
                WalkControl::Stop
            } else {
                WalkControl::Continue
            }
        });
        assert_eq!(seen, ["/r/a-c", "/r/a/", "/r/a/b"]);
    }

    #[test]
    fn wants_dir_prunes() {
        let mut visit = |_: &FileInfo| WalkControl::Continue;
        let options = WalkOptions {
            start_after: Some(StoragePath::parse("/r/b/c").expect("valid")),
        };
        let root = StoragePath::parse("/r").expect("valid");
        let walk = FlatWalk::new(&root, &options, &mut visit);
        let dir = |p: &str| StoragePath::parse(p).expect("valid");
        assert!(!walk.wants_dir(&dir("/r/a")), "wholly before start_after");
        assert!(walk.wants_dir(&dir("/r/b")), "contains start_after");
        assert!(walk.wants_dir(&dir("/r/c")), "after start_after");
    }

    #[test]
    fn start_after_skips_reported_prefix() {
        let options = WalkOptions {
            start_after: Some(StoragePath::parse("/r/a/b").expect("valid")),
        };
        let seen = run(TREE, options, |_| WalkControl::Continue);
        assert_eq!(seen, ["/r/a/d/", "/r/a/d/e", "/r/b"]);
    }
}
