//! Snapshots and clones made in steps (docs/adr/0014), through real processes and mounts:
//! a copy bigger than one step is still one point in time of a volume that changes while
//! it is made, and a volume that lives in two regions is copied in the region that asks,
//! where the copy then lives. A deleted snapshot's tree goes in steps.

mod common;

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::pair::Pair;
use common::{Mount, Region, tree_listing, wait_for};

/// Names `prefix0`, `prefix1`, … present in `dir`: how many (they must be the first ones,
/// with no gap), and whether the last of them is still empty (made, its data not yet
/// written: the one being written when a snapshot was taken). The others must hold what
/// was written.
fn prefix_count(dir: &std::path::Path, prefix: &str) -> Result<(usize, bool)> {
    let names: Vec<String> = fs::read_dir(dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    let mut n = 0;
    let mut last_empty = false;
    while names.contains(&format!("{prefix}{n}")) {
        ensure!(!last_empty, "{prefix}{} is empty and not the last", n - 1);
        let body = fs::read_to_string(dir.join(format!("{prefix}{n}")))?;
        last_empty = body.is_empty();
        ensure!(
            last_empty || body == format!("{prefix} {n}"),
            "{prefix}{n} holds {body:?}"
        );
        n += 1;
    }
    ensure!(names.len() == n, "{} has gaps: {names:?}", dir.display());
    Ok((n, last_empty))
}

#[test]
fn a_snapshot_bigger_than_a_step_is_one_point_in_time_of_a_changing_volume() -> Result<()> {
    let region = Region::start()?;
    let m = region.mount("mnt")?;
    let addrs = region.meta_addrs();
    // More inodes than one step copies (500), so the copy takes several.
    fs::create_dir(m.path.join("bulk"))?;
    for i in 0..1200 {
        fs::create_dir(m.path.join(format!("bulk/d{i}")))?;
    }
    let big = common::random_bytes(7, 3 << 20);
    fs::write(m.path.join("bulk/d7/big"), &big)?;
    // A file of more extents than one step copies (10,000): its extents go over two.
    let pieces = 10_500;
    common::scattered(&m.path.join("bulk/d8"), "scattered", pieces)?;
    fs::File::open(m.path.join("bulk"))?.sync_all()?;
    // The two directories written are far apart in the copy's order (a at the start of
    // the first step, b in the third): a copy reading each step afresh would tear them.
    fs::create_dir(m.path.join("a"))?;
    fs::create_dir(m.path.join("bulk/d600/b"))?;

    // A writer makes a/w0, b/w0, a/w1, b/w1, … one after the other, each durable at its
    // close, while the snapshot is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let pairs = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (root, stop, pairs) = (m.path.clone(), stop.clone(), pairs.clone());
        std::thread::spawn(move || -> std::io::Result<()> {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                fs::write(root.join(format!("a/w{i}")), format!("w {i}"))?;
                fs::write(root.join(format!("bulk/d600/b/w{i}")), format!("w {i}"))?;
                i += 1;
                pairs.store(i, Ordering::Relaxed);
            }
            Ok(())
        })
    };
    wait_for(Duration::from_secs(60), "the writer under way", || {
        (pairs.load(Ordering::Relaxed) >= 10).then_some(())
    })?;
    let said = common::admin_at(&addrs, &["volume-snapshot", "default", "snap"])?;
    let at = pairs.load(Ordering::Relaxed);
    wait_for(Duration::from_secs(60), "the writer going on", || {
        (pairs.load(Ordering::Relaxed) >= at + 10).then_some(())
    })?;
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("the writer")?;
    ensure!(said.contains("snapshot snap of default"), "{said}");
    let listed = common::admin_at(&addrs, &["snapshots", "--json"])?;
    let listed: serde_json::Value = serde_json::from_str(&listed)?;
    let snap = listed
        .as_array()
        .and_then(|l| l.iter().find(|v| v["name"] == "snap"))
        .cloned()
        .context("the snapshot listed")?;
    ensure!(snap["copying"].is_null(), "{snap}");
    ensure!(snap["used_inodes"].as_u64().unwrap_or(0) > 1000, "{snap}");

    // The snapshot is the volume at one moment: every pair before it whole, at most the
    // a-half of the one being written, nothing after.
    let s = Mount::start(&addrs, "snap", &region.meta.dir.path().join("snap"))?;
    let (na, a_empty) = prefix_count(&s.path.join("a"), "w")?;
    let (nb, b_empty) = prefix_count(&s.path.join("bulk/d600/b"), "w")?;
    ensure!(
        na == nb || na == nb + 1,
        "a torn snapshot: {na} files in a, {nb} in b"
    );
    // Only the file being written at that moment may be empty: the last of the sequence.
    ensure!(
        !((a_empty && na == nb) || (b_empty && na == nb + 1)),
        "an empty file before the last ({na} / {nb}, {a_empty} / {b_empty})"
    );
    ensure!(nb >= 10 && na <= at + 1, "{na} / {nb}, taken at {at}");
    ensure!(
        fs::read_dir(s.path.join("bulk"))?.count() == 1200,
        "every directory of the bulk"
    );
    assert_eq!(fs::read(s.path.join("bulk/d7/big"))?, big);
    common::check_scattered(&s.path.join("bulk/d8/scattered"), pieces, 7)?;
    ensure!(
        !group_logs(&region.meta).contains("copying each file's extents in its row"),
        "a group of this version reads a file's extents in steps"
    );
    let e = fs::create_dir(s.path.join("x")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    // The source went on.
    ensure!(prefix_count(&m.path.join("bulk/d600/b"), "w")?.0 >= at + 10);
    drop(s);

    // Deleted, the snapshot is gone at once, and the leader's steps take what it held
    // (more rows than one step takes), fsck clean at every look.
    let (report, clean) = common::fsck(&addrs)?;
    ensure!(clean, "{report}");
    let held = report["inodes"].as_u64().context("inodes counted")?;
    let copied = snap["used_inodes"]
        .as_u64()
        .context("the snapshot's inodes")?;
    common::admin_at(&addrs, &["volume-delete", "snap"])?;
    let listed = common::admin_at(&addrs, &["snapshots", "--json"])?;
    ensure!(!listed.contains("\"snap\""), "{listed}");
    wait_for(
        Duration::from_secs(60),
        "the deleted snapshot's inodes dropped",
        || {
            let (report, clean) = common::fsck(&addrs).ok()?;
            assert!(clean, "{report}");
            (report["inodes"].as_u64()? == held - copied).then_some(())
        },
    )?;
    ensure!(fs::read(m.path.join("bulk/d7/big"))? == big);
    drop(m);
    Ok(())
}

