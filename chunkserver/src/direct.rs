//! Writing a large block file around the page cache (`O_DIRECT`), and reading one whole.
//!
//! A block too large for a pack is written to a new file and fsync'd. Through the
//! page cache, that write costs the chunkserver a copy into freshly allocated cache pages,
//! which on a virtual machine is far dearer than the copy itself: 400 MiB took 1.3 s of
//! system time buffered and 0.1–0.26 s direct on the bench host (`dd`, 4 MiB writes, with
//! the fsync), and every byte of a sequential write is written on R chunkservers. A block
//! is read back rarely right after it is written, and then from the disk as any cold
//! block is.
//!
//! The file's bytes are gathered into a reused buffer aligned for direct I/O (padded to
//! [`ALIGN`]), written at once, cut back to their length and fsync'd. A file system that
//! takes no direct writes (tmpfs) leaves the caller to write through the cache.
//!
//! A block file read whole (a sequential reader's block, which its mount keeps) is read
//! around the page cache too, for the same reason: through it, a cold 1 GiB read cost
//! each chunkserver's connection threads a fifth of the host's samples copying out of
//! freshly allocated cache pages, and the cold sequential read ran at 340–430 MiB/s on
//! the bench host where the same read into pages used a moment before ran at 650–950.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Mutex;

use bytes::Bytes;

/// Offsets, lengths and buffer addresses of direct writes are multiples of this (the
/// largest logical block size of common disks).
pub const ALIGN: usize = 4096;
/// Block files at least this long are read around the page cache when read whole.
pub const READ_FROM: u64 = 256 << 10;
/// Buffers kept for reuse (a fresh one is faulted in page by page).
const KEPT: usize = 4;
/// Buffers larger than this are not kept.
const KEPT_MAX: usize = 9 << 20;

static BUFFERS: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Writes `parts`, one after the other, to the new file `path` around the page cache and
/// fsyncs it. `Ok(false)`, with no file left behind, when the file system takes no direct
/// writes. On an error the caller removes `path`.
pub fn write_new(path: &Path, parts: &[&[u8]]) -> io::Result<bool> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let padded = len.next_multiple_of(ALIGN);
    let f = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if unsupported(&e) => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut buf = take(padded);
    let wrote = {
        let at = buf.as_ptr().align_offset(ALIGN);
        let out = &mut buf[at..at + padded];
        let mut filled = 0;
        for p in parts {
            out[filled..filled + p.len()].copy_from_slice(p);
            filled += p.len();
        }
        out[filled..].fill(0);
        f.write_all_at(out, 0)
    };
    give_back(buf);
    match wrote {
        Err(e) if unsupported(&e) => {
            drop(f);
            fs::remove_file(path)?;
            return Ok(false);
        }
        other => other?,
    }
    finish(&f, len as u64, padded as u64)?;
    Ok(true)
}

/// The whole of `file` (open at `path`), which the caller found `len` bytes long, read
/// around the page cache into memory of its own. `None` when that cannot be done (a file
/// system without direct reads, a file of another length by now, any error): the caller
/// reads through the cache, which reports a real error as such.
pub fn read_whole(file: &File, path: &Path, len: usize) -> Option<Bytes> {
    use std::os::fd::AsRawFd;
    let direct = |at: &Path| {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(at)
    };
    // The open file again, through its descriptor: no lookup of the path, whose directory
    // entry may no longer be cached.
    let f = direct(Path::new(&format!("/proc/self/fd/{}", file.as_raw_fd())))
        .or_else(|_| direct(path))
        .ok()?;
    let padded = len.next_multiple_of(ALIGN);
    let mut buf: Vec<u8> = Vec::with_capacity(padded + ALIGN);
    let at = buf.as_ptr().align_offset(ALIGN);
    // SAFETY: the destination is the vector's spare capacity from `at`, `padded` bytes
    // long (`at` < ALIGN); pread writes at most that many bytes there, and only the bytes
    // it reports are counted as initialised below.
    let read = unsafe { libc::pread(f.as_raw_fd(), buf.as_mut_ptr().add(at).cast(), padded, 0) };
    if usize::try_from(read).ok()? != len {
        return None;
    }
    // SAFETY: pread initialised `len` bytes from `at`.
    unsafe { buf.set_len(at + len) };
    Some(Bytes::from(buf).slice(at..))
}

/// Cuts the padding and makes the file durable.
fn finish(f: &File, len: u64, padded: u64) -> io::Result<()> {
    if padded != len {
        f.set_len(len)?;
    }
    f.sync_all()
}

fn unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

/// A buffer with `len` bytes from an [`ALIGN`]ed address on.
fn take(len: usize) -> Vec<u8> {
    let want = len + ALIGN;
    let kept = {
        let mut kept = BUFFERS.lock().unwrap_or_else(|p| p.into_inner());
        let at = kept.iter().position(|b| b.len() >= want);
        at.map(|i| kept.swap_remove(i))
    };
    kept.unwrap_or_else(|| vec![0u8; want])
}

fn give_back(buf: Vec<u8>) {
    if buf.len() > KEPT_MAX {
        return;
    }
    let mut kept = BUFFERS.lock().unwrap_or_else(|p| p.into_inner());
    if kept.len() < KEPT {
        kept.push(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_read_back_as_written_whatever_their_length() {
        let dir = tempfile::tempdir().unwrap();
        let lens = [0usize, 1, 4095, 4096, 4097, 100_000, (4 << 20) + 123];
        for (i, len) in lens.into_iter().enumerate() {
            let data: Vec<u8> = (0..len).map(|b| (b * 7 + i) as u8).collect();
            let (head, tail) = data.split_at(len / 3);
            let path = dir.path().join(format!("f{i}"));
            match write_new(&path, &[head, tail]).unwrap() {
                true => assert_eq!(fs::read(&path).unwrap(), data, "length {len}"),
                // A file system without direct writes: nothing left behind.
                false => assert!(!path.exists()),
            }
        }
        for (i, len) in lens.into_iter().enumerate() {
            let path = dir.path().join(format!("f{i}"));
            if let Ok(data) = fs::read(&path) {
                // Read around the cache where the file system can (or `None`: through it).
                let file = File::open(&path).unwrap();
                if let Some(read) = read_whole(&file, &path, len) {
                    assert_eq!(&read[..], &data[..], "length {len}");
                }
                assert_eq!(
                    read_whole(&file, &path, len + 1),
                    None,
                    "a file shorter than said"
                );
            }
        }
        let taken = dir.path().join("f1");
        if taken.exists() {
            assert_eq!(
                write_new(&taken, &[b"again"]).unwrap_err().kind(),
                io::ErrorKind::AlreadyExists,
                "a new file only"
            );
        }
    }
}
