//! A differential tester of the namespace under directory leases: one seeded sequence of
//! namespace operations runs in a directory of a Meridian mount, which leases the
//! directories it makes and answers most of the sequence alone (creates, mkdir, rmdir,
//! unlink, symlinks, hard links, renames of files and directories), and in a directory on
//! the local disk. Every step's outcome (its errno, or what an lstat, a listing or a
//! readlink returns) must be the local disk's; now and then the kernel's dentries are
//! dropped, and at the end the whole tree must be the local disk's as this mount sees it
//! and as another mount sees it (which recalls every lease, so the servers hold it all).
//!
//! A failure prints the seed and the last steps. Replay with
//! `NSDIFF_SEEDS=<seed> NSDIFF_OPS=<count> cargo test --test namespace_differential`.

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Result, bail};
use common::{Region, Rng};

/// Names a path is made of: few, so that steps keep meeting what earlier ones made.
const NAMES: [&str; 4] = ["a", "b", "c", "d"];

/// Paths made of [`NAMES`].
trait Paths {
    fn sibling(&mut self, path: &str) -> String;
    fn path(&mut self) -> String;
}

impl Paths for Rng {
    /// Another name in `path`'s directory.
    fn sibling(&mut self, path: &str) -> String {
        let name = NAMES[self.below(NAMES.len() as u64) as usize];
        match path.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/{name}"),
            None => name.to_string(),
        }
    }

    /// A relative path of one to three names.
    fn path(&mut self) -> String {
        let depth = 1 + self.below(3);
        (0..depth)
            .map(|_| NAMES[self.below(NAMES.len() as u64) as usize])
            .collect::<Vec<_>>()
            .join("/")
    }
}

#[derive(Debug, Clone)]
enum Step {
    Mkdir(String),
    Rmdir(String),
    /// Opens with O_CREAT (following a symlink), writes `len` bytes, closes.
    Write(String, u8),
    Unlink(String),
    Rename(String, String),
    /// A symlink to a name in its own directory (never out of the tree).
    Symlink(&'static str, String),
    Link(String, String),
    Lstat(String),
    List(String),
    Readlink(String),
    /// The kernel forgets its dentries and inodes (the mount's own answers stay).
    DropDentries,
}

fn next_step(rng: &mut Rng) -> Step {
    match rng.below(100) {
        0..=14 => Step::Mkdir(rng.path()),
        15..=21 => Step::Rmdir(rng.path()),
        22..=36 => Step::Write(rng.path(), rng.below(64) as u8),
        37..=45 => Step::Unlink(rng.path()),
        // Mostly within a directory (kept under its lease here); a directory moved
        // elsewhere gives leases back, after which the servers answer.
        46..=56 => {
            let from = rng.path();
            Step::Rename(from.clone(), rng.sibling(&from))
        }
        57..=59 => Step::Rename(rng.path(), rng.path()),
        60..=65 => Step::Symlink(NAMES[rng.below(4) as usize], rng.path()),
        66..=71 => Step::Link(rng.path(), rng.path()),
        // The top directory too: its links count what the steps made in it.
        72..=75 => Step::Lstat(".".into()),
        76..=83 => Step::Lstat(rng.path()),
        84..=93 => Step::List(rng.path()),
        94..=97 => Step::Readlink(rng.path()),
        _ => Step::DropDentries,
    }
}

fn outcome<T>(r: std::io::Result<T>, ok: impl FnOnce(T) -> String) -> String {
    match r {
        Ok(v) => ok(v),
        Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(-1)),
    }
}

/// What an lstat shows that both sides must agree on (not a directory's size, which is
/// the file system's own, nor times).
fn shown(m: &fs::Metadata) -> String {
    let t = m.file_type();
    if t.is_dir() {
        format!("dir, {} links", m.nlink())
    } else if t.is_symlink() {
        format!("symlink of {} bytes", m.len())
    } else {
        format!("file of {} bytes, {} links", m.len(), m.nlink())
    }
}

fn run(root: &Path, step: &Step) -> String {
    let p = |s: &str| root.join(s);
    match step {
        Step::Mkdir(a) => outcome(fs::create_dir(p(a)), |_| "ok".into()),
        Step::Rmdir(a) => outcome(fs::remove_dir(p(a)), |_| "ok".into()),
        Step::Write(a, len) => outcome(fs::write(p(a), vec![*len; usize::from(*len)]), |_| {
            "ok".into()
        }),
        Step::Unlink(a) => outcome(fs::remove_file(p(a)), |_| "ok".into()),
        Step::Rename(a, b) => outcome(fs::rename(p(a), p(b)), |_| "ok".into()),
        Step::Symlink(target, a) => {
            outcome(std::os::unix::fs::symlink(target, p(a)), |_| "ok".into())
        }
        Step::Link(a, b) => outcome(fs::hard_link(p(a), p(b)), |_| "ok".into()),
        Step::Lstat(a) => outcome(fs::symlink_metadata(p(a)), |m| shown(&m)),
        Step::List(a) => outcome(listing(&p(a)), |names| names.join(" ")),
        Step::Readlink(a) => outcome(fs::read_link(p(a)), |t| t.display().to_string()),
        Step::DropDentries => outcome(fs::write("/proc/sys/vm/drop_caches", "2"), |_| "ok".into()),
    }
}