/// In a region with a member that reports an older version (one that cannot read a file's
/// extents in steps of their own), a file of more extents than a step holds is copied
/// whole in its row, and the copy holds all of it.
#[test]
fn among_older_members_a_file_of_many_extents_is_copied_in_its_row() -> Result<()> {
    let mut region = Region::start()?;
    // A follower restarted as an older version would be.
    let leader = region.meta.wait_leader()?;
    let older = (leader + 1) % 3;
    let node = &mut region.meta.nodes[older];
    node.kill();
    node.add_args(&["--no-calls-stream"]);
    let addr = node.addr.clone();
    node.restart_on(&addr)?;
    wait_for(
        Duration::from_secs(30),
        "the older member answering",
        || region.meta.status(older).filter(|s| s.reads == 0),
    )?;
    let m = region.mount("mnt")?;
    let addrs = region.meta_addrs();
    let pieces = 10_500;
    common::scattered(&m.path, "scattered", pieces)?;
    let said = common::admin_at(&addrs, &["volume-snapshot", "default", "snap"])?;
    ensure!(said.contains("snapshot snap of default"), "{said}");
    let logs = group_logs(&region.meta);
    ensure!(
        logs.contains("copying each file's extents in its row"),
        "the copy did not take the older members' way"
    );
    // The root, and the file whole with it: one step (three with its extents in steps).
    let copied = logs
        .lines()
        .find(|l| l.contains("volume copied") && l.contains("snap"))
        .context("the copy's line")?;
    ensure!(copied.contains("steps=1"), "{copied}");
    let s = Mount::start(&addrs, "snap", &region.meta.dir.path().join("snap"))?;
    common::check_scattered(&s.path.join("scattered"), pieces, 7)?;
    drop(s);

    // Stopped, the older member answers nothing: the leader takes it as it last answered,
    // and copies the same way again (checked to copy in steps when a silent member is not
    // remembered).
    region.meta.nodes[older].pause(true);
    let said = common::admin_at(&addrs, &["volume-snapshot", "default", "again"]);
    region.meta.nodes[older].pause(false);
    ensure!(said?.contains("snapshot again of default"));
    let logs = group_logs(&region.meta);
    let copied = logs
        .lines()
        .find(|l| l.contains("volume copied") && l.contains("again"))
        .context("the second copy's line")?;
    ensure!(copied.contains("steps=1"), "{copied}");
    ensure!(
        logs.matches("copying each file's extents in its row")
            .count()
            == 2
    );

    let (report, clean) = common::fsck(&addrs)?;
    ensure!(clean, "{report}");
    drop(m);
    Ok(())
}

