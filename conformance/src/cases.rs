//! One `pub async fn` per behaviour. Each panics when the driver breaks the
//! contract and works only beneath [`Ctx::prefix`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use driver_core::{ErrorKind, FileInfo, RedirectMethod, StoragePath, WalkControl, WalkOptions};
use futures::{StreamExt, TryStreamExt};
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::support::{Ctx, assert_bytes, expect_kind, random_bytes, read_all, seed};

const MIB: usize = 1 << 20;

// ---------------------------------------------------------------- paths

/// The root lists even when nothing is stored, and a fresh prefix does not exist.
pub async fn root_always_lists(ctx: Ctx) {
    let root = ctx
        .driver()
        .list(&StoragePath::root())
        .await
        .expect("list /");
    assert!(
        root.iter().all(|p| p.parent() == Some(StoragePath::root())),
        "root listing holds non-children: {root:?}"
    );
    expect_kind(
        ctx.driver().list(ctx.prefix()).await,
        ErrorKind::PathNotFound,
        "list of a fresh prefix",
    );
}

/// distribution's valid paths store and read back.
pub async fn valid_paths_round_trip(ctx: Ctx) {
    let paths = [
        "a",
        "2",
        "aa",
        "a.a",
        "0-9/abcdefg",
        "abcdefg/z.75",
        "abc/1.2.3.4.5-6_zyx/123.z/4",
        "docker/docker-registry",
        "123.abc",
        "abc./abc",
        ".abc",
        "a--b",
        "a-.b",
        "_.abc",
        "Docker/docker-registry",
        "Abc/Cba",
    ];
    for (i, relative) in paths.iter().enumerate() {
        let data = random_bytes(i as u64, 32);
        let path = ctx.put(relative, data.clone()).await;
        assert_bytes(
            &ctx.driver().get_content(&path).await.expect("get"),
            &data,
            path.as_ref(),
        );
        ctx.driver().delete(&path).await.expect("delete");
    }
}

/// The root is a directory: every file operation rejects it, naming the driver.
pub async fn root_is_not_a_file(ctx: Ctx) {
    let d = ctx.driver();
    let root = StoragePath::root();
    let file = ctx.put("file", "x").await;
    let check = |result: Result<(), driver_core::Error>, what: &str| match result {
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidPath, "{what}: {e}");
            assert_eq!(e.driver(), d.name(), "{what}: error must name the driver");
        }
        Ok(()) => panic!("{what} accepted the root"),
    };
    check(
        d.put_content(&root, Bytes::from_static(b"x")).await,
        "put_content /",
    );
    check(d.get_content(&root).await.map(drop), "get_content /");
    check(d.reader(&root, 0).await.map(drop), "reader /");
    check(d.writer(&root, false).await.map(drop), "writer /");
    check(d.delete(&root).await, "delete /");
    check(d.move_file(&file, &root).await, "move to /");
    assert_eq!(
        d.get_content(&file).await.expect("get"),
        "x",
        "failed move kept the source"
    );
}

// ---------------------------------------------------------------- put / get

async fn put_get(ctx: &Ctx, data: Bytes) {
    let path = ctx.put("dir/object", data.clone()).await;
    let got = ctx.driver().get_content(&path).await.expect("get_content");
    assert_eq!(got.len(), data.len(), "length");
    assert!(got == data, "content differs");
    assert_bytes(
        &ctx.read(&path, 0).await.expect("reader"),
        &data,
        "reader content",
    );
}

/// One byte round-trips.
pub async fn put_get_one_byte(ctx: Ctx) {
    put_get(&ctx, Bytes::from_static(b"a")).await;
}

/// Non-ASCII UTF-8 round-trips.
pub async fn put_get_unicode(ctx: Ctx) {
    put_get(&ctx, Bytes::from("Ã¥ ñ 日本語 ✓ 🐳".repeat(3))).await;
}

/// 32 random bytes round-trip.
pub async fn put_get_32_bytes(ctx: Ctx) {
    put_get(&ctx, random_bytes(seed(), 32)).await;
}

/// 1 MiB round-trips.
pub async fn put_get_1mib(ctx: Ctx) {
    put_get(&ctx, random_bytes(seed(), MIB)).await;
}

/// Bytes that are not UTF-8 round-trip.
pub async fn put_get_non_utf8(ctx: Ctx) {
    put_get(
        &ctx,
        Bytes::from_static(&[0xff, 0xfe, 0x00, 0xc3, 0x28, 0xa0, 0xa1, 0x80]),
    )
    .await;
}

/// An empty object exists, with size 0.
pub async fn put_empty_object(ctx: Ctx) {
    let path = ctx.put("empty", Bytes::new()).await;
    assert!(
        ctx.driver()
            .get_content(&path)
            .await
            .expect("get")
            .is_empty()
    );
    let info = ctx.driver().stat(&path).await.expect("stat");
    assert_eq!((info.size, info.is_dir), (0, false));
}

/// A shorter second put truncates.
pub async fn put_truncates_on_reput(ctx: Ctx) {
    let long = random_bytes(seed(), 4096);
    let short = random_bytes(seed(), 100);
    let path = ctx.put("object", long).await;
    ctx.driver()
        .put_content(&path, short.clone())
        .await
        .expect("second put");
    assert_bytes(
        &ctx.driver().get_content(&path).await.expect("get"),
        &short,
        "content",
    );
    assert_eq!(ctx.driver().stat(&path).await.expect("stat").size, 100);
}

/// Getting a missing file is `PathNotFound`.
pub async fn get_missing_not_found(ctx: Ctx) {
    expect_kind(
        ctx.driver().get_content(&ctx.path("missing")).await,
        ErrorKind::PathNotFound,
        "get missing",
    );
}