fn listing(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = fs::read_dir(dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<Vec<_>>>()?;
    names.sort();
    Ok(names)
}

/// The whole tree under `root`: every path with what an lstat shows, a file's bytes, a
/// symlink's target.
fn tree(root: &Path) -> Result<BTreeMap<String, String>> {
    fn walk(root: &Path, rel: &str, out: &mut BTreeMap<String, String>) -> Result<()> {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        for name in listing(&dir)? {
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let path = root.join(&rel);
            let m = fs::symlink_metadata(&path)?;
            let mut seen = shown(&m);
            if m.file_type().is_symlink() {
                seen += &format!(" -> {}", fs::read_link(&path)?.display());
            } else if m.is_file() {
                let bytes = fs::read(&path)?;
                seen += &format!(", {:?}", bytes.first());
            }
            out.insert(rel.clone(), seen);
            if m.is_dir() {
                walk(root, &rel, out)?;
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    out.insert(".".into(), shown(&fs::symlink_metadata(root)?));
    walk(root, "", &mut out)?;
    Ok(out)
}

fn same_tree(
    what: &str,
    got: &BTreeMap<String, String>,
    want: &BTreeMap<String, String>,
) -> Result<()> {
    if got != want {
        let mut diff = Vec::new();
        for (k, v) in want {
            if got.get(k) != Some(v) {
                diff.push(format!("  {k}: {:?}, the local disk has {v:?}", got.get(k)));
            }
        }
        for (k, v) in got {
            if !want.contains_key(k) {
                diff.push(format!("  {k}: {v:?}, absent on the local disk"));
            }
        }
        bail!("{what} differs from the local disk:\n{}", diff.join("\n"));
    }
    Ok(())
}

fn run_seed(ours: &Path, elsewhere: &Path, local: &Path, seed: u64, ops: u64) -> Result<()> {
    fs::create_dir(ours)?;
    fs::create_dir(local)?;
    let mut rng = Rng(seed);
    let mut last: VecDeque<(u64, Step, String)> = VecDeque::new();
    for i in 0..ops {
        let step = next_step(&mut rng);
        let want = run(local, &step);
        let got = run(ours, &step);
        last.push_back((i, step.clone(), want.clone()));
        if last.len() > 16 {
            last.pop_front();
        }
        if got != want {
            bail!(
                "seed {seed}, step {i}: {step:?} gave {got:?}, the local disk {want:?}\nlast steps:\n{}\nreplay: NSDIFF_SEEDS={seed} NSDIFF_OPS={}",
                last.iter()
                    .map(|(n, s, w)| format!("  {n}: {s:?} -> {w}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
                i + 1
            );
        }
    }
    let want = tree(local)?;
    same_tree(&format!("seed {seed}: the tree here"), &tree(ours)?, &want)?;
    same_tree(
        &format!("seed {seed}: the tree another mount sees"),
        &tree(elsewhere)?,
        &want,
    )
}

/// Steps per seed: 300 unless NSDIFF_OPS says otherwise (a lease given back is not asked
/// for again for a while: each seed starts in a directory made, and leased, afresh).
fn ops() -> u64 {
    std::env::var("NSDIFF_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300)
}

fn run_seeds(seeds: &[u64]) -> Result<()> {
    let seeds: Vec<u64> = match std::env::var("NSDIFF_SEEDS") {
        Ok(s) => s.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) => seeds.to_vec(),
    };
    let region = Region::start()?;
    let (here, there) = (region.mount("here")?, region.mount("there")?);
    let local = tempfile::tempdir()?;
    for seed in seeds {
        let name = format!("ns-{seed}");
        let start = std::time::Instant::now();
        if let Err(e) = run_seed(
            &here.path.join(&name),
            &there.path.join(&name),
            &local.path().join(&name),
            seed,
            ops(),
        ) {
            bail!("{e:#}\nmount log:\n{}", common::log_tail(&here.log, 30));
        }
        eprintln!("seed {seed}: {} steps in {:?}", ops(), start.elapsed());
    }
    Ok(())
}

#[test]
fn random_namespace_operations_match_the_local_disk_seeds_1_to_10() -> Result<()> {
    run_seeds(&(1..=10).collect::<Vec<_>>())
}

#[test]
fn random_namespace_operations_match_the_local_disk_seeds_11_to_20() -> Result<()> {
    run_seeds(&(11..=20).collect::<Vec<_>>())
}