#[test]
fn a_volume_living_in_two_regions_is_copied_where_it_is_asked_and_the_copy_lives_there()
-> Result<()> {
    let pair = Pair::start()?;
    pair.shared_volume("shared")?;
    let ma = pair.a.mount("shared", "mnt-a")?;
    let mb = pair.b.mount("shared", "mnt-b")?;
    fs::create_dir(ma.path.join("docs"))?;
    fs::write(ma.path.join("docs/from-1"), b"written in region 1")?;
    let data = common::random_bytes(11, 1 << 20);
    fs::write(mb.path.join("from-2"), &data)?;
    let tree = common::wait_same_tree(
        &ma.path,
        &mb.path,
        Duration::from_secs(60),
        "the regions to agree",
    )?;

    // Taken in region 2: there it lives, and region 1 has none of it.
    let said = pair.b.admin(&["volume-snapshot", "shared", "snap-2"])?;
    ensure!(said.contains("snapshot snap-2 of shared"), "{said}");
    ensure!(!pair.a.admin(&["snapshots"])?.contains("snap-2"));
    fs::write(ma.path.join("docs/later"), b"after the snapshot")?;
    fs::remove_file(mb.path.join("from-2"))?;
    let s = pair.b.mount("snap-2", "snap-2")?;
    let listed = tree_listing(&s.path);
    ensure!(
        listed == tree,
        "{listed:#?}\n{}",
        common::log_tail(&s.log, 30)
    );
    assert_eq!(fs::read(s.path.join("from-2"))?, data);

    // A writable clone of it, there too, diverges from it.
    pair.b.admin(&["volume-clone", "snap-2", "clone-2"])?;
    let c = pair.b.mount("clone-2", "clone-2")?;
    assert_eq!(tree_listing(&c.path), tree);
    fs::write(c.path.join("docs/from-1"), b"changed in the clone")?;
    assert_eq!(
        fs::read(s.path.join("docs/from-1"))?,
        b"written in region 1"
    );
    assert!(
        pair.a.mount("snap-2", "snap-2-in-1").is_err(),
        "region 1 has no copy of the snapshot"
    );
    drop((c, s, ma, mb));
    Ok(())
}

#[test]
fn a_copy_whose_leader_dies_is_removed_by_the_next_and_can_be_made_again() -> Result<()> {
    copy_whose_leader_dies(false)
}

/// In a group whose members report an older version (one that cannot read the removal's
/// steps), the unfinished copy goes at once, as those members remove it.
#[test]
fn among_older_members_an_unfinished_copy_goes_at_once() -> Result<()> {
    copy_whose_leader_dies(true)
}