/// A directory is not a file: getting or reading it is `PathNotFound`.
pub async fn get_directory_not_found(ctx: Ctx) {
    ctx.put("dir/child", "x").await;
    let dir = ctx.path("dir");
    expect_kind(
        ctx.driver().get_content(&dir).await,
        ErrorKind::PathNotFound,
        "get of a directory",
    );
    expect_kind(
        ctx.driver().reader(&dir, 0).await.map(drop),
        ErrorKind::PathNotFound,
        "reader of a directory",
    );
}

// ---------------------------------------------------------------- streams

/// Streams of several sizes and chunkings round-trip through writer and reader.
pub async fn stream_round_trip_sizes(ctx: Ctx) {
    for (i, (size, chunk)) in [
        (0, 1),
        (1, 1),
        (32, 7),
        (MIB + 1, 64 << 10),
        (6 * MIB + 7, MIB + 3),
    ]
    .into_iter()
    .enumerate()
    {
        let data = random_bytes(i as u64, size);
        let path = ctx.path(&format!("stream{i}"));
        let chunks: Vec<Bytes> = (0..size)
            .step_by(chunk.max(1))
            .map(|o| data.slice(o..(o + chunk).min(size)))
            .collect();
        let mut writer = ctx.write_chunks(&path, false, &chunks).await;
        assert_eq!(writer.size(), size as u64, "size before commit");
        writer.commit().await.expect("commit");
        assert_eq!(
            ctx.driver().stat(&path).await.expect("stat").size,
            size as u64
        );
        let read = ctx.read(&path, 0).await.expect("read");
        assert!(read == data, "stream of {size} bytes differs");
    }
}

/// A large stream (`CONFORMANCE_LARGE_STREAM_BYTES`, 1 GiB by default) round-trips.
pub async fn stream_large(ctx: Ctx) {
    let total = ctx.settings().large_stream_bytes;
    let block = random_bytes(seed(), 4 * MIB);
    let path = ctx.path("large");
    let mut writer = ctx.driver().writer(&path, false).await.expect("writer");
    let mut hash = Sha256::new();
    let mut written = 0u64;
    let mut i = 0u64;
    while written < total {
        // Vary each block so that misplaced chunks cannot go unnoticed.
        let n = (total - written).min(block.len() as u64) as usize;
        let mut chunk = block.slice(..n).to_vec();
        chunk[..8.min(n)].copy_from_slice(&i.to_le_bytes()[..8.min(n)]);
        hash.update(&chunk);
        writer.write(chunk.into()).await.expect("write");
        written += n as u64;
        i += 1;
    }
    writer.commit().await.expect("commit");
    assert_eq!(ctx.driver().stat(&path).await.expect("stat").size, total);
    let mut read_hash = Sha256::new();
    let mut read = 0u64;
    let mut stream = ctx.driver().reader(&path, 0).await.expect("reader");
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk");
        assert!(
            chunk.len() <= driver_core::READ_CHUNK,
            "chunk of {} bytes exceeds READ_CHUNK",
            chunk.len()
        );
        read += chunk.len() as u64;
        read_hash.update(&chunk);
    }
    assert_eq!(read, total, "bytes read");
    assert_eq!(read_hash.finalize(), hash.finalize(), "content hash");
}

/// `size()` counts every byte written.
pub async fn writer_size_tracks_writes(ctx: Ctx) {
    let mut writer = ctx
        .driver()
        .writer(&ctx.path("w"), false)
        .await
        .expect("writer");
    let mut expected = 0;
    for n in [0, 1, 10, 3 * MIB, 5] {
        writer
            .write(random_bytes(n as u64, n))
            .await
            .expect("write");
        expected += n as u64;
        assert_eq!(writer.size(), expected);
    }
    writer.cancel().await.expect("cancel");
}

// ---------------------------------------------------------------- reader

/// Readers at offsets 0, 32 and 64 return the rest of the content.
pub async fn reader_offsets(ctx: Ctx) {
    let data = random_bytes(seed(), 96);
    let path = ctx.put("r", data.clone()).await;
    for offset in [0, 32, 64] {
        assert_bytes(
            &ctx.read(&path, offset).await.expect("read"),
            &data.slice(offset as usize..),
            &format!("offset {offset}"),
        );
    }
}

/// A reader at the size yields nothing.
pub async fn reader_offset_at_size_is_empty(ctx: Ctx) {
    let path = ctx.put("r", random_bytes(seed(), 100)).await;
    assert!(ctx.read(&path, 100).await.expect("read at size").is_empty());
}

/// A reader at size - 1 yields exactly the last byte.
pub async fn reader_last_byte(ctx: Ctx) {
    let data = random_bytes(seed(), 2 * MIB + 1);
    let path = ctx.put("r", data.clone()).await;
    let last = ctx.read(&path, data.len() as u64 - 1).await.expect("read");
    assert_eq!(last, data.slice(data.len() - 1..));
}

/// A reader past the end is `InvalidOffset`.
pub async fn reader_past_end_invalid_offset(ctx: Ctx) {
    let path = ctx.put("r", random_bytes(seed(), 10)).await;
    expect_kind(
        ctx.driver().reader(&path, 11).await.map(drop),
        ErrorKind::InvalidOffset,
        "reader past the end",
    );
}

/// Readers of a missing file fail with `PathNotFound` at any offset.
pub async fn reader_missing_not_found(ctx: Ctx) {
    for offset in [0, 64] {
        expect_kind(
            ctx.driver()
                .reader(&ctx.path("missing"), offset)
                .await
                .map(drop),
            ErrorKind::PathNotFound,
            "reader of missing",
        );
    }
}

/// The whole content of a local file given by `open`.
fn read_local(file: &std::fs::File) -> Bytes {
    use std::os::unix::fs::FileExt as _;
    let len = file.metadata().expect("fstat of the local file").len();
    let mut buf = vec![0; usize::try_from(len).expect("size")];
    file.read_exact_at(&mut buf, 0)
        .expect("read of the local file");
    Bytes::from(buf)
}

