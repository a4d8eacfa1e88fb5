//! `meridian dev`: the one command a newcomer runs.

mod common;

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use common::{MERIDIAN, is_mounted, log_tail, wait_for};

struct Dev {
    child: Child,
    log: std::path::PathBuf,
    mnt: std::path::PathBuf,
}

impl Dev {
    fn start(data: &std::path::Path, run: u32) -> Result<Self> {
        Dev::start_with(data, run, &[], "mnt")
    }

    /// `meridian dev --data DATA ARGS…`, ready when it says so; the mount (or mount root)
    /// is DATA/`mnt`.
    fn start_with(data: &std::path::Path, run: u32, args: &[&str], mnt: &str) -> Result<Self> {
        let log = data.with_extension(format!("run{run}.log"));
        let out = fs::File::create(&log)?;
        fs::create_dir_all(data)?;
        let child = Command::new(MERIDIAN)
            .args(["dev", "--data"])
            .arg(data)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        let mnt = data.join(mnt);
        let mut dev = Dev { child, log, mnt };
        // Stop waiting as soon as dev exits: its own error says what went wrong.
        let mut exited = None;
        let ready = wait_for(Duration::from_secs(60), "meridian dev to mount", || {
            if let Ok(Some(status)) = dev.child.try_wait() {
                exited = Some(status);
                return Some(false);
            }
            fs::read_to_string(&dev.log)
                .ok()?
                .contains("Ctrl-C stops everything")
                .then_some(true)
        });
        match ready {
            Ok(true) => {}
            Ok(false) => anyhow::bail!(
                "meridian dev exited ({exited:?}):\n{}",
                log_tail(&dev.log, 30)
            ),
            Err(e) => {
                let _ = dev.child.kill();
                return Err(e.context(log_tail(&dev.log, 30)));
            }
        }
        Ok(dev)
    }

    fn interrupt(mut self) -> Result<()> {
        // SAFETY: kill(2) on our own child with a valid signal.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = wait_for(Duration::from_secs(60), "meridian dev to stop", || {
            self.child.try_wait().ok().flatten()
        })?;
        anyhow::ensure!(
            status.success(),
            "dev exited with {status}:\n{}",
            log_tail(&self.log, 20)
        );
        Ok(())
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: as above.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
            let _ = wait_for(Duration::from_secs(30), "dev to stop", || {
                self.child.try_wait().ok().flatten()
            });
            let _ = self.child.kill();
        }
        for m in [self.mnt.clone(), self.mnt.join("1"), self.mnt.join("2")] {
            if let Ok(m) = m.canonicalize()
                && is_mounted(&m)
            {
                let _ = Command::new("umount").arg("-l").arg(&m).status();
            }
        }
    }
}

#[test]
fn dev_starts_a_region_mounts_it_stops_cleanly_and_keeps_data_across_restarts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("dev");
    let dev = Dev::start(&data, 1)?;
    assert!(is_mounted(&dev.mnt.canonicalize()?), "mounted");
    let printed = fs::read_to_string(&dev.log)?;
    for role in [
        "meta     1",
        "meta     3",
        "chunk    1",
        "chunk    3",
        "mount",
    ] {
        assert!(
            printed.contains(role),
            "dev prints what it started ({role}):\n{printed}"
        );
    }
    fs::create_dir(dev.mnt.join("work"))?;
    fs::write(dev.mnt.join("work/notes.txt"), b"kept across restarts")?;
    let mnt = dev.mnt.canonicalize()?;
    dev.interrupt()?;
    assert!(!is_mounted(&mnt), "Ctrl-C unmounts");

    let again = Dev::start(&data, 2)?;
    assert!(fs::read_to_string(&again.log)?.contains("restarted, data kept"));
    assert_eq!(
        fs::read(again.mnt.join("work/notes.txt"))?,
        b"kept across restarts"
    );
    again.interrupt()?;
    Ok(())
}

#[test]
fn dev_runs_two_regions_through_a_fault_proxy_that_cuts_metadata_and_blocks() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("dev2");
    let views = data.join("views").display().to_string();
    let dev = Dev::start_with(&data, 1, &["--regions", "2", "--mount", &views], "views")?;
    let printed = fs::read_to_string(&dev.log)?;
    let control = printed
        .lines()
        .find_map(|l| l.strip_prefix("link 1-2: fault proxy control "))
        .and_then(|l| l.split_whitespace().next())
        .with_context(|| format!("dev prints the link's control address:\n{printed}"))?
        .to_string();
    let (one, two) = (dev.mnt.join("1"), dev.mnt.join("2"));
    assert!(is_mounted(&one.canonicalize()?) && is_mounted(&two.canonicalize()?));

    let first = common::random_bytes(7, 2 << 20);
    fs::write(one.join("first"), &first)?;
    wait_for(Duration::from_secs(30), "region 2 to show the file", || {
        (fs::read(two.join("first")).ok()? == first).then_some(())
    })?;

    // Cut: neither records nor blocks cross; both sides keep working.
    link(&control, "--cut")?;
    let during = common::random_bytes(8, 1 << 20);
    let during_id = meridian_proto::BlockId::of(&during).to_hex();
    fs::write(two.join("during"), &during)?;
    fs::write(one.join("also-during"), b"region 1 works too")?;
    std::thread::sleep(Duration::from_secs(2));
    assert!(!one.join("during").exists(), "the cut stops records");
    for server in 1..=3 {
        let files = common::block_files(&data.join(format!("region-1/chunk-{server}")));
        assert!(
            !files.iter().any(|f| f.starts_with(&during_id)),
            "the cut stops blocks too"
        );
    }

    // Heal: both arrive.
    link(&control, "--heal")?;
    wait_for(Duration::from_secs(60), "the regions to converge", || {
        (fs::read(one.join("during")).ok()? == during
            && fs::read(two.join("also-during")).ok()? == b"region 1 works too")
            .then_some(())
    })?;
    dev.interrupt()?;
    Ok(())
}

fn link(control: &str, flag: &str) -> Result<()> {
    let out = Command::new(MERIDIAN)
        .args(["admin", "link", "--proxy", control, flag])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
