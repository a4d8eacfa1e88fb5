//! The data path beside plain reads and writes, through the kernel on a real region:
//! fallocate's modes, SEEK_DATA/SEEK_HOLE, copy_file_range on the servers, setuid/setgid
//! dropped by writers, the link count of a file unlinked while open, shared mappings over
//! ftruncate and truncate, compaction around holes, the kernel caches across mounts.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use common::{Region, msync, piece_byte, random_bytes, scattered, with_map};

fn fallocate(f: &File, mode: i32, offset: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: a valid descriptor; the kernel checks the rest.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode, offset as i64, len as i64) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn seek(f: &File, offset: u64, whence: i32) -> std::io::Result<u64> {
    // SAFETY: a valid descriptor.
    let at = unsafe { libc::lseek(f.as_raw_fd(), offset as i64, whence) };
    if at < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(at as u64)
    }
}

fn read_all(path: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    File::open(path)?.read_to_end(&mut out)?;
    Ok(out)
}

fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("expected an error")
        .raw_os_error()
        .unwrap_or(-1)
}

#[test]
fn fallocate_modes_holes_and_seek_data_behave_as_on_a_local_disk() -> Result<()> {
    let region = Region::start()?;
    let mnt = region.mount("mnt")?;
    let path = mnt.path.join("f");
    let data = random_bytes(1, 300_000);
    fs::write(&path, &data)?;
    let f = OpenOptions::new().read(true).write(true).open(&path)?;

    // PUNCH_HOLE (with KEEP_SIZE): the range reads as zeros, the size stays, and
    // SEEK_HOLE / SEEK_DATA find it.
    fallocate(
        &f,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        100_000,
        50_000,
    )?;
    let mut want = data.clone();
    want[100_000..150_000].fill(0);
    assert_eq!(read_all(&path)?, want);
    assert_eq!(f.metadata()?.len(), 300_000);
    assert_eq!(seek(&f, 0, libc::SEEK_HOLE)?, 100_000);
    assert_eq!(seek(&f, 100_000, libc::SEEK_DATA)?, 150_000);
    assert_eq!(
        seek(&f, 160_000, libc::SEEK_HOLE)?,
        300_000,
        "the end is a hole"
    );
    assert_eq!(errno_of(seek(&f, 300_000, libc::SEEK_DATA)), libc::ENXIO);
    // PUNCH_HOLE without KEEP_SIZE is refused, as Linux does.
    assert_eq!(
        errno_of(fallocate(&f, libc::FALLOC_FL_PUNCH_HOLE, 0, 10)),
        libc::EOPNOTSUPP
    );

    // ZERO_RANGE past the end grows the file; with KEEP_SIZE it does not.
    fallocate(&f, libc::FALLOC_FL_ZERO_RANGE, 290_000, 20_000)?;
    want[290_000..].fill(0);
    want.resize(310_000, 0);
    assert_eq!(read_all(&path)?, want);
    fallocate(
        &f,
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        0,
        400_000,
    )?;
    assert_eq!(read_all(&path)?, vec![0u8; 310_000]);

    // KEEP_SIZE alone changes nothing; mode 0 grows, and never shrinks.
    fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, 0, 1 << 20)?;
    assert_eq!(f.metadata()?.len(), 310_000);
    fallocate(&f, 0, 400_000, 100)?;
    assert_eq!(f.metadata()?.len(), 400_100);
    fallocate(&f, 0, 0, 10)?;
    assert_eq!(f.metadata()?.len(), 400_100);
    // A mode we cannot do: EOPNOTSUPP, nothing changed.
    assert_eq!(
        errno_of(fallocate(&f, libc::FALLOC_FL_COLLAPSE_RANGE, 0, 4096)),
        libc::EOPNOTSUPP
    );
    assert_eq!(f.metadata()?.len(), 400_100);

    // Writes buffered in the handle land before a hole is punched over part of them.
    let mut w = OpenOptions::new().write(true).open(&path)?;
    w.seek(SeekFrom::Start(0))?;
    w.write_all(&[7u8; 1000])?;
    fallocate(
        &w,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        500,
        100,
    )?;
    drop(w);
    let got = read_all(&path)?;
    assert!(got[..500].iter().all(|b| *b == 7));
    assert!(got[500..600].iter().all(|b| *b == 0));
    assert!(got[600..1000].iter().all(|b| *b == 7));
    Ok(())
}

