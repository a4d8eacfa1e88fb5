//! Mounts that outlive their serving process (docs/adr/0008): `meridian mount` is a
//! supervisor holding the FUSE connection and a child serving it (mounting through
//! fusermount3 when not root). The child is killed with -9, or replaced by `meridian
//! mount --takeover`, while one program holds a file open for writing and another
//! iterates a large directory: both carry on without EIO or ENOTCONN, and the file's
//! content is intact.

mod common;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use common::{MERIDIAN, Region, random_bytes, wait_for};

/// The pids of the processes serving the mount at `mnt` (not its supervisor).
fn serving_pids(mnt: &Path) -> Vec<i32> {
    let want = mnt.as_os_str().as_encoded_bytes().to_vec();
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| {
                    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                        let args: Vec<&[u8]> = c.split(|&b| b == 0).collect();
                        args.contains(&&b"--serve-fd"[..]) && args.contains(&want.as_slice())
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Writes numbered lines to an open file until stopped, counting them; any error stops
/// it and is kept.
struct Writer {
    stop: Arc<AtomicBool>,
    lines: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<(File, Option<std::io::Error>)>,
}

impl Writer {
    fn start(mut f: File) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let lines = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), lines.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let i = n.load(Ordering::Relaxed);
                if let Err(e) = f.write_all(format!("{i:010}\n").as_bytes()) {
                    return (f, Some(e));
                }
                n.store(i + 1, Ordering::Relaxed);
            }
            (f, None)
        });
        Writer {
            stop,
            lines,
            thread,
        }
    }

    /// Waits until `more` lines beyond now are written (the file is being served).
    fn wait_progress(&self, more: u64) -> Result<()> {
        let from = self.lines.load(Ordering::Relaxed);
        wait_for(
            Duration::from_secs(60),
            "the writer to make progress",
            || (self.lines.load(Ordering::Relaxed) >= from + more).then_some(()),
        )
    }

    fn finish(self) -> Result<(File, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        let (f, err) = self.thread.join().expect("writer thread");
        if let Some(e) = err {
            anyhow::bail!("the writer failed: {e} ({:?})", e.raw_os_error());
        }
        Ok((f, self.lines.load(Ordering::Relaxed)))
    }
}

fn expected_lines(n: u64) -> Vec<u8> {
    (0..n)
        .flat_map(|i| format!("{i:010}\n").into_bytes())
        .collect()
}

