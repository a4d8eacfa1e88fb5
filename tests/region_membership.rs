//! A volume's set of regions over time: three regions as real processes (see
//! `common::mesh`), a volume that grows into a third region with its data, and leaves it
//! again.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use common::mesh::Mesh;
use common::{Mount, wait_for};
use meridian_proto::BlockId;

fn wait_same(a: &Path, b: &Path, what: &str) -> Result<BTreeMap<String, String>> {
    common::wait_same_tree(a, b, Duration::from_secs(90), what)
}

#[test]
fn a_volume_grows_into_a_third_region_with_its_data_and_leaves_it_again() -> Result<()> {
    let mesh = Mesh::full(3)?;
    let regions = &mesh.regions;
    let (r1, r2, r3) = (&regions[0], &regions[1], &regions[2]);
    r1.admin(&["volume-create", "grow", "--regions", "1,2"])?;
    wait_for(Duration::from_secs(30), "the volume in region 2", || {
        r2.admin(&["volumes"]).ok()?.contains("grow").then_some(())
    })?;
    let m1 = r1.mount("grow", "mnt-1")?;
    let m2 = r2.mount("grow", "mnt-2")?;

    // Data written in both regions before region 3 joins, a removal among it.
    let big = common::random_bytes(31, 3 << 20);
    fs::create_dir_all(m1.path.join("docs/old"))?;
    fs::write(m1.path.join("docs/old/report"), b"from region 1")?;
    fs::write(m1.path.join("big"), &big)?;
    fs::write(m2.path.join("from-2"), b"from region 2")?;
    std::os::unix::fs::symlink("docs/old/report", m2.path.join("link"))?;
    fs::write(m1.path.join("gone"), b"removed before region 3 came")?;
    fs::remove_file(m1.path.join("gone"))?;
    for i in 0..40 {
        fs::write(m2.path.join(format!("docs/f{i}")), format!("file {i}"))?;
    }
    // Files with large tags: the volume's image spans several of the 4 MiB pieces it is
    // fetched in (its JSON spells a byte in up to four characters).
    fs::create_dir_all(m1.path.join("tagged"))?;
    let tag = |i: u8| vec![b'a' + i % 26; 8 << 10];
    for i in 0..200u8 {
        let f = m1.path.join(format!("tagged/t{i}"));
        fs::write(&f, [i])?;
        common::xattr_set(&f, "user.tag", &tag(i), 0)?;
    }
    wait_same(&m1.path, &m2.path, "regions 1 and 2 to agree")?;
    assert!(
        !r3.admin(&["volumes"])?.contains("grow"),
        "region 3 holds nothing of the volume before it is added"
    );
    // A file of more extents than an image's piece holds (an extent is about 130 bytes of
    // the image's JSON, and a piece about 2 MiB): its extents go on over pieces after the
    // one holding it (`InstallImageSplit`). Written after the trees were compared, and
    // removed before they are again (the file is 160 MiB, mostly holes).
    let pieces = 20_000;
    drop(common::scattered(&m1.path, "scattered", pieces)?);

    // Region 3 joins, while region 2 keeps writing.
    let writer = {
        let path = m2.path.clone();
        std::thread::spawn(move || -> std::io::Result<()> {
            for i in 0..30 {
                fs::write(
                    path.join(format!("during-{i}")),
                    format!("written during the join {i}"),
                )?;
            }
            Ok(())
        })
    };
    let out = r1.admin(&["volume-add-region", "grow", "3", "--follow", &r3.addrs()])?;
    assert!(out.contains("every block of it"), "{out}");
    writer.join().expect("the writer")?;
    let volumes = r1.admin(&["volumes"])?;
    assert!(volumes.contains("1,2,3"), "{volumes}");
    let status = r3.admin(&["regions"])?;
    assert!(
        status.contains("grow") && status.contains("done"),
        "{status}"
    );
    // The image was received on disk, and its file is gone once installed.
    let scratch = common::files_ending(r3.meta.dir.path(), ".scratch");
    assert!(scratch.is_empty(), "{scratch:?}");
    // The scattered file went over several pieces.
    let installed: Vec<String> = common::files_ending(r3.meta.dir.path(), ".log")
        .iter()
        .filter_map(|log| fs::read_to_string(log).ok())
        .flat_map(|text| {
            text.lines()
                .filter(|l| l.contains("namespace brought into this region"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        installed
            .iter()
            .any(|l| !l.contains(" split=0 ") && l.contains(" split=")),
        "{installed:?}"
    );
    // The blocks came with it, before anything read them there.
    let hex = BlockId::of(&big).to_hex();
    let held = r3
        .chunks
        .iter()
        .filter(|c| common::block_files(&c.data.join("blocks")).contains(&hex))
        .count();
    assert!(
        held >= 1,
        "block {hex} of a file written before the join is in region 3"
    );

    // All three trees are the same, content included (region 3 reads the blocks from the
    // others), and region 3 takes part like the others.
    let m3 = r3.mount("grow", "mnt-3")?;
    {
        use std::os::unix::fs::FileExt;
        let f = fs::File::open(m3.path.join("scattered"))?;
        // Every piece, and a hole between two.
        for i in 0..pieces {
            let mut piece = [0; 512];
            f.read_exact_at(&mut piece, i * 8192)?;
            assert_eq!(piece, [common::piece_byte(i); 512], "piece {i}");
        }
        let mut hole = [1; 512];
        f.read_exact_at(&mut hole, 4096)?;
        assert_eq!(hole, [0; 512]);
        assert_eq!(f.metadata()?.len(), (pieces - 1) * 8192 + 512);
    }
    fs::remove_file(m1.path.join("scattered"))?;
    let tree = wait_same(&m1.path, &m3.path, "regions 1 and 3 to agree")?;
    wait_same(&m2.path, &m3.path, "regions 2 and 3 to agree")?;
    assert!(
        tree.contains_key("during-29") && tree.contains_key("docs/f39"),
        "{tree:#?}"
    );
    assert!(!tree.contains_key("gone"), "{tree:#?}");
    assert_eq!(fs::read(m3.path.join("big"))?, big);
    for i in [0u8, 77, 199] {
        let f = m3.path.join(format!("tagged/t{i}"));
        assert_eq!(common::xattr_get(&f, "user.tag")?, tag(i), "t{i}'s tag");
    }
    fs::write(m3.path.join("from-3"), b"written in region 3")?;
    fs::write(m1.path.join("after"), b"written in region 1 after the join")?;
    wait_same(&m1.path, &m3.path, "region 3's write everywhere")?;
    wait_same(&m2.path, &m3.path, "region 3's write everywhere")?;
    assert_eq!(fs::read(m2.path.join("from-3"))?, b"written in region 3");

    // Region 3 leaves: it drops its copy, the others go on.
    drop(m3);
    r1.admin(&["volume-remove-region", "grow", "3"])?;
    wait_for(
        Duration::from_secs(60),
        "region 3 to drop the volume",
        || (!r3.admin(&["volumes"]).ok()?.contains("grow")).then_some(()),
    )?;
    fs::write(m2.path.join("after-leave"), b"region 3 is gone")?;
    wait_same(&m1.path, &m2.path, "regions 1 and 2 after region 3 left")?;
    let volumes = r2.admin(&["volumes"])?;
    assert!(
        volumes.contains("1,2") && !volumes.contains("1,2,3"),
        "{volumes}"
    );
    let refused = Mount::start(&r3.addrs(), "grow", &r3.meta.dir.path().join("mnt-3b"))
        .err()
        .context("region 3 no longer serves the volume")?;
    assert!(
        format!("{refused:#}").contains("unknown volume"),
        "{refused:#}"
    );
    drop(m1);
    drop(m2);
    Ok(())
}

/// Three regions linked as a chain, 1 - 2 - 3: regions 1 and 3 are not peers, and still
/// converge, each one's records relayed by region 2 (metadata), each one's blocks read
/// through region 2.
#[test]
fn three_regions_linked_as_a_chain_converge() -> Result<()> {
    let mesh = Mesh::linked(3, &[(1, 2), (2, 3)])?;
    let regions = &mesh.regions;
    let (r1, r2, r3) = (&regions[0], &regions[1], &regions[2]);
    r1.admin(&["volume-create", "chain", "--regions", "1,2,3"])?;
    wait_for(Duration::from_secs(60), "the volume at the far end", || {
        r3.admin(&["volumes"]).ok()?.contains("chain").then_some(())
    })?;
    let m1 = r1.mount("chain", "mnt-1")?;
    let m3 = r3.mount("chain", "mnt-3")?;
    let from_1 = common::random_bytes(41, 200_000);
    fs::create_dir(m1.path.join("one"))?;
    fs::write(m1.path.join("one/data"), &from_1)?;
    fs::write(m3.path.join("from-3"), b"written at the far end")?;
    // A file written at one end and changed at the other.
    fs::write(m1.path.join("notes"), b"started at one end")?;
    wait_for(Duration::from_secs(60), "the file at the far end", || {
        fs::read(m3.path.join("notes"))
            .ok()
            .filter(|b| b == b"started at one end")
    })?;
    fs::write(m3.path.join("notes"), b"finished at the other")?;
    let tree = wait_same(&m1.path, &m3.path, "the ends of the chain to agree")?;
    assert!(
        tree.contains_key("one/data") && tree.contains_key("from-3"),
        "{tree:#?}"
    );
    assert_eq!(fs::read(m3.path.join("one/data"))?, from_1);
    assert_eq!(fs::read(m1.path.join("notes"))?, b"finished at the other");
    let m2 = r2.mount("chain", "mnt-2")?;
    wait_same(&m1.path, &m2.path, "the middle to agree")?;
    // Each end shows the other as relayed through the middle.
    let status: serde_json::Value = serde_json::from_str(&r1.admin(&["regions", "--json"])?)?;
    let far = status["peers"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["region"] == 3))
        .cloned()
        .context("region 3 in region 1's status")?;
    assert_eq!(far["via"], 2, "{status}");
    drop(m1);
    drop(m2);
    drop(m3);
    Ok(())
}

/// A region whose metaserver reports an older version (one that reads no split image
/// piece) gets a volume's image cut as such a member cuts it: a file of more extents than
/// a piece holds comes whole in one piece, and the region holds all of it.
#[test]
fn a_region_of_older_members_gets_each_inode_of_the_image_whole() -> Result<()> {
    let mesh = Mesh::full_with(2, |r| {
        if r == 2 {
            vec!["--no-calls-stream"]
        } else {
            vec![]
        }
    })?;
    let (r1, r2) = (mesh.region(1), mesh.region(2));
    r1.admin(&["volume-create", "grow", "--regions", "1"])?;
    let m1 = r1.mount("grow", "mnt-1")?;
    // As in the test above: about 2.6 MiB of the image's JSON, more than a piece.
    let pieces = 20_000;
    drop(common::scattered(&m1.path, "scattered", pieces)?);
    let out = r1.admin(&["volume-add-region", "grow", "2", "--follow", &r2.addrs()])?;
    assert!(out.contains("every block of it"), "{out}");
    let log = common::logs_under(r2.meta.dir.path());
    assert!(
        log.contains("cutting the image with each inode whole in a piece"),
        "region 2 did not cut the image for its older member"
    );
    let installed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("namespace brought into this region"))
        .collect();
    assert!(
        !installed.is_empty() && installed.iter().all(|l| l.contains(" split=0 ")),
        "{installed:?}"
    );
    let m2 = r2.mount("grow", "mnt-2")?;
    common::check_scattered(&m2.path.join("scattered"), pieces, 13)?;
    drop((m1, m2));
    Ok(())
}

/// An image a piece cut whole cannot hold (one file's rows past 12 MiB) is refused before
/// any piece is installed in a region whose member reads no split piece; the install waits
/// for the upgrade, and once the member reads them, the image installs split and whole.
#[test]
fn an_image_too_large_to_cut_whole_waits_for_the_upgrade_then_installs() -> Result<()> {
    let mut mesh = Mesh::full_with(2, |r| {
        if r == 2 {
            vec!["--no-calls-stream"]
        } else {
            vec![]
        }
    })?;
    let r1 = &mesh.regions[0];
    r1.admin(&["volume-create", "grow", "--regions", "1"])?;
    let m1 = r1.mount("grow", "mnt-1")?;
    // More files than a piece holds before it in the image's order (a directory's files
    // by name): a piece would be installed before the file is met, were the image not cut
    // once before, and after the upgrade the install would go on cut whole and be refused
    // again. Then about 17 MiB of the image's JSON in one file's extents.
    for i in 0..PART_INODES + 100 {
        fs::File::create(m1.path.join(format!("a-{i:05}")))?;
    }
    let pieces = 130_000;
    drop(common::scattered(&m1.path, "scattered", pieces)?);
    r1.admin(&["volume-add-region", "grow", "2"])?;
    let log = |mesh: &Mesh| common::logs_under(mesh.regions[1].meta.dir.path());
    wait_for(
        Duration::from_secs(90),
        "region 2 waiting for its upgrade",
        || {
            log(&mesh)
                .contains("waiting for every member to be upgraded")
                .then_some(())
        },
    )?;
    let text = log(&mesh);
    assert!(
        !text.contains("volume's namespace brought into this region"),
        "installed although no piece could hold the file"
    );
    // Nothing installed meanwhile (the image was cut once first), and the reason shown.
    let status: serde_json::Value =
        serde_json::from_str(&mesh.regions[1].admin(&["regions", "--json"])?)?;
    let backfill = &status["backfills"][0];
    assert_eq!(backfill["inodes_installed"], 0, "{status}");
    assert!(
        backfill["error"]
            .as_str()
            .is_some_and(|e| e.contains("upgraded")),
        "{status}"
    );
    // The upgrade: region 2's member restarted reading split pieces.
    let node = &mut mesh.regions[1].meta.nodes[0];
    node.kill();
    node.remove_flag("--no-calls-stream");
    let addr = node.addr.clone();
    node.restart_on(&addr)?;
    wait_for(
        Duration::from_secs(120),
        "the volume brought into region 2",
        || {
            log(&mesh)
                .lines()
                .any(|l| {
                    l.contains("volume's namespace brought into this region")
                        && !l.contains(" split=0 ")
                })
                .then_some(())
        },
    )?;
    let r2 = &mesh.regions[1];
    wait_for(
        Duration::from_secs(60),
        "the volume listed in region 2",
        || r2.admin(&["volumes"]).ok()?.contains("grow").then_some(()),
    )?;
    let m2 = r2.mount("grow", "mnt-2")?;
    common::check_scattered(&m2.path.join("scattered"), pieces, 97)?;
    drop((m1, m2));
    Ok(())
}

/// The most inodes in a piece of an image (`namespace/image_pieces.rs`).
const PART_INODES: usize = 2000;