/// Copies `from` (from its start) into `to` at `out` with copy_file_range until it copies
/// nothing more, each call asking for `ask(offset in from)` bytes; returns what each
/// call copied.
fn copy_until_done(
    from: &File,
    to: &File,
    out: i64,
    ask: impl Fn(u64) -> usize,
) -> Result<Vec<u64>> {
    let (mut off_in, mut off_out) = (0i64, out);
    let mut calls = Vec::new();
    loop {
        // SAFETY: valid descriptors and offsets.
        let n = unsafe {
            libc::copy_file_range(
                from.as_raw_fd(),
                &mut off_in,
                to.as_raw_fd(),
                &mut off_out,
                ask(off_in as u64),
                0,
            )
        };
        anyhow::ensure!(
            n >= 0,
            "copy_file_range: {}",
            std::io::Error::last_os_error()
        );
        if n == 0 {
            return Ok(calls);
        }
        calls.push(n as u64);
    }
}

#[test]
fn copy_file_range_copies_on_the_servers_holes_and_all() -> Result<()> {
    let region = Region::start()?;
    let mnt = region.mount("mnt")?;
    let (src, dst) = (mnt.path.join("src"), mnt.path.join("dst"));
    let data = random_bytes(2, 5 << 20);
    fs::write(&src, &data)?;
    {
        let f = OpenOptions::new().write(true).open(&src)?;
        fallocate(
            &f,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            1 << 20,
            1 << 20,
        )?;
    }
    let mut want = data.clone();
    want[1 << 20..2 << 20].fill(0);
    fs::write(&dst, b"destination head")?;
    let (fi, fo) = (
        File::open(&src)?,
        OpenOptions::new().write(true).open(&dst)?,
    );
    let copied: u64 = copy_until_done(&fi, &fo, 8, |_| 64 << 20)?.iter().sum();
    assert_eq!(copied, data.len() as u64);
    drop((fi, fo));
    let mut expect = b"destinat".to_vec();
    expect.extend_from_slice(&want);
    assert_eq!(read_all(&dst)?, expect);
    let d = File::open(&dst)?;
    assert_eq!(
        seek(&d, 8, libc::SEEK_HOLE)?,
        8 + (1 << 20),
        "the hole came along"
    );
    // No bytes moved: the copy's extents name the source's blocks.
    let blocks = |p: &Path| -> Result<std::collections::BTreeSet<meridian_proto::BlockId>> {
        Ok(region.extents(p)?.into_iter().map(|e| e.block).collect())
    };
    let (from, to) = (blocks(&src)?, blocks(&dst)?);
    assert!(from.is_subset(&to), "{from:?} not all in {to:?}");
    Ok(())
}

/// A copy of a file of many extents (`cp` of a database file or a disk image asks for all
/// of it at once) comes back short, a bounded number of extents at a time, and the caller's
/// loop copies the rest: every byte and hole arrives, and no one entry of the servers
/// held everything.
#[test]
fn copy_file_range_of_many_extents_comes_back_short_and_the_loop_copies_the_rest() -> Result<()> {
    let region = Region::start()?;
    let mnt = region.mount("mnt")?;
    let pieces = 2_500u64;
    let src = scattered(&mnt.path, "src", pieces)?;
    let size = src.metadata()?.len();
    let dst = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(mnt.path.join("dst"))?;
    // Each call asks for everything left.
    let calls = copy_until_done(&src, &dst, 0, |at| (size - at) as usize + 1)?;
    assert_eq!(calls.iter().sum::<u64>(), size);
    assert!(calls.len() > 1 && calls[0] < size, "{calls:?}");
    drop((src, dst));
    assert!(read_all(&mnt.path.join("dst"))? == read_all(&mnt.path.join("src"))?);
    Ok(())
}

