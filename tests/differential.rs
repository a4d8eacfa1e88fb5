//! A differential tester of the data path: one seeded sequence of operations runs against
//! a file on a Meridian mount and a file on the local disk, and after every step the two
//! must have the same size and the same bytes. Operations: writes, reads, truncates up and
//! down, every fallocate mode, copy_file_range inside the file, SEEK_DATA/SEEK_HOLE,
//! fsync, dropping the file's cached pages, close and reopen, and a read through a second
//! mount after a close (at once: an open revalidates, no attribute cache is waited out),
//! and reads and writes through a shared mapping with msync, including a write into space
//! just added by ftruncate and a read of the last page past a new end after MS_INVALIDATE.
//!
//! A failure prints the seed and the last operations. Replay one seed with
//! `DIFF_SEEDS=<seed> DIFF_OPS=<count> cargo test --test differential seed_1`; run more
//! with `DIFF_SEEDS=5,6,7 DIFF_OPS=1000000` (`DIFF_TRACE=1` prints every step).

mod common;

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use common::{Mount, Region, Rng};

/// Largest file the sequence makes (small enough to compare whole after every step).
const MAX_SIZE: u64 = 256 << 10;

/// The data path's offsets and lengths.
trait Ranges {
    /// An offset, mostly inside the file, sometimes around its end or at block edges.
    fn offset(&mut self, size: u64) -> u64;
    /// A length: a few bytes, up to a page, or up to 64 KiB.
    fn len(&mut self) -> u64;
}

impl Ranges for Rng {
    fn offset(&mut self, size: u64) -> u64 {
        match self.below(4) {
            0 => size,
            1 => self.below(MAX_SIZE / 4096 + 1) * 4096,
            _ => self.below(size + 4096).min(MAX_SIZE),
        }
    }

    fn len(&mut self) -> u64 {
        match self.below(3) {
            0 => 1 + self.below(16),
            1 => 1 + self.below(4096),
            _ => 1 + self.below(64 << 10),
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    Write {
        offset: u64,
        len: u64,
        seed: u64,
    },
    Read {
        offset: u64,
        len: u64,
    },
    Truncate {
        size: u64,
    },
    Fallocate {
        mode: i32,
        offset: u64,
        len: u64,
    },
    Copy {
        from: u64,
        to: u64,
        len: u64,
    },
    SeekData {
        offset: u64,
    },
    SeekHole {
        offset: u64,
    },
    MmapWrite {
        offset: u64,
        len: u64,
        seed: u64,
    },
    MmapRead {
        offset: u64,
        len: u64,
    },
    /// ftruncate up to `size`, then a write through a shared mapping into the new space.
    GrowMapped {
        size: u64,
        offset: u64,
        len: u64,
        seed: u64,
    },
    /// ftruncate down to `size`, then msync(MS_INVALIDATE) and a mapped read of the rest of
    /// the last page (zeros on any filesystem).
    ShrinkMapped {
        size: u64,
    },
    Fsync,
    DropCache,
    Reopen,
    ReadElsewhere,
}

fn next_step(rng: &mut Rng, size: u64) -> Step {
    let modes = [
        0,
        libc::FALLOC_FL_KEEP_SIZE,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        libc::FALLOC_FL_ZERO_RANGE,
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
    ];
    if rng.below(6) == 0 && size > 0 {
        return match rng.below(6) {
            0 if size < MAX_SIZE => {
                let grown = (size + 1 + rng.below(64 << 10)).min(MAX_SIZE);
                let offset = size + rng.below(grown - size);
                Step::GrowMapped {
                    size: grown,
                    offset,
                    len: rng.len().min(grown - offset),
                    seed: rng.next(),
                }
            }
            1 => Step::ShrinkMapped {
                size: rng.below(size),
            },
            choice => {
                let offset = rng.below(size);
                let len = rng.len().min(size - offset).max(1);
                if choice % 2 == 0 {
                    Step::MmapWrite {
                        offset,
                        len,
                        seed: rng.next(),
                    }
                } else {
                    Step::MmapRead { offset, len }
                }
            }
        };
    }
    match rng.below(20) {
        0..=5 => {
            let offset = rng.offset(size);
            let len = rng.len().min(MAX_SIZE - offset.min(MAX_SIZE)).max(1);
            Step::Write {
                offset,
                len,
                seed: rng.next(),
            }
        }
        6..=7 => Step::Read {
            offset: rng.offset(size),
            len: rng.len(),
        },
        8..=9 => Step::Truncate {
            size: rng.below(MAX_SIZE),
        },
        10..=12 => {
            let offset = rng.offset(size);
            Step::Fallocate {
                mode: modes[rng.below(modes.len() as u64) as usize],
                offset,
                len: rng.len().min(MAX_SIZE - offset.min(MAX_SIZE)).max(1),
            }
        }
        13..=14 => Step::Copy {
            from: rng.offset(size),
            to: rng.offset(size),
            len: rng.len(),
        },
        15 => Step::SeekData {
            offset: rng.offset(size),
        },
        16 => Step::SeekHole {
            offset: rng.offset(size),
        },
        17 => Step::Fsync,
        18 => match rng.below(2) {
            0 => Step::DropCache,
            _ => Step::Reopen,
        },
        _ => Step::ReadElsewhere,
    }
}

fn errno(r: i64) -> std::result::Result<u64, i32> {
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1))
    } else {
        Ok(r as u64)
    }
}