/// `open` reports the whole size at every offset, with the bytes from the
/// offset; a missing file or a directory is `PathNotFound`, and past the end
/// is `InvalidOffset`. A local file, where the driver gives one, is the
/// whole file of the version streamed, even after the path is replaced.
pub async fn open_reports_whole_size(ctx: Ctx) {
    let data = random_bytes(seed(), 2 * MIB + 7);
    let path = ctx.put("dir/o", data.clone()).await;
    let size = data.len() as u64;
    for offset in [0, 1, MIB as u64, size - 1, size] {
        let file = ctx.driver().open(&path, offset).await.expect("open");
        assert_eq!(file.size, size, "size reported by open at {offset}");
        if let Some(local) = &file.local {
            assert_bytes(
                &read_local(local),
                &data,
                &format!("local file at {offset}"),
            );
        }
        let got: Vec<Bytes> = file.stream.try_collect().await.expect("stream");
        assert_bytes(
            &Bytes::from(got.concat()),
            &data.slice(offset as usize..),
            &format!("open at {offset}"),
        );
    }
    expect_kind(
        ctx.driver().open(&path, size + 1).await.map(drop),
        ErrorKind::InvalidOffset,
        "open past the end",
    );
    for missing in [ctx.path("missing"), ctx.path("dir")] {
        expect_kind(
            ctx.driver().open(&missing, 0).await.map(drop),
            ErrorKind::PathNotFound,
            "open of a missing file or a directory",
        );
    }
    let opened = ctx.driver().open(&path, 0).await.expect("open");
    ctx.put("dir/o", random_bytes(seed() + 1, MIB)).await;
    if let Some(local) = &opened.local {
        assert_bytes(&read_local(local), &data, "local file after a replace");
    }
}

/// A reader opened before a replace yields the old content whole (or fails),
/// never a mix of old and new.
pub async fn reader_snapshot_survives_replace(ctx: Ctx) {
    let old = Bytes::from(vec![b'o'; 3 * MIB]);
    let path = ctx.put("r", old.clone()).await;
    let mut stream = ctx.driver().reader(&path, 0).await.expect("reader");
    let first = stream.next().await.expect("a first chunk").expect("chunk");
    ctx.driver()
        .put_content(&path, Bytes::from(vec![b'n'; 3 * MIB]))
        .await
        .expect("replace");
    let mut got = first.to_vec();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => got.extend_from_slice(&c),
            Err(_) => return, // failing is allowed; mixing is not
        }
    }
    assert!(got == old, "a reader saw a mix of two versions");
}

// ---------------------------------------------------------------- appends

async fn append_in_rounds(ctx: &Ctx, chunk: usize) {
    let path = ctx.path("appended");
    let data = random_bytes(seed(), 3 * chunk);
    let mut writer = ctx.write_chunks(&path, false, &[data.slice(..chunk)]).await;
    assert_eq!(writer.size(), chunk as u64);
    writer.close().await.expect("close");
    expect_kind(
        ctx.driver().stat(&path).await,
        ErrorKind::PathNotFound,
        "closed writer is not visible",
    );
    let mut writer = ctx.write_chunks(&path, true, &[]).await;
    assert_eq!(writer.size(), chunk as u64, "size after reopening");
    writer
        .write(data.slice(chunk..2 * chunk))
        .await
        .expect("write");
    writer.close().await.expect("close");
    let mut writer = ctx.write_chunks(&path, true, &[]).await;
    assert_eq!(
        writer.size(),
        2 * chunk as u64,
        "size after the second reopening"
    );
    writer.write(data.slice(2 * chunk..)).await.expect("write");
    writer.commit().await.expect("commit");
    let got = ctx.driver().get_content(&path).await.expect("get");
    assert_eq!(got.len(), data.len());
    assert!(got == data, "appended content differs");
}

/// Three rounds of 10 MiB with close in between resume at the right size.
pub async fn append_resumes_large_chunks(ctx: Ctx) {
    append_in_rounds(&ctx, 10 * MIB).await;
}

/// Three rounds of 32 bytes with close in between resume at the right size.
pub async fn append_resumes_small_chunks(ctx: Ctx) {
    append_in_rounds(&ctx, 32).await;
}

/// A zero-byte commit can be appended to.
pub async fn append_after_empty_commit(ctx: Ctx) {
    let path = ctx.path("zero");
    ctx.write_chunks(&path, false, &[])
        .await
        .commit()
        .await
        .expect("commit empty");
    assert_eq!(ctx.driver().stat(&path).await.expect("stat").size, 0);
    let data = random_bytes(seed(), 64);
    let mut writer = ctx
        .write_chunks(&path, true, std::slice::from_ref(&data))
        .await;
    writer.commit().await.expect("commit");
    assert_bytes(
        &ctx.driver().get_content(&path).await.expect("get"),
        &data,
        "content",
    );
}

/// Appending to a committed file continues it; the old content stays
/// readable until the new commit.
pub async fn append_after_commit(ctx: Ctx) {
    let first = random_bytes(seed(), 1000);
    let second = random_bytes(seed(), 2000);
    let path = ctx.put("f", first.clone()).await;
    let mut writer = ctx.write_chunks(&path, true, &[]).await;
    assert_eq!(writer.size(), 1000);
    writer.write(second.clone()).await.expect("write");
    assert_bytes(
        &ctx.driver().get_content(&path).await.expect("get"),
        &first,
        "visible before commit",
    );
    writer.commit().await.expect("commit");
    assert_bytes(
        &ctx.driver().get_content(&path).await.expect("get"),
        &[first, second].concat(),
        "content",
    );
}