#[test]
fn compaction_of_a_range_written_in_pieces_keeps_its_holes() -> Result<()> {
    let region = Region::start()?;
    let mnt = region.mount("mnt")?;
    let path = mnt.path.join("sparse");
    let f = create_rw(&path)?;
    f.set_len(200_000)?;
    // Two runs of small writes, each committed apart, with a hole between and after.
    let mut expect = vec![0u8; 200_000];
    for (i, at) in [0usize, 300, 600, 100_000, 100_250].into_iter().enumerate() {
        write_synced(&f, &mut expect, i as u64, at, 300)?;
    }
    drop(f);
    // After the close the compactor rewrites each run as one block, and nothing else.
    let runs = |e: &[meridian_proto::ns::Extent]| -> Vec<(u64, u64, bool)> {
        e.iter()
            .map(|e| {
                (
                    e.offset,
                    e.len,
                    e.block_offset == 0 && u64::from(e.block_len) == e.len,
                )
            })
            .collect()
    };
    let want = vec![(0, 900, true), (100_000, 550, true)];
    common::wait_for(std::time::Duration::from_secs(30), "compaction", || {
        let e = region.extents(&path).ok()?;
        (runs(&e) == want).then_some(())
    })
    .with_context(|| format!("extents now: {:?}", region.extents(&path).map(|e| runs(&e))))?;
    assert_eq!(read_all(&path)?, expect);
    let f = File::open(&path)?;
    assert_eq!(
        seek(&f, 0, libc::SEEK_HOLE)?,
        900,
        "the hole after the first run"
    );
    assert_eq!(seek(&f, 900, libc::SEEK_DATA)?, 100_000);
    assert_eq!(seek(&f, 100_000, libc::SEEK_HOLE)?, 100_550);
    Ok(())
}

#[test]
fn other_users_writes_and_truncates_drop_setuid_and_setgid() -> Result<()> {
    let region = Region::start()?;
    let mnt = region.mount("mnt")?;
    let dir = mnt.path.join("shared");
    fs::create_dir(&dir)?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))?;
    let path = dir.join("tool");
    fs::write(&path, b"#!/bin/sh\n")?;
    let bits = |p: &Path| -> Result<u32> {
        // Through the servers, not the kernel's attribute cache.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let ino = fs::metadata(p)?.ino();
        let meta = region.meta.client();
        let q = meridian_proto::ns::Query::GetAttr {
            ino: meridian_proto::InodeId(ino),
        };
        match rt.block_on(meta.query(&q, false))? {
            meridian_proto::ns::QueryReply::Attr(a) => Ok(u32::from(a.perm)),
            other => anyhow::bail!("{other:?}"),
        }
    };
    for how in ["append", "truncate"] {
        fs::set_permissions(&path, fs::Permissions::from_mode(0o6777))?;
        assert_eq!(bits(&path)?, 0o6777);
        // The caller's own stat, while the file is still open after the write: the
        // kernel's cached mode must have lost the bits too.
        let script = match how {
            "append" => "exec 3>>\"$0\"; printf x >&3; stat -c %a \"$0\"",
            _ => "truncate -s 3 \"$0\"; stat -c %a \"$0\"",
        };
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(&path)
            .uid(65534)
            .gid(65534)
            .output()
            .context("run as nobody")?;
        assert!(out.status.success(), "{how} as another user: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "777",
            "{how} by another user: the mode the writer sees"
        );
        assert_eq!(
            bits(&path)? & 0o6000,
            0,
            "{how} by another user drops both bits"
        );
    }
    Ok(())
}

#[test]
fn an_open_file_whose_last_name_is_gone_has_no_links() -> Result<()> {
    let region = Region::start()?;
    let mnt = region.mount("mnt")?;
    let path = mnt.path.join("tmp");
    let f = create_rw(&path)?;
    assert_eq!(f.metadata()?.nlink(), 1);
    fs::remove_file(&path)?;
    assert_eq!(f.metadata()?.nlink(), 0);
    Ok(())
}

#[test]
fn the_mount_raises_the_kernels_read_ahead() -> Result<()> {
    let region = Region::start()?;
    let mnt = region.mount("mnt")?;
    let dev = fs::metadata(&mnt.path)?.dev();
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    assert_eq!(fs::read_to_string(&knob)?.trim(), "4096", "{knob}");
    Ok(())
}

