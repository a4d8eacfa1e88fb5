//! FUSE mounts of a test, and what checks a mounted tree.

use super::*;

/// Whether `path` is a mount point right now.
pub fn is_mounted(path: &Path) -> bool {
    let want = path.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
        })
        .unwrap_or(false)
}

/// A `meridian mount` process; unmounted (lazily, whatever state it is in) on drop.
pub struct Mount {
    pub path: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Mount {
    pub fn start(meta: &str, volume: &str, path: &Path) -> Result<Self> {
        Self::start_with(meta, volume, path, &[])
    }

    /// [`Mount::start`], with more `meridian mount` flags.
    pub fn start_with(meta: &str, volume: &str, path: &Path, flags: &[&str]) -> Result<Self> {
        fs::create_dir_all(path)?;
        let path = path.canonicalize()?;
        let log = path.with_extension("log");
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = Command::new(MERIDIAN)
            .args(["mount", "--meta", meta, "--volume", volume, "--allow-other"])
            .args(flags)
            .arg(&path)
            .env("MERIDIAN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        let mut m = Mount {
            path: path.clone(),
            log: log.clone(),
            child: Some(child),
        };
        // Up, or its process gone (a mount that failed is not waited for).
        let settled = wait_for(START_DEADLINE, "the mount", || {
            let exited = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            (exited.is_some() || is_mounted(&path)).then_some(())
        });
        if settled.is_err() || !is_mounted(&path) {
            let exited = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            bail!(
                "mount at {} did not come up (exit: {exited:?}):\n{}",
                path.display(),
                log_tail(&log, 30)
            );
        }
        Ok(m)
    }

    /// The mount's process (with `--no-supervisor`, the one serving the kernel).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// kill -9 of the mount's process (the mount stays, dead, until dropped).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Unmounts cleanly (SIGTERM) and waits for the process.
    pub fn unmount(mut self) -> Result<ExitStatus> {
        let mut c = self.child.take().context("not running")?;
        // SAFETY: kill(2) on our own child with a valid signal.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let status = wait_for(Duration::from_secs(20), "the mount to exit", || {
            c.try_wait().ok().flatten()
        });
        let status = match status {
            Ok(s) => s,
            Err(e) => {
                let _ = c.kill();
                return Err(e.context(log_tail(&self.log, 20)));
            }
        };
        anyhow::ensure!(!is_mounted(&self.path), "still mounted after exit");
        Ok(status)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if is_mounted(&self.path) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
            let _ = Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.path)
                .status();
        }
    }
}

/// Maps the first `len` bytes of `f` shared, runs `use_it` on them, unmaps.
pub fn with_map<T>(f: &fs::File, len: usize, use_it: impl FnOnce(&mut [u8]) -> T) -> Result<T> {
    // SAFETY: a valid descriptor; the mapping is used only inside this call.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(f),
            0,
        )
    };
    anyhow::ensure!(
        p != libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    let out = use_it(unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), len) });
    unsafe { libc::munmap(p, len) };
    Ok(out)
}

pub fn msync(region: &mut [u8], flags: i32) -> Result<()> {
    // SAFETY: a live mapping.
    let rc = unsafe { libc::msync(region.as_mut_ptr().cast(), region.len(), flags) };
    anyhow::ensure!(rc == 0, "msync: {}", std::io::Error::last_os_error());
    Ok(())
}

/// Every file and folder under `root`: its kind and permission bits, and for a file its
/// size and the blake3 of its content (a symlink: its target).
pub fn tree_listing(root: &Path) -> std::collections::BTreeMap<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                out.insert(rel, "unreadable".into());
                continue;
            };
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                out.insert(rel, format!("dir {mode:o}"));
                stack.push(path);
            } else if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).unwrap_or_default();
                out.insert(rel, format!("symlink {}", target.display()));
            } else {
                let hash = fs::read(&path)
                    .map(|b| meridian_proto::BlockId::of(&b).to_hex())
                    .unwrap_or_else(|e| format!("unreadable: {e}"));
                out.insert(rel, format!("file {mode:o} {} {hash}", meta.len()));
            }
        }
    }
    out
}

/// Waits until the trees under `a` and `b` are the same, every file readable; returns it.
pub fn wait_same_tree(
    a: &Path,
    b: &Path,
    deadline: Duration,
    what: &str,
) -> Result<std::collections::BTreeMap<String, String>> {
    let mut last = Default::default();
    wait_for(deadline, what, || {
        let (la, lb) = (tree_listing(a), tree_listing(b));
        let same = la == lb && !la.values().any(|v| v.contains("unreadable"));
        last = (la.clone(), lb);
        same.then_some(la)
    })
    .with_context(|| format!("one: {:#?}\nthe other: {:#?}", last.0, last.1))
}