/// Appending where nothing was written or committed is `PathNotFound`.
pub async fn append_missing_not_found(ctx: Ctx) {
    expect_kind(
        ctx.driver().writer(&ctx.path("none"), true).await.map(drop),
        ErrorKind::PathNotFound,
        "append to nothing",
    );
}

/// Closing is not committing: nothing is visible, in stat, get or list.
pub async fn close_is_not_visible(ctx: Ctx) {
    let path = ctx.path("dir/closed");
    let mut writer = ctx
        .write_chunks(&path, false, &[random_bytes(seed(), 100)])
        .await;
    writer.close().await.expect("close");
    expect_kind(
        ctx.driver().stat(&path).await,
        ErrorKind::PathNotFound,
        "stat",
    );
    expect_kind(
        ctx.driver().get_content(&path).await,
        ErrorKind::PathNotFound,
        "get",
    );
    expect_kind(
        ctx.driver().list(&ctx.path("dir")).await,
        ErrorKind::PathNotFound,
        "list of the parent",
    );
    // Leave nothing behind.
    ctx.write_chunks(&path, true, &[])
        .await
        .cancel()
        .await
        .expect("cancel");
}

/// Cancel leaves nothing: not visible, nothing to resume.
pub async fn cancel_leaves_nothing(ctx: Ctx) {
    let path = ctx.path("cancelled");
    let mut writer = ctx
        .write_chunks(&path, false, &[random_bytes(seed(), 6 * MIB)])
        .await;
    writer.cancel().await.expect("cancel");
    expect_kind(
        ctx.driver().stat(&path).await,
        ErrorKind::PathNotFound,
        "stat after cancel",
    );
    expect_kind(
        ctx.driver().writer(&path, true).await.map(drop),
        ErrorKind::PathNotFound,
        "resume after cancel",
    );
    expect_kind(
        ctx.driver().list(ctx.prefix()).await,
        ErrorKind::PathNotFound,
        "list after cancel",
    );
}

/// Commit after cancel fails, and makes nothing visible.
pub async fn commit_after_cancel_fails(ctx: Ctx) {
    let path = ctx.path("c");
    let mut writer = ctx
        .write_chunks(&path, false, &[Bytes::from_static(b"data")])
        .await;
    writer.cancel().await.expect("cancel");
    expect_kind(
        writer.commit().await,
        ErrorKind::WriterFinished,
        "commit after cancel",
    );
    expect_kind(
        ctx.driver().stat(&path).await,
        ErrorKind::PathNotFound,
        "stat",
    );
}

/// After commit or close, every call on the writer fails.
pub async fn finished_writer_rejects_calls(ctx: Ctx) {
    let path = ctx.path("f");
    let mut writer = ctx
        .write_chunks(&path, false, &[Bytes::from_static(b"data")])
        .await;
    writer.commit().await.expect("commit");
    expect_kind(
        writer.write(Bytes::from_static(b"more")).await,
        ErrorKind::WriterFinished,
        "write after commit",
    );
    expect_kind(
        writer.commit().await,
        ErrorKind::WriterFinished,
        "commit after commit",
    );
    expect_kind(
        writer.cancel().await,
        ErrorKind::WriterFinished,
        "cancel after commit",
    );
    assert_eq!(
        ctx.driver().get_content(&path).await.expect("get"),
        "data",
        "cancel after commit removed the file"
    );
    let mut writer = ctx.write_chunks(&path, true, &[]).await;
    writer.close().await.expect("close");
    expect_kind(
        writer.close().await,
        ErrorKind::WriterFinished,
        "close after close",
    );
    expect_kind(
        writer.write(Bytes::from_static(b"x")).await,
        ErrorKind::WriterFinished,
        "write after close",
    );
    ctx.write_chunks(&path, true, &[])
        .await
        .cancel()
        .await
        .expect("cancel");
}

/// A commit replaces the existing file whole.
pub async fn commit_replaces_existing(ctx: Ctx) {
    let path = ctx.put("f", random_bytes(seed(), 5000)).await;
    let new = random_bytes(seed(), 10);
    ctx.write_chunks(&path, false, std::slice::from_ref(&new))
        .await
        .commit()
        .await
        .expect("commit");
    assert_bytes(
        &ctx.driver().get_content(&path).await.expect("get"),
        &new,
        "content",
    );
}

// ---------------------------------------------------------------- list

/// Listing a missing directory is `PathNotFound`.
pub async fn list_missing_not_found(ctx: Ctx) {
    expect_kind(
        ctx.driver().list(&ctx.path("nothing/here")).await,
        ErrorKind::PathNotFound,
        "list missing",
    );
}

/// Listing a file is `PathNotFound`: it is not a directory.
pub async fn list_file_not_found(ctx: Ctx) {
    let file = ctx.put("file", "x").await;
    expect_kind(
        ctx.driver().list(&file).await,
        ErrorKind::PathNotFound,
        "list of a file",
    );
}

/// Fifty children list, sorted, as full paths.
pub async fn list_fifty_children(ctx: Ctx) {
    let mut expected = Vec::new();
    for i in 0..50 {
        expected.push(ctx.put(&format!("dir/child{i:02}"), "x").await);
    }
    expected.sort();
    assert_eq!(
        ctx.driver().list(&ctx.path("dir")).await.expect("list"),
        expected
    );
}

/// The root lists top-level directories only, the case's prefix among them.
pub async fn list_root_shows_top_dirs_only(ctx: Ctx) {
    ctx.put("a/b/c", "x").await;
    let root = ctx
        .driver()
        .list(&StoragePath::root())
        .await
        .expect("list /");
    assert!(
        root.contains(ctx.prefix()),
        "{root:?} lacks {}",
        ctx.prefix()
    );
    assert!(
        root.iter().all(|p| p.segments().count() == 1),
        "root listed deep paths: {root:?}"
    );
    assert_eq!(
        ctx.driver().list(ctx.prefix()).await.expect("list"),
        vec![ctx.path("a")]
    );
}