#[test]
fn a_handle_opened_before_another_clients_change_does_not_bring_old_bytes_back() -> Result<()> {
    let region = Region::start()?;
    let (a, b) = (region.mount("a")?, region.mount("b")?);
    let old = random_bytes(1, 64 << 10);
    let new = random_bytes(2, 64 << 10);
    fs::write(a.path.join("f"), &old)?;
    // An early reader in mount a, still open while mount b rewrites the file.
    let early = File::open(a.path.join("f"))?;
    let mut first = [0u8; 1];
    early.read_exact_at(&mut first, 0)?;
    fs::write(b.path.join("f"), &new)?;
    // A later open in mount a drops the cached pages; the early handle then reads (and
    // fills the page cache every handle shares)...
    let late = File::open(a.path.join("f"))?;
    // Every page is dropped again, so the early handle's read refills all of them.
    unsafe { libc::posix_fadvise(late.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let mut seen = vec![0u8; new.len()];
    early.read_exact_at(&mut seen, 0)?;
    // ...and what the later open reads is the new content, not the early view's.
    let mut got = vec![0u8; new.len()];
    late.read_exact_at(&mut got, 0)?;
    assert!(got == new, "the later open reads the old bytes");
    Ok(())
}

#[test]
fn a_shared_mapping_writes_into_space_just_added_by_ftruncate() -> Result<()> {
    let region = Region::start()?;
    let mnt = region.mount("mnt")?;
    let path = mnt.path.join("grown");
    let mut expect = random_bytes(1, 10_000);
    fs::write(&path, &expect)?;
    for round in 0..20u64 {
        // Grow with ftruncate, then write the new space through a mapping: the kernel's
        // size must cover it (a smaller one is SIGBUS).
        let f = OpenOptions::new().read(true).write(true).open(&path)?;
        let old = expect.len();
        let new = old + 5_000 + (round as usize * 7_919) % 20_000;
        f.set_len(new as u64)?;
        expect.resize(new, 0);
        let patch = random_bytes(100 + round, new - old - 10);
        with_map(&f, new, |m| {
            m[old + 5..new - 5].copy_from_slice(&patch);
            msync(m, libc::MS_SYNC)
        })??;
        expect[old + 5..new - 5].copy_from_slice(&patch);
        assert_eq!(f.metadata()?.len(), new as u64);
        drop(f);
        assert!(read_all(&path)? == expect, "round {round}: bytes differ");
    }
    Ok(())
}

#[test]
fn after_a_truncate_down_the_mapped_last_page_is_zero_past_the_end() -> Result<()> {
    let region = Region::start()?;
    let mnt = region.mount("mnt")?;
    let path = mnt.path.join("shrunk");
    fs::write(&path, random_bytes(3, 100_000))?;
    let f = OpenOptions::new().read(true).write(true).open(&path)?;
    // Read it all through a mapping first, so the pages are cached.
    with_map(&f, 100_000, |m| {
        m.iter().map(|b| u64::from(*b)).sum::<u64>()
    })?;
    for size in [70_001u64, 40_100, 12_345, 1] {
        f.set_len(size)?;
        let page_end = size.div_ceil(4096) * 4096;
        let tail = with_map(&f, page_end as usize, |m| -> Result<bool> {
            msync(m, libc::MS_INVALIDATE)?;
            Ok(m[size as usize..].iter().all(|b| *b == 0))
        })??;
        assert!(
            tail,
            "bytes past the end {size} of the last page are not zero"
        );
    }
    Ok(())
}

/// Creates (or empties) `path` for reading and writing.
fn create_rw(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

/// Writes `n` random bytes (from `seed`) at `at`, into `expect` too, and syncs them, so
/// that each such write is committed on its own.
fn write_synced(f: &File, expect: &mut [u8], seed: u64, at: usize, n: usize) -> Result<()> {
    let piece = random_bytes(seed, n);
    f.write_all_at(&piece, at as u64)?;
    expect[at..at + n].copy_from_slice(&piece);
    f.sync_all()?;
    Ok(())
}

/// Reads `len` bytes at `offset` with O_DIRECT, so the request reaches the client as is.
fn read_direct(path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let layout = std::alloc::Layout::from_size_align(len, 4096).expect("layout");
    // SAFETY: a fresh allocation of `len` bytes, freed below; the kernel fills it.
    let buf = unsafe { std::alloc::alloc_zeroed(layout) };
    let slice = unsafe { std::slice::from_raw_parts_mut(buf, len) };
    let got = f.read_at(slice, offset).map(|n| slice[..n].to_vec());
    unsafe { std::alloc::dealloc(buf, layout) };
    got
}

#[test]
fn small_random_reads_fetch_verified_ranges_and_never_return_rotten_bytes() -> Result<()> {
    let region = Region::start()?;
    let mnt = region.mount("mnt")?;
    let random = random_bytes(21, 9 << 20);
    let text: Vec<u8> = (0..9u32 << 20)
        .map(|i| {
            b"the quick brown fox jumps over the lazy dog "[(i % 44) as usize] ^ (i >> 16) as u8
        })
        .collect();
    fs::write(mnt.path.join("random"), &random)?;
    fs::write(mnt.path.join("text"), &text)?;
    drop(mnt);

    // A fresh mount has nothing cached: every read below reaches the chunkservers.
    let mnt = region.mount("fresh")?;
    let mut x = 7u64;
    for (name, data) in [("random", &random), ("text", &text)] {
        for _ in 0..48 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let offset = (x >> 20) % (data.len() as u64 / 4096) * 4096;
            let got = read_direct(&mnt.path.join(name), offset, 4096)?;
            assert!(
                got[..] == data[offset as usize..offset as usize + 4096],
                "{name} at {offset}"
            );
        }
    }

    // Rot one 16 KiB group of the first block in every copy: a read of another group of
    // that block is still served (verified alone), a read of the rotten group fails.
    let first = region.extents(&mnt.path.join("random"))?[0];
    assert_eq!(first.offset, 0);
    let hex = first.block.to_hex();
    for c in &region.chunks {
        let path = common::block_file(&c.data, &hex);
        let mut file = fs::read(&path).with_context(|| format!("{}", path.display()))?;
        file[56 + 3 * 16384 + 5] ^= 0x10;
        fs::write(&path, &file)?;
    }
    let fresh = region.mount("after-rot")?;
    let good = 10 * 16384;
    assert!(
        read_direct(&fresh.path.join("random"), good, 4096)?
            == random[good as usize..good as usize + 4096]
    );
    let rotten = read_direct(&fresh.path.join("random"), 3 * 16384, 4096);
    assert_eq!(errno_of(rotten), libc::EIO);
    Ok(())
}

/// Many small scattered writes through O_DIRECT (each its own dirty range, never adding up
/// to the mount's dirty-bytes limit): the mount commits them in bounded pieces, every
/// commit (a Raft entry of thousands of extents) replicates, and every byte is there
/// after fsync.
#[test]
fn many_small_scattered_writes_commit_in_bounded_pieces() -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    const WRITES: u64 = 20_000; // five commits of 4,096 ranges
    const SIZE: usize = 512;
    let region = Region::start()?;
    let mnt = region.mount("mnt")?;
    let path = mnt.path.join("scattered");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)?;
    let piece = |i: u64| [(i % 251) as u8 + 1; SIZE];
    for i in 0..WRITES {
        f.write_all_at(&piece(i), i * 2 * SIZE as u64)
            .with_context(|| format!("write {i}: {}", common::log_tail(&mnt.log, 20)))?;
    }
    f.sync_all().context("fsync after the scattered writes")?;
    drop(f);
    let back = read_all(&path)?;
    assert_eq!(back.len() as u64, (WRITES * 2 - 1) * SIZE as u64);
    for i in 0..WRITES {
        let at = (i * 2) as usize * SIZE;
        assert_eq!(back[at..at + SIZE], piece(i), "piece {i}");
        if i + 1 < WRITES {
            assert!(
                back[at + SIZE..at + 2 * SIZE].iter().all(|&b| b == 0),
                "gap {i}"
            );
        }
    }
    drop(mnt);
    Ok(())
}

