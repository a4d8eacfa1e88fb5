//! `meridian dev`: the one command a newcomer runs.

mod common;

use std::fs;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Result;
use common::{MERIDIAN, is_mounted, log_tail, wait_for};

struct Dev {
    child: Child,
    log: std::path::PathBuf,
    mnt: std::path::PathBuf,
}

impl Dev {
    fn start(data: &std::path::Path, run: u32) -> Result<Self> {
        let log = data.with_extension(format!("run{run}.log"));
        let out = fs::File::create(&log)?;
        let child = Command::new(MERIDIAN)
            .args(["dev", "--data"])
            .arg(data)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        let mnt = data.join("mnt");
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
        anyhow::ensure!(is_mounted(&dev.mnt.canonicalize()?), "not mounted");
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
        if let Ok(m) = self.mnt.canonicalize()
            && is_mounted(&m)
        {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
}

#[test]
fn dev_starts_a_region_mounts_it_stops_cleanly_and_keeps_data_across_restarts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("dev");
    let dev = Dev::start(&data, 1)?;
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