/// A listing holds direct children only, files and directories, in byte order.
pub async fn list_direct_children_only(ctx: Ctx) {
    for p in ["d/file", "d/sub/deep/x", "d/sub/y", "d/a-c", "d/a/z"] {
        ctx.put(p, "x").await;
    }
    let listed = ctx.driver().list(&ctx.path("d")).await.expect("list");
    let expected: Vec<StoragePath> = ["d/a", "d/a-c", "d/file", "d/sub"]
        .iter()
        .map(|p| ctx.path(p))
        .collect();
    assert_eq!(listed, expected);
}

/// `/a` lists its children only, not those of `/asuffix`.
pub async fn list_prefix_trap(ctx: Ctx) {
    ctx.put("a/x", "1").await;
    ctx.put("asuffix/y", "2").await;
    ctx.put("a-b", "3").await;
    assert_eq!(
        ctx.driver().list(&ctx.path("a")).await.expect("list"),
        vec![ctx.path("a/x")]
    );
}

// ---------------------------------------------------------------- move

/// Moves `source` to `dest` and checks that `data` is at `dest` and nothing
/// at `source`.
async fn assert_moves(ctx: &Ctx, source: &StoragePath, dest: &StoragePath, data: &[u8]) {
    ctx.driver().move_file(source, dest).await.expect("move");
    let moved = ctx.driver().get_content(dest).await.expect("get dest");
    assert_bytes(&moved, data, "content at the destination");
    expect_kind(
        ctx.driver().stat(source).await,
        ErrorKind::PathNotFound,
        "source after move",
    );
}

/// A move makes the content appear at the destination and vanish at the source.
pub async fn move_file(ctx: Ctx) {
    let data = random_bytes(seed(), 32);
    let source = ctx.put("src/file", data.clone()).await;
    assert_moves(&ctx, &source, &ctx.path("dst/deep/file"), &data).await;
}

/// A move replaces an existing destination.
pub async fn move_overwrites(ctx: Ctx) {
    let data = random_bytes(seed(), 32);
    let source = ctx.put("src", data.clone()).await;
    let dest = ctx.put("dst", random_bytes(seed(), 64)).await;
    assert_moves(&ctx, &source, &dest, &data).await;
}

/// Moving a missing source fails and leaves the destination as it was.
pub async fn move_missing_keeps_dest(ctx: Ctx) {
    let data = random_bytes(seed(), 32);
    let dest = ctx.put("dst", data.clone()).await;
    expect_kind(
        ctx.driver().move_file(&ctx.path("missing"), &dest).await,
        ErrorKind::PathNotFound,
        "move missing",
    );
    assert_bytes(
        &ctx.driver().get_content(&dest).await.expect("get"),
        &data,
        "content",
    );
}

/// Moving a missing file from beneath a file fails.
pub async fn move_under_file_fails(ctx: Ctx) {
    ctx.put("notadir", random_bytes(seed(), 32)).await;
    let result = ctx
        .driver()
        .move_file(&ctx.path("notadir/foo"), &ctx.path("notadir/bar"))
        .await;
    assert!(result.is_err(), "move from beneath a file succeeded");
    assert!(
        ctx.driver()
            .stat(&ctx.path("notadir"))
            .await
            .expect("stat")
            .size
            == 32
    );
}

/// Moving the last file out of a directory makes the directory vanish.
pub async fn move_prunes_empty_source_dir(ctx: Ctx) {
    let source = ctx.put("from/deep/file", "x").await;
    ctx.driver()
        .move_file(&source, &ctx.path("to/file"))
        .await
        .expect("move");
    expect_kind(
        ctx.driver().stat(&ctx.path("from")).await,
        ErrorKind::PathNotFound,
        "emptied source directory",
    );
    assert_eq!(
        ctx.driver().list(ctx.prefix()).await.expect("list"),
        vec![ctx.path("to")]
    );
}

// ---------------------------------------------------------------- delete

/// A deleted file is gone.
pub async fn delete_file(ctx: Ctx) {
    let path = ctx.put("f", "x").await;
    ctx.driver().delete(&path).await.expect("delete");
    expect_kind(
        ctx.driver().get_content(&path).await,
        ErrorKind::PathNotFound,
        "get after delete",
    );
}

/// Deleting nothing is `PathNotFound`.
pub async fn delete_missing_not_found(ctx: Ctx) {
    expect_kind(
        ctx.driver().delete(&ctx.path("missing")).await,
        ErrorKind::PathNotFound,
        "delete missing",
    );
}

/// Deleting a directory removes everything beneath it and nothing beside it.
pub async fn delete_folder_keeps_siblings(ctx: Ctx) {
    for p in [
        "folder/a",
        "folder/sub/b",
        "folder/sub/deeper/c",
        "sibling/d",
        "file",
    ] {
        ctx.put(p, "x").await;
    }
    ctx.driver()
        .delete(&ctx.path("folder"))
        .await
        .expect("delete folder");
    for p in ["folder", "folder/a", "folder/sub/b", "folder/sub/deeper/c"] {
        expect_kind(
            ctx.driver().stat(&ctx.path(p)).await,
            ErrorKind::PathNotFound,
            p,
        );
    }
    for p in ["sibling/d", "file"] {
        assert!(
            ctx.driver().get_content(&ctx.path(p)).await.is_ok(),
            "{p} was deleted"
        );
    }
}

/// Deleting `/a` keeps `/asuffix` and `/a-b`.
pub async fn delete_prefix_trap(ctx: Ctx) {
    for p in ["a/x", "asuffix/y", "a-b", "asuffixfile"] {
        ctx.put(p, "x").await;
    }
    ctx.driver().delete(&ctx.path("a")).await.expect("delete");
    for p in ["asuffix/y", "a-b", "asuffixfile"] {
        assert!(
            ctx.driver().get_content(&ctx.path(p)).await.is_ok(),
            "{p} was deleted with /a"
        );
    }
}