/// A read inside one block is handed to the kernel as a slice of the cached block; one
/// that spans pieces written apart, holes, or the end of the file is assembled. Both
/// return exactly the bytes written, read on a fresh mount (nothing in its page cache)
/// with O_DIRECT, whose requests reach the mount as they are.
#[test]
fn reads_within_a_block_and_across_pieces_and_holes_return_the_bytes_written() -> Result<()> {
    let region = Region::start()?;
    let mnt = region.mount("mnt")?;
    let path = mnt.path.join("pieces");
    let f = create_rw(&path)?;
    let len = 5_000_000usize;
    f.set_len(len as u64)?;
    let mut expect = vec![0u8; len];
    // A large piece across the first block's end (4 MiB), smaller ones over it and apart,
    // each committed on its own so they stay separate extents.
    for (i, (at, n)) in [
        (0usize, 4_300_000usize),
        (8_192, 20_000),
        (1_000_000, 4_096),
        (4_700_000, 100_000),
    ]
    .into_iter()
    .enumerate()
    {
        write_synced(&f, &mut expect, 40 + i as u64, at, n)?;
    }
    drop(f);
    drop(mnt);

    let fresh = region.mount("fresh")?;
    let path = fresh.path.join("pieces");
    for (offset, n) in [
        // Inside one extent of one block.
        (40_960usize, 131_072usize),
        (1_998_848, 1 << 20),
        // Across small pieces written over the large one.
        (0, 65_536),
        (995_328, 16_384),
        // Across the first block's end, then into the hole after the large piece.
        (4_128_768, 262_144),
        // A hole, a piece, and the end of the file (a short read).
        (4_599_808, 401_408),
    ] {
        let got = read_direct(&path, offset as u64, n)?;
        let want = &expect[offset..(offset + n).min(len)];
        assert!(got == want, "{n} bytes at {offset}: {} read", got.len());
    }
    assert!(
        read_all(&path)? == expect,
        "the whole file, read through the page cache"
    );
    Ok(())
}