const PAGE: u64 = 4096;

/// One side: a file and how it was opened.
struct Side {
    path: PathBuf,
    file: File,
}

impl Side {
    fn open(path: &Path) -> Result<Side> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(Side {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Writes `len` bytes of `seed` at `offset` through a shared mapping, then msync.
    fn map_write(&self, offset: u64, len: u64, seed: u64) -> Result<String> {
        let size = self.file.metadata()?.len();
        anyhow::ensure!(offset + len <= size, "mapping past the end");
        common::with_map(&self.file, (offset + len) as usize, |region| {
            region[offset as usize..].copy_from_slice(&common::random_bytes(seed, len as usize));
            common::msync(region, libc::MS_SYNC)?;
            Ok(String::new())
        })?
    }
}

impl Side {
    fn fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    /// Runs `step`; the outcome (a number, bytes, or an errno) is compared between sides.
    fn run(&mut self, step: &Step, elsewhere: &Path) -> Result<String> {
        let fd = self.fd();
        // SAFETY (every libc call below): a valid descriptor, buffers of the given length.
        Ok(match step {
            Step::Write { offset, len, seed } => {
                let data = common::random_bytes(*seed, *len as usize);
                self.file.write_all_at(&data, *offset)?;
                String::new()
            }
            Step::Read { offset, len } => {
                let mut buf = vec![0u8; *len as usize];
                let n = self.file.read_at(&mut buf, *offset)?;
                format!("{:?}", blake3::hash(&buf[..n]))
            }
            Step::Truncate { size } => {
                self.file.set_len(*size)?;
                String::new()
            }
            Step::Fallocate { mode, offset, len } => {
                let r = unsafe { libc::fallocate(fd, *mode, *offset as i64, *len as i64) };
                format!("{:?}", errno(r as i64))
            }
            Step::Copy { from, to, len } => {
                let (mut a, mut b) = (*from as i64, *to as i64);
                let r = unsafe { libc::copy_file_range(fd, &mut a, fd, &mut b, *len as usize, 0) };
                format!("{:?}", errno(r as i64))
            }
            Step::SeekData { offset } | Step::SeekHole { offset } => {
                // Filesystems may report holes coarsely; what must hold is checked below.
                let whence = if matches!(step, Step::SeekData { .. }) {
                    libc::SEEK_DATA
                } else {
                    libc::SEEK_HOLE
                };
                let r = unsafe { libc::lseek(fd, *offset as i64, whence) };
                match errno(r) {
                    Ok(at) => format!("at {at}"),
                    Err(e) => format!("errno {e}"),
                }
            }
            Step::MmapWrite { offset, len, seed } => self.map_write(*offset, *len, *seed)?,
            Step::MmapRead { offset, len } => {
                let size = self.file.metadata()?.len();
                anyhow::ensure!(offset + len <= size, "mapping past the end");
                common::with_map(&self.file, (offset + len) as usize, |region| {
                    anyhow::Ok(format!("{:?}", blake3::hash(&region[*offset as usize..])))
                })??
            }
            Step::GrowMapped {
                size,
                offset,
                len,
                seed,
            } => {
                self.file.set_len(*size)?;
                self.map_write(*offset, *len, *seed)?
            }
            Step::ShrinkMapped { size } => {
                self.file.set_len(*size)?;
                let page_end = size.div_ceil(PAGE) * PAGE;
                if page_end == *size {
                    String::new()
                } else {
                    common::with_map(&self.file, page_end as usize, |region| {
                        common::msync(region, libc::MS_INVALIDATE)?;
                        anyhow::Ok(format!("{:?}", &region[*size as usize..].iter().max()))
                    })??
                }
            }
            Step::Fsync => {
                self.file.sync_all()?;
                String::new()
            }
            Step::DropCache => {
                unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) };
                String::new()
            }
            Step::Reopen => {
                *self = Side::open(&self.path)?;
                String::new()
            }
            Step::ReadElsewhere => {
                // Close, then read the whole file where another client sees it: its open
                // revalidates, whatever that client's kernel cached before.
                let path = self.path.clone();
                drop(std::mem::replace(&mut self.file, File::open("/dev/null")?));
                let data = std::fs::read(elsewhere)?;
                *self = Side::open(&path)?;
                format!("{:?} {}", blake3::hash(&data), data.len())
            }
        })
    }