/// Deleting the last file of a directory tree removes the emptied directories.
pub async fn delete_last_file_removes_parents(ctx: Ctx) {
    let path = ctx.put("x/y/z/file", "x").await;
    ctx.put("keep", "x").await;
    ctx.driver().delete(&path).await.expect("delete");
    expect_kind(
        ctx.driver().stat(&ctx.path("x")).await,
        ErrorKind::PathNotFound,
        "emptied directory",
    );
    assert_eq!(
        ctx.driver().list(ctx.prefix()).await.expect("list"),
        vec![ctx.path("keep")]
    );
}

// ---------------------------------------------------------------- redirect

/// A scratch file, where the driver gives one, becomes the file at a path
/// when adopted, whole, replacing what was there; a driver without scratch
/// files refuses to adopt and leaves the path as it was.
pub async fn adopt_scratch(ctx: Ctx) {
    use std::os::unix::fs::FileExt as _;
    let path = ctx.put("adopted/a", "before").await;
    let Some(file) = ctx.driver().local_scratch().await.expect("local_scratch") else {
        ctx.skip("the driver gives no scratch files; checking adopt is refused");
        let spare = tempfile::tempfile().expect("a local file");
        assert!(ctx.driver().adopt(&path, Arc::new(spare)).await.is_err());
        let kept = ctx.driver().get_content(&path).await.expect("get");
        assert_bytes(
            &kept,
            &Bytes::from_static(b"before"),
            "after a refused adopt",
        );
        return;
    };
    let data = random_bytes(seed(), MIB + 3);
    file.write_all_at(&data, 0).expect("write the scratch file");
    ctx.driver()
        .adopt(&path, Arc::new(file))
        .await
        .expect("adopt");
    let got = ctx.driver().get_content(&path).await.expect("get");
    assert_bytes(&got, &data, "adopted");
    let info = ctx.driver().stat(&path).await.expect("stat");
    assert_eq!(info.size, data.len() as u64);
    let listed = ctx.driver().list(&ctx.path("adopted")).await.expect("list");
    assert_eq!(
        listed,
        vec![path.clone()],
        "only the adopted file is listed"
    );
}

/// Drivers without redirects return `None` for GET and HEAD; drivers with
/// them return a URL serving the content.
pub async fn redirect_url(ctx: Ctx) {
    let path = ctx.put("r", "redirected").await;
    if !ctx.driver().capabilities().redirect {
        ctx.skip("the driver does not offer redirects; checking it returns none");
        for method in [RedirectMethod::Get, RedirectMethod::Head] {
            assert_eq!(
                ctx.driver()
                    .redirect_url(&path, method)
                    .await
                    .expect("redirect_url"),
                None
            );
        }
        return;
    }
    let client = reqwest::Client::new();
    let url = ctx
        .driver()
        .redirect_url(&path, RedirectMethod::Get)
        .await
        .expect("redirect_url GET");
    let url = url.expect("a redirect for GET");
    let got = client
        .get(&url)
        .send()
        .await
        .expect("fetch the GET redirect");
    assert!(got.status().is_success(), "GET {url}: {}", got.status());
    assert_eq!(
        got.bytes().await.expect("body"),
        "redirected",
        "content behind the GET redirect"
    );
    let url = ctx
        .driver()
        .redirect_url(&path, RedirectMethod::Head)
        .await
        .expect("redirect_url HEAD");
    let url = url.expect("a redirect for HEAD");
    let got = client
        .head(&url)
        .send()
        .await
        .expect("fetch the HEAD redirect");
    assert!(got.status().is_success(), "HEAD {url}: {}", got.status());
    assert_eq!(
        got.headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok()),
        Some("10")
    );
}

// ---------------------------------------------------------------- stat

/// Stat of a missing path is `PathNotFound`.
pub async fn stat_missing(ctx: Ctx) {
    expect_kind(
        ctx.driver().stat(&ctx.path("missing")).await,
        ErrorKind::PathNotFound,
        "stat missing",
    );
}

/// Stat of a file reports its path, size and that it is a file.
pub async fn stat_file(ctx: Ctx) {
    let path = ctx.put("dir/file", random_bytes(seed(), 1234)).await;
    let info = ctx.driver().stat(&path).await.expect("stat");
    assert_eq!((&info.path, info.size, info.is_dir), (&path, 1234, false));
}

/// `stat_file` describes files as `stat` does, and nothing else: a
/// directory, the root and a missing path are all `PathNotFound`.
pub async fn stat_file_only_files(ctx: Ctx) {
    let path = ctx.put("dir/file", random_bytes(seed(), 1234)).await;
    let info = ctx.driver().stat_file(&path).await.expect("stat_file");
    assert_eq!(info, ctx.driver().stat(&path).await.expect("stat"));
    assert_eq!((&info.path, info.size, info.is_dir), (&path, 1234, false));
    for (what, path) in [
        ("a directory", ctx.path("dir")),
        ("a missing path", ctx.path("dir/missing")),
        ("the root", StoragePath::root()),
    ] {
        expect_kind(
            ctx.driver().stat_file(&path).await,
            ErrorKind::PathNotFound,
            &format!("stat_file of {what}"),
        );
    }
}

/// A file's modification time is the time of its last write.
pub async fn stat_modtime_current(ctx: Ctx) {
    let slack = Duration::from_secs(5);
    let before = SystemTime::now() - slack;
    let path = ctx.put("f", "x").await;
    let first = ctx.driver().stat(&path).await.expect("stat").modified;
    ctx.driver()
        .put_content(&path, Bytes::from_static(b"y"))
        .await
        .expect("re-put");
    let second = ctx.driver().stat(&path).await.expect("stat").modified;
    let after = SystemTime::now() + slack;
    for t in [first, second] {
        assert!(
            t > before && t < after,
            "modification time {t:?} is not the write time"
        );
    }
    assert!(second >= first, "modification time went back on re-put");
}

