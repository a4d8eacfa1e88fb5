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

/// Volume "ledger", living in regions 1 and 2 with its home in 1, known in both.
fn ledger_at_home_1(pair: &Pair) -> Result<()> {
    pair.a
        .admin(&["volume-create", "ledger", "--regions", "1,2", "--home", "1"])?;
    wait_for(Duration::from_secs(30), "the volume in region 2", || {
        pair.b
            .admin(&["volumes"])
            .ok()?
            .contains("ledger")
            .then_some(())
    })
}

/// Waits until both regions hold ledger's home in region 2.
fn moved_to_2_in_both(pair: &Pair) -> Result<()> {
    for side in [&pair.a, &pair.b] {
        wait_for(Duration::from_secs(30), "the move in both regions", || {
            side.admin(&["volumes"])
                .ok()?
                .contains("home=2")
                .then_some(())
        })?;
    }
    Ok(())
}

#[test]
fn a_home_volume_decides_every_change_at_home_and_refuses_changes_when_cut_off() -> Result<()> {
    let pair = Pair::start()?;
    ledger_at_home_1(&pair)?;
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

/// The names and contents under `dir`, sorted (directories by name only).
fn tree(dir: &std::path::Path) -> Result<Vec<(String, Option<String>)>> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let name = format!("{prefix}{}", e.file_name().to_string_lossy());
            if e.file_type()?.is_dir() {
                stack.push((e.path(), format!("{name}/")));
                out.push((name, None));
            } else {
                out.push((name, Some(fs::read_to_string(e.path())?)));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[test]
fn a_home_moves_as_planned_without_loss_and_by_force_keeping_the_old_homes_late_writes_apart()
-> Result<()> {
    let pair = Pair::start()?;
    ledger_at_home_1(&pair)?;
    let one = pair.a.mount("ledger", "one")?;
    let two = pair.b.mount("ledger", "two")?;
    fs::write(two.path.join("before"), "written before any move")?;

    // Planned: region 2 asks, the home (region 1) makes the move, and writes from region 1
    // go on through it: none fails, none is lost.
    let writer = {
        let dir = one.path.clone();
        std::thread::spawn(move || -> Result<usize> {
            for i in 0..30 {
                fs::write(dir.join(format!("during-move-{i}")), format!("{i}"))
                    .with_context(|| format!("write {i} in region 1 during the move"))?;
            }
            Ok(30)
        })
    };
    let moved = pair.b.admin(&["volume-promote", "ledger", "--to", "2"])?;
    ensure!(moved.contains("home=2"), "{moved}");
    let written = writer.join().expect("writer")?;
    moved_to_2_in_both(&pair)?;
    // Region 2 decides now: a write there is at home, one in region 1 is forwarded.
    fs::write(two.path.join("at-new-home"), "home is 2")?;
    fs::write(one.path.join("from-1-to-2"), "forwarded to 2")?;
    ensure!(fs::read_to_string(two.path.join("from-1-to-2"))? == "forwarded to 2");
    for i in 0..written {
        let read = fs::read_to_string(two.path.join(format!("during-move-{i}")))?;
        ensure!(
            read == i.to_string(),
            "during-move-{i} in region 2 reads {read:?}"
        );
    }

    // Forced: region 2 (the home) is cut off; region 1 takes over without it. Region 2
    // goes on accepting writes, not knowing.
    pair.cut(true)?;
    let err = fs::write(one.path.join("refused"), "x").unwrap_err();
    ensure!(err.raw_os_error() == Some(libc::EROFS), "{err}");
    let shown = pair
        .a
        .admin(&["volume-promote", "ledger", "--to", "1", "--force", "--yes"])?;
    ensure!(
        shown.contains("WITHOUT") && shown.contains("epoch"),
        "{shown}"
    );
    fs::write(one.path.join("at-forced-home"), "home is 1 again")?;
    fs::write(two.path.join("late-in-2"), "accepted by the old home")?;
    fs::remove_file(two.path.join("before"))?;
    ensure!(!two.path.join("before").exists());

    pair.cut(false)?;
    for side in [&pair.a, &pair.b] {
        wait_for(
            Duration::from_secs(60),
            "the forced move in both regions",
            || {
                side.admin(&["volumes"])
                    .ok()?
                    .contains("home=1")
                    .then_some(())
            },
        )?;
    }
    // Region 2 forwards to the new home again.
    wait_for(
        Duration::from_secs(60),
        "region 2 writing through region 1",
        || fs::write(two.path.join("after-heal"), "z").ok(),
    )?;
    ensure!(fs::read_to_string(one.path.join("after-heal"))? == "z");
    // The old home's late changes are applied nowhere, and kept: listed, with the bytes.
    let same = wait_for(Duration::from_secs(60), "both regions alike", || {
        let (a, b) = (tree(&one.path).ok()?, tree(&two.path).ok()?);
        (a == b && !a.iter().any(|(n, _)| n == "late-in-2")).then_some(a)
    })?;
    ensure!(
        same.iter().any(|(n, _)| n == "before"),
        "the unlink the old home accepted late is not applied: {same:?}"
    );
    ensure!(
        same.iter()
            .any(|(n, c)| n.starts_with("fenced-")
                && c.as_deref() == Some("accepted by the old home")),
        "the late write's bytes are kept: {same:?}"
    );
    for side in [&pair.a, &pair.b] {
        let listed = side.admin(&["conflicts"])?;
        ensure!(
            listed.matches("fenced").count() >= 3,
            "the late create, write and unlink are listed: {listed}"
        );
    }
    Ok(())
}

#[test]
fn in_three_regions_a_cut_off_home_is_replaced_by_force_and_all_three_end_identical() -> Result<()>
{
    let mesh = common::mesh::Mesh::full(3)?;
    let (r1, r2, r3) = (mesh.region(1), mesh.region(2), mesh.region(3));
    r1.admin(&[
        "volume-create",
        "ledger",
        "--regions",
        "1,2,3",
        "--home",
        "1",
    ])?;
    for r in [r2, r3] {
        wait_for(Duration::from_secs(30), "the volume everywhere", || {
            r.admin(&["volumes"]).ok()?.contains("home=1").then_some(())
        })?;
    }
    let (m1, m2, m3) = (
        r1.mount("ledger", "m1")?,
        r2.mount("ledger", "m2")?,
        r3.mount("ledger", "m3")?,
    );
    // A file closed in region 3 is at the home, and in region 3, when the close returns.
    fs::write(m3.path.join("from-3"), "three")?;
    ensure!(fs::read_to_string(m1.path.join("from-3"))? == "three");
    let m3b = r3.mount("ledger", "m3b")?;
    ensure!(fs::read_to_string(m3b.path.join("from-3"))? == "three");

    // The home cut off from both others: they refuse changes; region 2 takes over.
    mesh.isolate(1, true)?;
    let err = fs::write(m3.path.join("refused"), "x").unwrap_err();
    ensure!(err.raw_os_error() == Some(libc::EROFS), "{err}");
    ensure!(
        fs::read_to_string(m2.path.join("from-3"))? == "three",
        "reads go on"
    );
    let shown = r2.admin(&["volume-promote", "ledger", "--to", "2", "--force", "--yes"])?;
    ensure!(shown.contains("WITHOUT"), "{shown}");
    // The old home, not knowing, goes on accepting; region 3 learns from region 2 and
    // writes through it.
    fs::write(m1.path.join("late-in-1"), "accepted by the old home")?;
    wait_for(
        Duration::from_secs(30),
        "region 3 learning the new home",
        || {
            r3.admin(&["volumes"])
                .ok()?
                .contains("home=2")
                .then_some(())
        },
    )?;
    wait_for(
        Duration::from_secs(30),
        "region 3 writing through region 2",
        || fs::write(m3.path.join("from-3-to-2"), "via 2").ok(),
    )?;
    ensure!(fs::read_to_string(m2.path.join("from-3-to-2"))? == "via 2");

    mesh.isolate(1, false)?;
    wait_for(
        Duration::from_secs(60),
        "region 1 learning the new home",
        || {
            r1.admin(&["volumes"])
                .ok()?
                .contains("home=2")
                .then_some(())
        },
    )?;
    let same = wait_for(Duration::from_secs(90), "all three regions alike", || {
        let t1 = tree(&m1.path).ok()?;
        (t1 == tree(&m2.path).ok()? && t1 == tree(&m3.path).ok()?).then_some(t1)
    })?;
    ensure!(
        !same.iter().any(|(n, _)| n == "late-in-1"),
        "the old home's late create is not applied: {same:?}"
    );
    ensure!(
        same.iter()
            .any(|(n, c)| n.starts_with("fenced-")
                && c.as_deref() == Some("accepted by the old home")),
        "its bytes are kept: {same:?}"
    );
    for r in [r1, r2, r3] {
        ensure!(r.admin(&["conflicts"])?.contains("fenced"));
    }
    Ok(())
}

#[test]
fn in_a_chain_a_region_that_hears_the_home_through_another_writes_through_it() -> Result<()> {
    let mesh = common::mesh::Mesh::linked(3, &[(1, 2), (2, 3)])?;
    let (r1, r3) = (mesh.region(1), mesh.region(3));
    r1.admin(&[
        "volume-create",
        "ledger",
        "--regions",
        "1,2,3",
        "--home",
        "1",
    ])?;
    wait_for(Duration::from_secs(60), "the volume in region 3", || {
        r3.admin(&["volumes"])
            .ok()?
            .contains("home=1")
            .then_some(())
    })?;
    let m1 = r1.mount("ledger", "m1")?;
    let m3 = r3.mount("ledger", "m3")?;
    let m3b = r3.mount("ledger", "m3b")?;
    for i in 0..3 {
        let name = format!("from-3-{i}");
        // Region 3 does not peer with the home: region 2 passes the change on.
        fs::write(m3.path.join(&name), "through region 2")?;
        ensure!(
            fs::read_to_string(m1.path.join(&name))? == "through region 2",
            "{name} at home"
        );
        ensure!(
            fs::read_to_string(m3b.path.join(&name))? == "through region 2",
            "{name} in region 3"
        );
    }
    Ok(())
}

/// A file made at the home just before the home moves, changed just after: the old home
/// forwards the changes to the new one, which has not pulled the file yet (its pulls lag
/// here). The new home does not refuse them as changes of a file that does not exist
/// (ENOENT: a commit refused so drops the content it carried); they wait until it has
/// the file, and both regions read them.
#[test]
fn changes_forwarded_to_a_new_home_that_has_not_pulled_their_file_yet_wait_for_it() -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let pair = Pair::start()?;
    ledger_at_home_1(&pair)?;
    let one = pair.a.mount("ledger", "one")?;
    let two = pair.b.mount("ledger", "two")?;
    // Region 2's pulls from region 1 take a while from here on.
    pair.to_a.set_delay(1000)?;
    let path = one.path.join("late");
    fs::write(&path, "made before the move")?;
    let moved = pair.a.admin(&["volume-promote", "ledger", "--to", "2"])?;
    ensure!(moved.contains("home=2"), "{moved}");
    // Region 1 made the move; region 2 has pulled neither it nor the file yet.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
        .context("a chmod forwarded to the new home")?;
    let mut f = fs::OpenOptions::new().append(true).open(&path)?;
    f.write_all(b", written after it")?;
    f.sync_all()
        .context("an fsync (a commit) forwarded to the new home")?;
    drop(f);
    pair.to_a.set_delay(0)?;
    moved_to_2_in_both(&pair)?;
    for (region, mount) in [(1, &one), (2, &two)] {
        let p = mount.path.join("late");
        let read = fs::read_to_string(&p)?;
        ensure!(
            read == "made before the move, written after it",
            "region {region} reads {read:?}"
        );
        let mode = fs::metadata(&p)?.permissions().mode() & 0o777;
        ensure!(mode == 0o600, "region {region}: mode {mode:o}");
    }
    Ok(())
}