/// A group of three (copy steps `pause_ms` apart, and `flags`) with volume "v" of 2,500
/// directories (six copy steps); the group and its addresses.
fn group_with_dirs(pause_ms: &str, flags: &[&str]) -> Result<(common::MetaCluster, String)> {
    use meridian_proto::ns::{Creds, FileKind, Op, Query, QueryReply, Reply, VolumePolicy};
    let mut all = vec!["--copy-pause-ms", pause_ms];
    all.extend_from_slice(flags);
    let cluster = common::MetaCluster::start(3, &all)?;
    let addrs = cluster.addrs().join(",");
    let meta = std::sync::Arc::new(cluster.client());
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        meta.mutate(&Op::CreateVolume {
            name: "v".into(),
            policy: VolumePolicy::default(),
        })
        .await?;
        let QueryReply::Volume(vol) = meta
            .query(&Query::Volume { name: "v".into() }, false)
            .await?
        else {
            anyhow::bail!("no volume")
        };
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..32u32 {
            let meta = meta.clone();
            tasks.spawn(async move {
                for i in (t..2500).step_by(32) {
                    let op = Op::Mknod {
                        parent: vol.root,
                        name: format!("d{i}").into_bytes(),
                        kind: FileKind::Dir,
                        perm: 0o755,
                        rdev: 0,
                        exclusive: true,
                        creds: Creds::root(),
                    };
                    ensure!(matches!(meta.mutate(&op).await?, Reply::Attr(_)));
                }
                anyhow::Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        anyhow::Ok(())
    })?;
    Ok((cluster, addrs))
}

/// Snapshot `name` as `admin snapshots` lists it (None: not listed); an error when the
/// servers did not say.
fn listed(addrs: &str, name: &str) -> Result<Option<serde_json::Value>> {
    let listed: serde_json::Value =
        serde_json::from_str(&common::admin_at(addrs, &["snapshots", "--json"])?)?;
    Ok(listed
        .as_array()
        .context("a list")?
        .iter()
        .find(|v| v["name"] == name)
        .cloned())
}

/// The logs of the group's members, one after the other.
fn group_logs(cluster: &common::MetaCluster) -> String {
    (1..=3)
        .map(|i| {
            fs::read_to_string(cluster.dir.path().join(format!("meta-{i}.log"))).unwrap_or_default()
        })
        .collect()
}

/// A snapshot deleted while it is being made goes in steps, as one whose maker went away:
/// the command that took it fails, and nothing of it is left.
#[test]
fn a_copy_deleted_while_being_made_goes_in_steps() -> Result<()> {
    // Steps a second apart: seconds to delete it in while it is being made.
    let (cluster, addrs) = group_with_dirs("1000", &[])?;
    let taking = {
        let addrs = addrs.clone();
        std::thread::spawn(move || common::admin_at(&addrs, &["volume-snapshot", "v", "snap"]))
    };
    wait_for(Duration::from_secs(30), "the copy under way", || {
        listed(&addrs, "snap")
            .ok()
            .flatten()
            .filter(|v| v["copying"]["copied"].as_u64().unwrap_or(0) > 0)
    })?;
    common::admin_at(&addrs, &["volume-delete", "snap"])?;
    ensure!(
        listed(&addrs, "snap")?.is_none(),
        "the deleted copy is still listed"
    );
    let taken = taking.join().expect("the snapshot command");
    ensure!(
        taken.is_err(),
        "the snapshot of a deleted copy was made: {taken:?}"
    );
    wait_for(Duration::from_secs(30), "the removal's steps", || {
        group_logs(&cluster)
            .contains("an unfinished copy's rows removed in steps")
            .then_some(())
    })?;
    ensure!(group_logs(&cluster).contains("deleted a copy still being made"));
    let (report, clean) = common::fsck(&addrs)?;
    ensure!(clean && report["inodes"] == 2501, "fsck: {report}");
    Ok(())
}

fn copy_whose_leader_dies(older: bool) -> Result<()> {
    // The copy is stopped half way by killing its leader.
    let flags: &[&str] = if older { &["--no-calls-stream"] } else { &[] };
    let (mut cluster, addrs) = group_with_dirs("300", flags)?;
    let copying = |name: &str| listed(&addrs, name);
    let taking = {
        let addrs = addrs.clone();
        std::thread::spawn(move || common::admin_at(&addrs, &["volume-snapshot", "v", "snap"]))
    };
    let half = wait_for(Duration::from_secs(30), "the copy under way", || {
        copying("snap")
            .ok()
            .flatten()
            .filter(|v| v["copying"]["copied"].as_u64().unwrap_or(0) > 0)
    })?;
    ensure!(half["copying"]["inodes"] == 2500, "the copy's plan: {half}");
    let leader = cluster.wait_leader()?;
    cluster.nodes[leader].kill();
    let logs = |cluster: &common::MetaCluster| -> String {
        (1..=3)
            .map(|i| {
                let log = cluster.dir.path().join(format!("meta-{i}.log"));
                format!("--- meta-{i}:\n{}", common::log_tail(&log, 25))
            })
            .collect()
    };
    let after = (|| -> Result<()> {
        // The command's client asks the next leader again: that one finds the unfinished copy
        // without a maker, removes it, and makes the copy afresh (or, had the command given
        // up, its sweep would remove it). Never is a copy left half made.
        let taken = taking.join().expect("the snapshot command");
        wait_for(Duration::from_secs(60), "no copy left half made", || {
            copying("snap")
                .ok()?
                .is_none_or(|v| v["copying"].is_null())
                .then_some(())
        })?;
        if let Err(e) = &taken {
            eprintln!("the snapshot command failed ({e:#}): taken again");
            let said = common::admin_at(&addrs, &["volume-snapshot", "v", "snap"])?;
            ensure!(said.contains("snapshot snap of v"), "{said}");
        }
        let snap = copying("snap")?.context("the snapshot listed")?;
        ensure!(
            snap["copying"].is_null() && snap["used_inodes"] == 2501,
            "{snap}"
        );
        ensure!(
            group_logs(&cluster).contains("left unfinished"),
            "the next leader did not remove the unfinished copy"
        );
        // More rows than one entry removes at once (a batch of a thousand directories
        // at least): the rest went in steps (or at once among older members), and
        // nothing of it is left: the two volumes' 2 x 2,501 inodes alone.
        let stepped =
            || group_logs(&cluster).contains("an unfinished copy's rows removed in steps");
        if !older {
            wait_for(Duration::from_secs(30), "the removal's steps", || {
                stepped().then_some(())
            })?;
        }
        let (report, clean) = common::fsck(&addrs)?;
        ensure!(clean && report["inodes"] == 5002, "fsck: {report}");
        ensure!(
            stepped() != older,
            "removed in steps among older members, or not at all"
        );
        Ok(())
    })();
    after.with_context(|| logs(&cluster))?;
    Ok(())
}