/// Stat of a directory says so, with size 0.
pub async fn stat_directory(ctx: Ctx) {
    ctx.put("dir/sub/file", "xyz").await;
    for p in ["dir", "dir/sub"] {
        let info = ctx.driver().stat(&ctx.path(p)).await.expect("stat dir");
        assert!(info.is_dir && info.size == 0, "{p}: {info:?}");
        assert_eq!(info.path, ctx.path(p));
    }
}

/// Stat of the root is a directory or `PathNotFound`, nothing else.
pub async fn stat_root(ctx: Ctx) {
    match ctx.driver().stat(&StoragePath::root()).await {
        Ok(info) => assert!(info.is_dir, "root stat as a file"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::PathNotFound, "{e}"),
    }
}

// ---------------------------------------------------------------- concurrency

/// Ten readers at random offsets of one object all read the right bytes.
pub async fn concurrent_readers(ctx: Ctx) {
    let size = ctx.settings().concurrent_read_bytes;
    let data = random_bytes(seed(), size);
    let path = ctx.put("big", data.clone()).await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (driver, path, data) = (ctx.driver_arc(), path.clone(), data.clone());
        let offset = rand::rng().random_range(0..size);
        tasks.push(tokio::spawn(async move {
            let got = read_all(&*driver, &path, offset as u64)
                .await
                .expect("read");
            assert!(
                got == data.slice(offset..),
                "reader at {offset} got wrong bytes"
            );
        }));
    }
    for task in tasks {
        task.await.expect("reader task");
    }
}