/// Small fsync'd writes staged in their commits (docs/adr/0018) reach the chunkservers by
/// their writer's uploader, which encodes them only then (compressed when that pays, as a
/// page of a database would be): once fsck finds nothing staged and nothing missing,
/// another mount reads every file back from the chunkservers, compressed or not.
#[test]
fn staged_blocks_are_encoded_and_put_by_their_writer() -> Result<()> {
    let region = Region::start()?;
    let mnt = region.mount("writer")?;
    let mut expect = Vec::new();
    for i in 0..6u64 {
        // Even files repeat a short pattern (lz4 shrinks it), odd ones are random.
        let data = if i % 2 == 0 {
            (0..4096).map(|j| (j % 61) as u8 ^ i as u8).collect()
        } else {
            random_bytes(100 + i, 4096)
        };
        let path = mnt.path.join(format!("page-{i}"));
        let mut f = File::create(&path)?;
        f.write_all(&data)?;
        f.sync_all()?;
        expect.push((path.file_name().unwrap().to_owned(), data));
    }
    let empty = |r: &serde_json::Value, k: &str| r[k].as_array().is_some_and(Vec::is_empty);
    let report = common::wait_for(
        std::time::Duration::from_secs(30),
        "the staged blocks put and unstaged",
        || {
            let (report, _) = common::fsck(&region.meta_addrs()).ok()?;
            (report["staged"] == 0 && empty(&report, "missing")).then_some(report)
        },
    )?;
    assert!(
        empty(&report, "namespace") && empty(&report, "corrupt"),
        "{report}"
    );
    let reader = region.mount("reader")?;
    for (name, data) in &expect {
        assert!(
            fs::read(reader.path.join(name))? == *data,
            "{name:?} read back differs"
        );
    }
    Ok(())
}

/// File `name` reads as `expected` through a mount that never saw it written, fsck is
/// clean at every look until the region holds `extents` extents, and the file reads the
/// same after.
fn reads_as_and_settles(region: &Region, name: &str, expected: &[u8], extents: u64) -> Result<()> {
    let reader = region.mount("reader")?;
    let got = fs::read(reader.path.join(name))?;
    assert_eq!(got.len(), expected.len());
    let first_wrong = got.iter().zip(expected).position(|(a, b)| a != b);
    assert!(first_wrong.is_none(), "differs at byte {first_wrong:?}");
    common::wait_for(
        std::time::Duration::from_secs(30),
        "the cut extents dropped",
        || {
            let (report, clean) = common::fsck(&region.meta_addrs()).ok()?;
            assert!(clean, "{report}");
            (report["extents"] == extents).then_some(())
        },
    )?;
    assert!(fs::read(reader.path.join(name))? == expected);
    Ok(())
}