/// Makes `dir` with `n` empty files.
fn big_dir(dir: &Path, n: usize) -> Result<()> {
    fs::create_dir(dir)?;
    for i in 0..n {
        File::create(dir.join(format!("entry{i:05}")))?;
    }
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// An iteration of `dir` with its first `n` names read.
fn start_listing(dir: &Path, n: usize) -> Result<(fs::ReadDir, Vec<String>)> {
    let mut it = fs::read_dir(dir)?;
    let mut names = Vec::new();
    for _ in 0..n {
        names.push(
            it.next()
                .context("entry")??
                .file_name()
                .into_string()
                .unwrap(),
        );
    }
    Ok((it, names))
}

/// The rest of a directory iteration, every name checked.
fn drain(it: fs::ReadDir, mut names: Vec<String>) -> Result<Vec<String>> {
    for e in it {
        names.push(
            e.context("readdir after the switch")?
                .file_name()
                .into_string()
                .unwrap(),
        );
    }
    names.sort();
    names.dedup();
    Ok(names)
}

#[test]
fn a_killed_serving_process_is_replaced_and_open_files_and_listings_carry_on() -> Result<()> {
    let region = Region::start()?;
    let mnt = region.mount("mnt")?;
    let first = serving_pids(&mnt.path);
    anyhow::ensure!(first.len() == 1, "serving processes: {first:?}");

    big_dir(&mnt.path.join("big"), 1500)?;
    let head = random_bytes(1, 3 << 20);
    let mut f = File::create(mnt.path.join("held.bin"))?;
    f.write_all(&head)?;
    f.sync_all()?;
    let writer = Writer::start(f);
    writer.wait_progress(100)?;
    let (it, names) = start_listing(&mnt.path.join("big"), 200)?;

    // SAFETY: kill(2) of the serving process this test's mount started.
    unsafe { libc::kill(first[0], libc::SIGKILL) };
    wait_for(Duration::from_secs(30), "another serving process", || {
        let now = serving_pids(&mnt.path);
        (now.len() == 1 && now[0] != first[0]).then_some(())
    })?;
    // Lines from here on are written through the new process.
    writer.wait_progress(10)?;
    let served_again = writer.lines.load(Ordering::Relaxed);

    // Both programs carry on: the writer through its open file, the reader through its
    // open directory handle.
    writer.wait_progress(1000)?;
    let names = drain(it, names)?;
    assert_eq!(names.len(), 1500, "{} distinct names", names.len());
    let (f, lines) = writer.finish()?;
    // The handle's next durability point says that what the dead process held may be
    // lost (as Linux reports a lost writeback), once; the next one commits.
    let e = f.sync_all().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    f.sync_all()?;
    drop(f);
    let mut got = Vec::new();
    File::open(mnt.path.join("held.bin"))?.read_to_end(&mut got)?;
    assert_eq!(got.len(), head.len() + expected_lines(lines).len());
    assert!(got[..head.len()] == head[..], "the fsync'd head changed");
    // Lines the killed process had acknowledged but not yet committed are what a crash
    // costs (zeros: the size was the kernel's); nothing is ever garbage, and every line
    // written through the new process is there.
    let want = expected_lines(lines);
    let (mut lost, mut first_lost) = (0, None);
    for (i, (g, w)) in got[head.len()..]
        .chunks(11)
        .zip(want.chunks(11))
        .enumerate()
    {
        if g != w {
            assert!(
                g.iter().all(|&b| b == 0),
                "line {i} is {g:?}, expected {w:?}"
            );
            assert!(
                (i as u64) < served_again,
                "line {i} was written after the restart"
            );
            lost += 1;
            first_lost.get_or_insert(i);
        }
    }
    println!("{lost} of {lines} lines lost with the killed process (from line {first_lost:?})");
    // New files and the other mount's view work as before.
    fs::write(mnt.path.join("after.txt"), b"after")?;
    assert_eq!(fs::read(mnt.path.join("after.txt"))?, b"after");
    mnt.unmount()?;
    Ok(())
}

#[test]
fn a_takeover_by_a_new_process_keeps_open_files_and_listings() -> Result<()> {
    let region = Region::start()?;
    let mnt = region.mount("mnt")?;
    let first = serving_pids(&mnt.path);
    anyhow::ensure!(first.len() == 1, "serving processes: {first:?}");
    big_dir(&mnt.path.join("big"), 1500)?;
    let writer = Writer::start(File::create(mnt.path.join("held.txt"))?);
    writer.wait_progress(100)?;
    let (it, names) = start_listing(&mnt.path.join("big"), 300)?;

    let out = std::process::Command::new(MERIDIAN)
        .args(["mount", "--takeover"])
        .arg(&mnt.path)
        .output()?;
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("taken over (generation 2"), "{said}");
    let now = serving_pids(&mnt.path);
    assert!(now.len() == 1 && now[0] != first[0], "{first:?} -> {now:?}");

    writer.wait_progress(1000)?;
    let names = drain(it, names)?;
    assert_eq!(names.len(), 1500);
    let (f, lines) = writer.finish()?;
    f.sync_all()?;
    drop(f);
    assert!(fs::read(mnt.path.join("held.txt"))? == expected_lines(lines));

    // A takeover of something that is not a supervised mount says so.
    let out = std::process::Command::new(MERIDIAN)
        .args(["mount", "--takeover"])
        .arg(region.meta.dir.path())
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no supervised mount"));
    mnt.unmount()?;
    Ok(())
}

#[test]
fn a_supervisor_that_cannot_start_a_server_still_stops_when_asked() -> Result<()> {
    let mut region = Region::start()?;
    let mnt = region.mount("mnt")?;
    // The kernel lists the mount before its first serving process is ready, and one
    // killed then fails the mount at start (as an unsupervised one would): a file written
    // through it is answered only once the supervisor has handed the mount over.
    fs::write(mnt.path.join("served"), b"yes")?;
    let first = serving_pids(&mnt.path);
    anyhow::ensure!(first.len() == 1, "serving processes: {first:?}");
    // With the metaservers gone no serving process can start: the supervisor keeps
    // trying (programs on the mount wait), and must still obey SIGTERM.
    for m in region.meta.nodes.iter_mut() {
        m.kill();
    }
    // SAFETY: kill(2) of the serving process this test's mount started.
    unsafe { libc::kill(first[0], libc::SIGKILL) };
    // The supervisor says it is starting another. (Its serving processes may not live long
    // enough to be seen: the metaservers' ports, free now, can be another test's, whose
    // region has no such volume, and a process then fails at once.)
    let restarting = wait_for(Duration::from_secs(60), "a restart under way", || {
        fs::read_to_string(&mnt.log)
            .ok()?
            .contains("serving process died: starting another")
            .then_some(())
    });
    if let Err(e) = restarting {
        let log = fs::read_to_string(&mnt.log).unwrap_or_default();
        anyhow::bail!("{e}; the mount's log:\n{log}");
    }
    mnt.unmount()?;
    Ok(())
}