/// 32 writers at once all commit (none hangs) and each file is right.
pub async fn concurrent_writers_finish(ctx: Ctx) {
    let mut tasks = Vec::new();
    for i in 0..32u64 {
        let (driver, path) = (ctx.driver_arc(), ctx.path(&format!("w/{i}")));
        tasks.push(tokio::spawn(async move {
            let data = random_bytes(i, 64 << 10);
            let mut writer = driver.writer(&path, false).await.expect("writer");
            for chunk in data.chunks(8 << 10) {
                writer
                    .write(Bytes::copy_from_slice(chunk))
                    .await
                    .expect("write");
                tokio::task::yield_now().await;
            }
            writer.commit().await.expect("commit");
            assert_bytes(
                &driver.get_content(&path).await.expect("get"),
                &data,
                "content",
            );
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("a writer hung")
            .expect("writer task");
    }
}

/// Repeated readers while `writers` replace one path: every read sees one
/// complete version.
async fn race_readers(ctx: &Ctx, versions: Vec<Bytes>, writers: Vec<tokio::task::JoinHandle<()>>) {
    let path = ctx.path("raced");
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (driver, path, versions, done) = (
            ctx.driver_arc(),
            path.clone(),
            versions.clone(),
            Arc::clone(&done),
        );
        readers.push(tokio::spawn(async move {
            let mut reads = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) || reads < 3 {
                reads += 1;
                match driver.get_content(&path).await {
                    Ok(got) => assert!(
                        versions.contains(&got),
                        "a reader saw {} bytes that are no complete version",
                        got.len()
                    ),
                    Err(e) => panic!("a reader lost the file during a replace: {e}"),
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer task");
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    for reader in readers {
        reader.await.expect("reader task");
    }
    let last = ctx.driver().get_content(&path).await.expect("final get");
    assert!(
        versions.contains(&last),
        "the final content is no complete version"
    );
}

/// Two streaming writers racing on one path: readers always see one
/// complete version, never a mix or a gap.
pub async fn racing_writers_one_path(ctx: Ctx) {
    let versions = vec![
        Bytes::from(vec![b'a'; 3 * MIB + 5]),
        Bytes::from(vec![b'b'; 2 * MIB]),
    ];
    let path = ctx.put("raced", versions[0].clone()).await;
    let writers = versions
        .iter()
        .cloned()
        .map(|data| {
            let (driver, path) = (ctx.driver_arc(), path.clone());
            tokio::spawn(async move {
                for _ in 0..8 {
                    let mut writer = driver.writer(&path, false).await.expect("writer");
                    for chunk in data.chunks(256 << 10) {
                        writer
                            .write(Bytes::copy_from_slice(chunk))
                            .await
                            .expect("write");
                        tokio::task::yield_now().await;
                    }
                    writer.commit().await.expect("commit");
                }
            })
        })
        .collect();
    race_readers(&ctx, versions, writers).await;
}

/// `put_content` racing readers: every read sees one complete version.
pub async fn put_is_atomic(ctx: Ctx) {
    let versions = vec![
        Bytes::from(vec![b'x'; MIB + 1]),
        Bytes::from(vec![b'y'; 300]),
    ];
    let path = ctx.put("raced", versions[0].clone()).await;
    let writers = (0..2)
        .map(|w| {
            let (driver, path, versions) = (ctx.driver_arc(), path.clone(), versions.clone());
            tokio::spawn(async move {
                for i in 0..40 {
                    driver
                        .put_content(&path, versions[(i + w) % 2].clone())
                        .await
                        .expect("put");
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    race_readers(&ctx, versions, writers).await;
}

// ---------------------------------------------------------------- walk

/// The tree the walk cases use, under the case's prefix.
const WALK_TREE: &[&str] = &["t/a-c", "t/a/b", "t/a/d/e", "t/a/d/f", "t/b", "t/c/x/y/z"];

async fn walk_fixture(ctx: &Ctx) -> StoragePath {
    for (i, p) in WALK_TREE.iter().enumerate() {
        ctx.put(p, random_bytes(i as u64, i + 1)).await;
    }
    ctx.path("t")
}

/// Walks and returns `(relative path, is_dir, size)` per entry.
async fn walk_collect(
    ctx: &Ctx,
    from: &StoragePath,
    options: WalkOptions,
    mut control: impl FnMut(&FileInfo) -> WalkControl + Send,
) -> Vec<String> {
    let prefix_len = ctx.prefix().as_str().len() + 1;
    let mut seen = Vec::new();
    let mut visit = |info: &FileInfo| {
        let rel = &info.path.as_str()[prefix_len..];
        seen.push(if info.is_dir {
            format!("{rel}/")
        } else {
            format!("{rel}:{}", info.size)
        });
        control(info)
    };
    ctx.driver()
        .walk(from, &options, &mut visit)
        .await
        .expect("walk");
    seen
}

/// Walk reports files in byte order and each directory just before its
/// first entry, with file sizes.
pub async fn walk_order(ctx: Ctx) {
    let from = walk_fixture(&ctx).await;
    let seen = walk_collect(&ctx, &from, WalkOptions::default(), |_| {
        WalkControl::Continue
    })
    .await;
    let expected = [
        "t/a-c:1",
        "t/a/",
        "t/a/b:2",
        "t/a/d/",
        "t/a/d/e:3",
        "t/a/d/f:4",
        "t/b:5",
        "t/c/",
        "t/c/x/",
        "t/c/x/y/",
        "t/c/x/y/z:6",
    ];
    assert_eq!(seen, expected);
}

/// `SkipDir` on a directory hides everything beneath it, and nothing else.
pub async fn walk_skip_dir(ctx: Ctx) {
    let from = walk_fixture(&ctx).await;
    let skip = ctx.path("t/a");
    let seen = walk_collect(&ctx, &from, WalkOptions::default(), |i| {
        if i.path == skip {
            WalkControl::SkipDir
        } else {
            WalkControl::Continue
        }
    })
    .await;
    assert_eq!(
        seen,
        [
            "t/a-c:1",
            "t/a/",
            "t/b:5",
            "t/c/",
            "t/c/x/",
            "t/c/x/y/",
            "t/c/x/y/z:6"
        ]
    );
}

/// `Stop` ends the walk at once, successfully.
pub async fn walk_stop(ctx: Ctx) {
    let from = walk_fixture(&ctx).await;
    let stop = ctx.path("t/a/d/e");
    let seen = walk_collect(&ctx, &from, WalkOptions::default(), |i| {
        if i.path == stop {
            WalkControl::Stop
        } else {
            WalkControl::Continue
        }
    })
    .await;
    assert_eq!(seen, ["t/a-c:1", "t/a/", "t/a/b:2", "t/a/d/", "t/a/d/e:3"]);
}

/// `start_after` reports only what sorts after it, for a file and for a directory.
pub async fn walk_start_after(ctx: Ctx) {
    let from = walk_fixture(&ctx).await;
    let after = |p: &str| WalkOptions {
        start_after: Some(ctx.path(p)),
    };
    let seen = walk_collect(&ctx, &from, after("t/a/d/e"), |_| WalkControl::Continue).await;
    assert_eq!(
        seen,
        [
            "t/a/d/f:4",
            "t/b:5",
            "t/c/",
            "t/c/x/",
            "t/c/x/y/",
            "t/c/x/y/z:6"
        ]
    );
    let seen = walk_collect(&ctx, &from, after("t/a-c"), |_| WalkControl::Continue).await;
    assert_eq!(
        seen[0], "t/a/",
        "a directory sorts after a sibling file with its name as prefix"
    );
    let seen = walk_collect(&ctx, &from, after("t/c/x/y/z"), |_| WalkControl::Continue).await;
    assert!(seen.is_empty(), "{seen:?}");
}

/// Walking `/a` never reports `/asuffix`.
pub async fn walk_prefix_trap(ctx: Ctx) {
    for p in ["a/x", "asuffix/y", "a-b"] {
        ctx.put(p, "x").await;
    }
    let seen = walk_collect(&ctx, &ctx.path("a"), WalkOptions::default(), |_| {
        WalkControl::Continue
    })
    .await;
    assert_eq!(seen, ["a/x:1"]);
}

/// Walking a missing directory or a file is `PathNotFound`.
pub async fn walk_missing_not_found(ctx: Ctx) {
    let file = ctx.put("file", "x").await;
    for from in [ctx.path("missing"), file] {
        let mut visit = |_: &FileInfo| WalkControl::Continue;
        expect_kind(
            ctx.driver()
                .walk(&from, &WalkOptions::default(), &mut visit)
                .await,
            ErrorKind::PathNotFound,
            "walk",
        );
    }
}

/// Walk from the root reaches the case's files.
pub async fn walk_from_root(ctx: Ctx) {
    let file = ctx.put("w/file", "x").await;
    let mut found = HashSet::new();
    let prefix = ctx.prefix().clone();
    let mut visit = |info: &FileInfo| {
        found.insert(info.path.clone());
        // Only descend into this case's prefix: others may share the backend.
        if info.is_dir && info.path.segments().count() == 1 && info.path != prefix {
            WalkControl::SkipDir
        } else {
            WalkControl::Continue
        }
    };
    ctx.driver()
        .walk(&StoragePath::root(), &WalkOptions::default(), &mut visit)
        .await
        .expect("walk /");
    assert!(
        found.contains(&file) && found.contains(&ctx.path("w")) && found.contains(ctx.prefix()),
        "{found:?}"
    );
}

// ---------------------------------------------------------------- model

/// Random operation sequences give the same results as the in-memory model.
pub async fn model_random_sequences(ctx: Ctx) {
    crate::model::check(&ctx).await;
}