/// A truncate that cuts many extents off a file leaves them to the same steps as a
/// removal (`namespace/trim.rs`): the file is short at once, made long again right after
/// (over half of what was cut) it shows holes where the cut extents were and its new
/// bytes, read through another mount; fsck finds nothing wrong at any look, and in the end
/// only the extents the file holds are left.
#[test]
fn a_truncates_many_cut_extents_are_dropped_in_steps_and_never_show_again() -> Result<()> {
    let region = Region::start()?;
    let mnt = region.mount("writer")?;
    let pieces = 1_500u64;
    let f = scattered(&mnt.path, "scattered", pieces)?;
    // Into the third piece: it keeps 100 bytes.
    let cut = 2 * 8192 + 100;
    f.set_len(cut)?;
    f.sync_all()?;
    // Long again over half of what was cut; the other half stays cut past the end.
    let long = pieces / 2 * 8192;
    f.set_len(long)?;
    let new_at = 700 * 8192 + 3;
    f.write_all_at(b"new", new_at)?;
    f.sync_all()?;
    drop(f);
    let mut expected = vec![0u8; long as usize];
    for i in 0..3u64 {
        let at = (i * 8192) as usize;
        let len = if i == 2 { 100 } else { 512 };
        expected[at..at + len].fill(piece_byte(i));
    }
    expected[new_at as usize..new_at as usize + 3].copy_from_slice(b"new");
    reads_as_and_settles(&region, "scattered", &expected, 4)
}

/// A hole punched over many extents (a guest's discard in a disk image) leaves them to the
/// same steps: the range reads as zeros at once, through another mount too, a write into
/// it right after shows, and fsck finds nothing wrong until only the extents the file
/// holds are left.
#[test]
fn a_holes_many_cut_extents_are_dropped_in_steps_and_never_show_again() -> Result<()> {
    let region = Region::start()?;
    let mnt = region.mount("writer")?;
    let pieces = 1_500u64;
    let f = scattered(&mnt.path, "image", pieces)?;
    // From the middle of the second piece to the middle of the last: each keeps its
    // outer half.
    let (start, end) = (8192 + 256, (pieces - 1) * 8192 + 256);
    fallocate(
        &f,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        start,
        end - start,
    )?;
    let new_at = 700 * 8192 + 3;
    f.write_all_at(b"new", new_at)?;
    f.sync_all()?;
    drop(f);
    let size = (pieces - 1) * 8192 + 512;
    let mut expected = vec![0u8; size as usize];
    expected[..512].fill(piece_byte(0));
    expected[8192..8192 + 256].fill(piece_byte(1));
    expected[end as usize..size as usize].fill(piece_byte(pieces - 1));
    expected[new_at as usize..new_at as usize + 3].copy_from_slice(b"new");
    reads_as_and_settles(&region, "image", &expected, 4)
}

/// A removed file of many extents (written at scattered offsets, as a database or an
/// image is) loses its name at once and its extents in steps the leader proposes
/// (`namespace/trim.rs`): fsck finds nothing wrong meanwhile, and in the end no extent is
/// left and nothing is missing.
#[test]
fn a_removed_files_many_extents_are_dropped_in_steps() -> Result<()> {
    let region = Region::start()?;
    let mnt = region.mount("writer")?;
    let path = mnt.path.join("scattered");
    let pieces = 1_500u64;
    drop(scattered(&mnt.path, "scattered", pieces)?);
    let (report, clean) = common::fsck(&region.meta_addrs())?;
    assert!(clean, "{report}");
    let extents = report["extents"].as_u64().context("fsck counts extents")?;
    assert!(extents >= pieces, "{extents} extents: {report}");
    fs::remove_file(&path)?;
    assert!(!path.exists());
    let report = common::wait_for(
        std::time::Duration::from_secs(30),
        "the removed file's extents dropped",
        || {
            let (report, clean) = common::fsck(&region.meta_addrs()).ok()?;
            // Clean at every look: the extents left behind belong to their mark.
            assert!(clean, "{report}");
            (report["extents"] == 0).then_some(report)
        },
    )?;
    assert!(
        report["missing"].as_array().is_some_and(Vec::is_empty),
        "{report}"
    );
    Ok(())
}