/// Runs `sh -c script` as user `uid` (the test runs as root; a user's mount is reachable
/// only by that user without allow_other), returning its output.
fn as_user(uid: u32, script: &str) -> Result<String> {
    let out = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "--",
            "sh",
            "-c",
            script,
        ])
        .output()
        .context("setpriv (util-linux)")?;
    anyhow::ensure!(
        out.status.success(),
        "as uid {uid}: {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn a_users_mount_is_supervised_too_through_fusermount3() -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::fs::{PermissionsExt, chown};
    const NOBODY: u32 = 65534;
    anyhow::ensure!(
        fs::metadata("/dev/fuse")?.mode() & 0o006 == 0o006,
        "/dev/fuse is not open to users (mode {:o}): scripts/test.sh gives it its usual mode 0666",
        fs::metadata("/dev/fuse")?.mode() & 0o777
    );
    let region = Region::start()?;
    // A folder of the user's in the volume, made through root's mount.
    {
        let admin = region.mount("root-mnt")?;
        fs::create_dir(admin.path.join("home"))?;
        chown(admin.path.join("home"), Some(NOBODY), Some(NOBODY))?;
        // Durable before the mount is killed (a change answered under the mount's lease
        // of the folder is not, until a sync).
        fs::File::open(admin.path.join("home"))?.sync_all()?;
    }
    // A folder the user may reach, and a mountpoint of the user's.
    let home = region.meta.dir.path().join("user");
    fs::create_dir(&home)?;
    fs::set_permissions(region.meta.dir.path(), fs::Permissions::from_mode(0o755))?;
    chown(&home, Some(NOBODY), Some(NOBODY))?;
    let mnt = home.join("mnt");
    fs::create_dir(&mnt)?;
    chown(&mnt, Some(NOBODY), Some(NOBODY))?;
    let log = fs::File::create(home.join("mount.log"))?;
    let mut supervisor = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--",
            MERIDIAN,
            "mount",
            "--meta",
            &region.meta_addrs(),
            "--volume",
            "default",
        ])
        .arg(&mnt)
        .env("MERIDIAN_LOG", "info")
        .env_remove("XDG_RUNTIME_DIR")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let result = (|| -> Result<()> {
        wait_for(Duration::from_secs(30), "the user's mount", || {
            (common::is_mounted(&mnt) && !serving_pids(&mnt).is_empty()).then_some(())
        })?;
        let m = format!("{}/home", mnt.display());
        as_user(NOBODY, &format!("printf 'before' > {m}/f && mkdir {m}/d"))?;
        // Its serving process dies; the supervisor (the user's own) starts another.
        let first = serving_pids(&mnt);
        for pid in &first {
            // SAFETY: kill(2) of a process this test found by its command line.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        wait_for(Duration::from_secs(30), "another serving process", || {
            let now = serving_pids(&mnt);
            (!now.is_empty() && now.iter().all(|p| !first.contains(p))).then_some(())
        })?;
        let seen = as_user(
            NOBODY,
            &format!("cat {m}/f && printf ' after' >> {m}/f && cat {m}/f"),
        )?;
        anyhow::ensure!(seen == "beforebefore after", "{seen:?}");
        anyhow::ensure!(as_user(NOBODY, &format!("ls {m}"))?.contains('d'));
        Ok(())
    })();
    // Asked to stop, the supervisor unmounts through fusermount3.
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(supervisor.id() as i32, libc::SIGTERM) };
    let _ = supervisor.wait();
    let log = fs::read_to_string(home.join("mount.log")).unwrap_or_default();
    result.with_context(|| format!("the mount's log:\n{log}"))?;
    anyhow::ensure!(
        !common::is_mounted(&mnt),
        "still mounted after SIGTERM:\n{log}"
    );
    Ok(())
}