    fn contents(&self) -> Result<Vec<u8>> {
        let size = self.file.metadata()?.len();
        let mut buf = vec![0u8; size as usize];
        let mut at = 0;
        while at < buf.len() {
            let n = self.file.read_at(&mut buf[at..], at as u64)?;
            if n == 0 {
                break;
            }
            at += n;
        }
        buf.truncate(at);
        Ok(buf)
    }
}

/// What a SEEK_DATA / SEEK_HOLE answer must satisfy on any filesystem, given the bytes.
fn check_seek(step: &Step, outcome: &str, bytes: &[u8]) -> Result<()> {
    let size = bytes.len() as u64;
    let (offset, data) = match step {
        Step::SeekData { offset } => (*offset, true),
        Step::SeekHole { offset } => (*offset, false),
        _ => return Ok(()),
    };
    if offset >= size {
        if outcome != format!("errno {}", libc::ENXIO) {
            bail!("{step:?} at or past the end ({size}) gave {outcome}, not ENXIO");
        }
        return Ok(());
    }
    let Some(at) = outcome
        .strip_prefix("at ")
        .and_then(|a| a.parse::<u64>().ok())
    else {
        // SEEK_DATA may say ENXIO when only zeros (holes) follow.
        if data && bytes[offset as usize..].iter().all(|b| *b == 0) {
            return Ok(());
        }
        bail!("{step:?} gave {outcome} with data after it");
    };
    if at < offset || at > size {
        bail!("{step:?} gave {at}, outside [{offset}, {size}]");
    }
    if data && bytes[offset as usize..at as usize].iter().any(|b| *b != 0) {
        bail!("{step:?} skipped data: it gave {at}");
    }
    if !data && at < size && bytes[at as usize] != 0 {
        bail!("{step:?} gave {at}, where there is data");
    }
    Ok(())
}

