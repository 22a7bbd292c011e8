//! The conformance suite every [`StorageDriver`](driver_core::StorageDriver)
//! must pass.
//!
//! Each behaviour is one `pub async fn` in [`cases`]. A driver crate runs them
//! all from its `tests/conformance.rs`:
//!
//! ```text
//! async fn driver() -> Option<(Arc<dyn StorageDriver>, TempDir)> { ... }
//! conformance::conformance_tests!(driver);
//! ```
//!
//! which expands to one `#[tokio::test]` per case, named after it. The
//! factory returns `None` (after printing why) when the driver cannot run
//! here. Each case works under its own random prefix, so cases run in
//! parallel on one shared backend, and each must leave that prefix empty.
//! Sizes come from [`Settings::from_env`].
//!
//! The suite goes beyond distribution's: walk order and controls,
//! cancel/append rules, racing writers, the `/a` versus `/asuffix` trap, large
//! streams, and a property test against the in-memory model. Its own tests
//! run it against deliberately broken drivers to show each fault is caught.

pub mod cases;
pub mod exclusive;
mod model;
mod server;
mod support;

pub use server::PrivateS3;
pub use support::{
    Case, Ctx, Settings, assert_bytes, env_or, expect_kind, failing_cases, random_bytes, read_all,
    run_case, seed, skip,
};

/// Calls `$callback!` with the name of every case; the one list of cases.
#[doc(hidden)]
#[macro_export]
macro_rules! __with_cases {
    ($callback:ident ! [$($args:tt)*]) => {
        $crate::$callback! { [$($args)*]
            root_always_lists, valid_paths_round_trip, root_is_not_a_file,
            put_get_one_byte, put_get_unicode, put_get_32_bytes, put_get_1mib, put_get_non_utf8,
            put_empty_object, put_truncates_on_reput, get_missing_not_found, get_directory_not_found,
            stream_round_trip_sizes, stream_large, writer_size_tracks_writes,
            reader_offsets, reader_offset_at_size_is_empty, reader_last_byte, reader_past_end_invalid_offset,
            reader_missing_not_found, reader_snapshot_survives_replace, open_reports_whole_size,
            append_resumes_large_chunks, append_resumes_small_chunks, append_after_empty_commit,
            append_after_commit, append_missing_not_found, close_is_not_visible, cancel_leaves_nothing,
            commit_after_cancel_fails, finished_writer_rejects_calls, commit_replaces_existing,
            list_missing_not_found, list_file_not_found, list_fifty_children, list_root_shows_top_dirs_only,
            list_direct_children_only, list_prefix_trap,
            move_file, move_overwrites, move_missing_keeps_dest, move_under_file_fails, move_prunes_empty_source_dir,
            delete_file, delete_missing_not_found, delete_folder_keeps_siblings, delete_prefix_trap,
            delete_last_file_removes_parents, redirect_url, adopt_scratch,
            stat_missing, stat_file, stat_file_only_files, stat_modtime_current, stat_directory, stat_root,
            concurrent_readers, concurrent_writers_finish, racing_writers_one_path, put_is_atomic,
            walk_order, walk_skip_dir, walk_stop, walk_start_after, walk_prefix_trap, walk_missing_not_found,
            walk_from_root, model_random_sequences,
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __case_list {
    ([] $($name:ident,)*) => {
        /// Every case of the suite, in a stable order.
        pub const CASES: &[$crate::Case] = &[$(
            $crate::Case { name: stringify!($name), run: |ctx| Box::pin($crate::cases::$name(ctx)) },
        )*];
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __case_tests {
    ([$factory:expr] $($name:ident,)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            $crate::run_case(stringify!($name), $factory, |ctx| Box::pin($crate::cases::$name(ctx))).await;
        }
    )*};
}

/// Expands to one `#[tokio::test]` per conformance case, each running the
/// case against a driver from `$factory`: an `async fn() -> Option<(Arc<dyn
/// StorageDriver>, G)>` where `G` is kept alive for the case (a temporary
/// directory, a server handle). The calling crate needs `tokio` with the
/// `macros` and `rt-multi-thread` features as a dev-dependency.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::__with_cases!(__case_tests![$factory]);
    };
}

__with_cases!(__case_list![]);
