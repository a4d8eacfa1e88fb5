//! Volumes with a home region (issue 17), through real mounts in two regions: a change made
//! in the other region is decided at the home, so it is there the moment the call
//! returns, and in its own region at once; with the home cut off, changes are refused with
//! EROFS while reads go on, and the home keeps taking changes.

mod common;

use std::fs;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::pair::Pair;
use common::wait_for;

#[test]
fn a_home_volume_decides_every_change_at_home_and_refuses_changes_when_cut_off() -> Result<()> {
    let pair = Pair::start()?;
    pair.a
        .admin(&["volume-create", "ledger", "--regions", "1,2", "--home", "1"])?;
    wait_for(Duration::from_secs(30), "the volume in region 2", || {
        pair.b
            .admin(&["volumes"])
            .ok()?
            .contains("ledger")
            .then_some(())
    })?;
    let listing = pair.b.admin(&["volumes"])?;
    ensure!(listing.contains("home=1"), "{listing}");
    // A home outside the volume's regions is refused.
    ensure!(
        pair.a
            .admin(&["volume-create", "bad", "--regions", "1,2", "--home", "3"])
            .is_err()
    );

    let home = pair.a.mount("ledger", "home")?;
    let away = pair.b.mount("ledger", "away")?;
    let away_too = pair.b.mount("ledger", "away-too")?;
    for i in 0..5 {
        let name = format!("from-2-{i}");
        let text = format!("entry {i} written in region 2");
        fs::write(away.path.join(&name), &text).context("write in region 2")?;
        fs::create_dir(away.path.join(format!("dir-{i}"))).context("mkdir in region 2")?;
        // Decided at the home before the calls returned: no waiting for replication.
        ensure!(
            fs::read_to_string(home.path.join(&name))? == text,
            "{name} at home"
        );
        ensure!(home.path.join(format!("dir-{i}")).is_dir());
        // And held in region 2 already, by another mount there.
        ensure!(
            fs::read_to_string(away_too.path.join(&name))? == text,
            "{name} in region 2"
        );
    }
    if let Err(e) = fs::rename(away.path.join("from-2-0"), away.path.join("renamed")) {
        let log = fs::read_to_string(&away.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        anyhow::bail!(
            "rename in region 2: {e}; mount log ends:\n{}",
            tail.join("\n")
        );
    }
    ensure!(home.path.join("renamed").exists() && !home.path.join("from-2-0").exists());

    // The home cut off: region 2 refuses changes with EROFS and goes on reading.
    pair.cut(true)?;
    let err = fs::write(away.path.join("during-cut"), "x").unwrap_err();
    if err.raw_os_error() != Some(libc::EROFS) {
        let logs: Vec<String> = pair
            .b
            .meta
            .nodes
            .iter()
            .map(|n| common::log_tail(&n.log, 15))
            .collect();
        anyhow::bail!(
            "write during the cut: {err}; region 2's logs:\n{}",
            logs.join("\n---\n")
        );
    }
    let err = fs::remove_file(away.path.join("renamed")).unwrap_err();
    ensure!(err.raw_os_error() == Some(libc::EROFS), "{err}");
    ensure!(fs::read_to_string(away.path.join("from-2-1"))? == "entry 1 written in region 2");
    // The home itself goes on.
    fs::write(home.path.join("at-home-during-cut"), "y")?;

    // Healed: region 2 takes changes again, and holds what the home did meanwhile.
    pair.cut(false)?;
    wait_for(
        Duration::from_secs(60),
        "region 2 taking changes again",
        || fs::write(away.path.join("after"), "z").ok(),
    )?;
    ensure!(fs::read_to_string(home.path.join("after"))? == "z");
    wait_for(
        Duration::from_secs(30),
        "the home's change in region 2",
        || {
            away_too
                .path
                .join("at-home-during-cut")
                .exists()
                .then_some(())
        },
    )?;
    ensure!(!home.path.join("during-cut").exists());
    Ok(())
}