/// Runs `ops` steps of `seed` on both sides; fails with the seed and the last steps.
fn run_seed(
    mnt: &Mount,
    other: &Mount,
    local: &Path,
    seed: u64,
    ops: u64,
    server_size: &dyn Fn(&Path) -> String,
) -> Result<()> {
    let name = format!("diff-{seed}");
    let mut ours = Side::open(&mnt.path.join(&name))?;
    ours.file.set_len(0)?;
    let mut theirs = Side::open(&local.join(&name))?;
    theirs.file.set_len(0)?;
    let elsewhere = other.path.join(&name);
    let mut rng = Rng(seed);
    let mut last: VecDeque<(u64, Step)> = VecDeque::new();
    for i in 0..ops {
        let size = theirs.file.metadata()?.len();
        let step = next_step(&mut rng, size);
        last.push_back((i, step.clone()));
        if last.len() > 12 {
            last.pop_front();
        }
        if ops >= 100_000 && i % 10_000 == 0 {
            eprintln!("seed {seed}: {i} operations");
        }
        let fail = |why: String| {
            anyhow::anyhow!(
                "seed {seed}, step {i}: {why}\nlast steps:\n{}\nreplay: DIFF_SEEDS={seed} DIFF_OPS={}",
                last.iter()
                    .map(|(n, s)| format!("  {n}: {s:?}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                i + 1
            )
        };
        let want = theirs
            .run(&step, &local.join(&name))
            .map_err(|e| fail(format!("local disk: {e}")))?;
        let got = ours
            .run(&step, &elsewhere)
            .map_err(|e| fail(format!("meridian: {e}")))?;
        let bytes = theirs.contents()?;
        if matches!(step, Step::SeekData { .. } | Step::SeekHole { .. }) {
            check_seek(&step, &got, &bytes).map_err(|e| fail(e.to_string()))?;
        } else if got != want {
            return Err(fail(format!(
                "outcome {got:?}, the local disk gave {want:?}"
            )));
        }
        let size = ours.file.metadata()?.len();
        if std::env::var("DIFF_TRACE").is_ok() {
            eprintln!(
                "{i}: {step:?} -> {got:?} / {want:?}; size {size} / {} (servers: {})",
                bytes.len(),
                server_size(&mnt.path.join(&name))
            );
        }
        if size != bytes.len() as u64 {
            return Err(fail(format!(
                "size {size}, the local disk has {} (the servers have {}; the size again: {})",
                bytes.len(),
                server_size(&mnt.path.join(&name)),
                ours.file.metadata()?.len()
            )));
        }
        let mine = ours.contents()?;
        if mine != bytes {
            let at = mine.iter().zip(&bytes).position(|(a, b)| a != b);
            return Err(fail(format!(
                "bytes differ (first at {at:?}; lengths {} and {})",
                mine.len(),
                bytes.len()
            )));
        }
    }
    Ok(())
}

/// Operations per seed: 5,000 unless DIFF_OPS says otherwise.
fn ops() -> u64 {
    std::env::var("DIFF_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5_000)
}

/// Runs `seeds` (or DIFF_SEEDS, if set) on a fresh region.
fn run_seeds(seeds: &[u64]) -> Result<()> {
    let seeds: Vec<u64> = match std::env::var("DIFF_SEEDS") {
        Ok(s) => s.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) => seeds.to_vec(),
    };
    let region = Region::start()?;
    let mnt = region.mount("mnt")?;
    let other = region.mount("mnt2")?;
    let local = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let meta = region.meta.client();
    let server_size = |p: &Path| -> String {
        use std::os::unix::fs::MetadataExt;
        let Ok(ino) = std::fs::metadata(p).map(|m| m.ino()) else {
            return "?".into();
        };
        let q = meridian_proto::ns::Query::GetAttr {
            ino: meridian_proto::InodeId(ino),
        };
        match rt.block_on(meta.query(&q, false)) {
            Ok(meridian_proto::ns::QueryReply::Attr(a)) => a.size.to_string(),
            other => format!("{other:?}"),
        }
    };
    for seed in seeds {
        let start = std::time::Instant::now();
        if let Err(e) = run_seed(&mnt, &other, local.path(), seed, ops(), &server_size) {
            bail!("{e:#}\nmount log:\n{}", common::log_tail(&mnt.log, 40));
        }
        eprintln!("seed {seed}: {} operations in {:?}", ops(), start.elapsed());
    }
    Ok(())
}

// Four seeds of 5,000 operations each, as four tests (they run two at a time).

#[test]
fn random_operations_match_the_local_disk_seed_1() -> Result<()> {
    run_seeds(&[1])
}

#[test]
fn random_operations_match_the_local_disk_seed_2() -> Result<()> {
    run_seeds(&[2])
}

#[test]
fn random_operations_match_the_local_disk_seed_3() -> Result<()> {
    run_seeds(&[3])
}

#[test]
fn random_operations_match_the_local_disk_seed_4() -> Result<()> {
    run_seeds(&[4])
}
