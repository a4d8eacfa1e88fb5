//! A volume growing into a region and leaving it, through the state machine alone: the
//! image built where the change was made, installed in pieces, and every region ending
//! with the same namespace while the others keep writing.

use super::backfill::{self, ImagePart, ImagePiece};
use std::collections::BTreeMap;

use meridian_proto::{Hlc, InodeId, RegionId};

use super::test_regions::*;
use redb::ReadableDatabase;

/// Three regions, each a peer of the others; volume "main" in regions 1 and 2 only.
fn three_with_volume_in_two() -> Vec<Region> {
    regions_with_volume_in(3, &[RegionId(1), RegionId(2)])
}

/// A few exchanges between every pair (held records keep coming, so "until nothing moves"
/// would not end while an image is on its way).
fn rounds(regions: &mut [Region], n: usize) {
    for _ in 0..n {
        round(regions);
    }
}

/// Installs every piece of an image in region `r`, in order.
fn install_all(r: &mut Region, parts: &[ImagePiece]) {
    let own = r.id;
    for part in parts {
        r.write(|t| install_image(t, own, &part.part, part.split))
            .unwrap();
    }
}

/// Brings region 3 into volume "main" from region 1 (the addition delivered, the image
/// built and installed), and lets everything travel.
fn add_third(rs: &mut [Region]) {
    let parts = image_to_add_third(rs);
    install_all(&mut rs[2], &parts);
    rounds(rs, 4);
}

/// Adds region 3 to volume "main" from region 1, lets the addition travel and settle, and
/// returns the image region 1 builds for region 3.
fn image_to_add_third(rs: &mut [Region]) -> Vec<ImagePiece> {
    let (volume, since) = add_third_settled(rs);
    image_for_3(&rs[0], volume, since).expect("settled past the addition")
}

/// Adds region 3 to volume "main" from region 1 and lets the addition travel and settle:
/// the volume, and the stamp of the change (the backfill region 3 started).
fn add_third_settled(rs: &mut [Region]) -> (u32, Hlc) {
    let vol = rs[0].read(|r| r.volume("main")).unwrap();
    rs[0]
        .run(Op::SetVolumeRegions {
            name: "main".into(),
            regions: vec![RegionId(1), RegionId(2), RegionId(3)],
        })
        .unwrap();
    rounds(rs, 3);
    promise_all(rs);
    rounds(rs, 3);
    let b = rs[2]
        .write(|t| backfill::get(t.region_state.open().unwrap(), vol.id).unwrap())
        .expect("region 3 started its backfill");
    (vol.id, b.since)
}

/// The image region 1 builds for region 3 now, as a member builds it (in a scratch copy
/// of the state, `crate::backfill::serve::build`), checked against the image built in region 1's
/// own write transaction, never committed.
fn image_for_3(r1: &Region, volume: u32, since: Hlc) -> Option<Vec<ImagePiece>> {
    built_for_3(r1, volume, since).map(|i| i.parts().unwrap())
}

/// The image region 1 builds for region 3 now (as [`image_for_3`] checks it), whole.
fn built_for_3(r1: &Region, volume: u32, since: Hlc) -> Option<backfill::VolumeImage> {
    let tx = r1.db.begin_write().unwrap();
    let reference = {
        let mut t = WriteTables::open(&tx);
        backfill::build_image(&mut t, volume, RegionId(3), since).unwrap()
    };
    tx.abort().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let built = crate::backfill::serve::build(
        &r1.db,
        scratch.path(),
        volume,
        RegionId(3),
        since,
        backfill::RECORDS_MAX,
    )
    .unwrap();
    let files = || std::fs::read_dir(scratch.path()).unwrap().count();
    let built = built.map(|(point, image)| {
        assert_eq!(
            files(),
            1,
            "the image's file alone: the scratch database is gone"
        );
        (point, std::fs::read(&image.file.0).unwrap())
    });
    assert_eq!(
        built,
        reference
            .as_ref()
            .map(|i| (i.point, serde_json::to_vec(i).unwrap())),
        "the image built in a scratch copy differs from the one built in place"
    );
    assert_eq!(files(), 0, "the image's file goes with it");
    reference
}

/// The rows of volume "main" in a region: (inodes, dirents, extents) as it holds them.
fn volume_rows(r: &Region) -> BTreeMap<&'static str, Rows> {
    let mut dump = namespace_dump(r);
    dump.remove("conflicts");
    dump
}

#[test]
fn a_region_added_with_concurrent_writers_ends_identical_and_leaves_cleanly() {
    let mut rs = three_with_volume_in_two();
    let vol = rs[0].read(|r| r.volume("main")).unwrap();
    let root = vol.root;
    // History before the addition: files, a removal, content.
    let a = attr_of(rs[0].run(mknod(root, "a", FileKind::File)));
    let (w, _) = write_op(a.ino, 0, b"content of a");
    rs[0].run(w).unwrap();
    attr_of(rs[1].run(mknod(root, "b", FileKind::Dir)));
    attr_of(rs[1].run(mknod(root, "gone", FileKind::File)));
    rs[1].run(unlink(root, "gone")).unwrap();
    rounds(&mut rs, 3);

    // Region 1 adds region 3 while region 2, not knowing yet, keeps writing.
    let Reply::Volume(v) = rs[0]
        .run(Op::SetVolumeRegions {
            name: "main".into(),
            regions: vec![RegionId(1), RegionId(2), RegionId(3)],
        })
        .unwrap()
    else {
        panic!("a volume back");
    };
    assert_eq!(v.policy.regions.len(), 3);
    let c = attr_of(rs[1].run(mknod(root, "before-knowing", FileKind::File)));
    let (w, _) = write_op(c.ino, 0, b"written by region 2 before it knew");
    rs[1].run(w).unwrap();
    rounds(&mut rs, 3);
    attr_of(rs[1].run(mknod(root, "after-knowing", FileKind::File)));
    attr_of(rs[0].run(mknod(root, "from-1-after", FileKind::File)));
    rounds(&mut rs, 3);

    // Region 3 knows it is being brought in and holds the volume's records back.
    let b = rs[2].write(|t| backfill::get(t.region_state.open().unwrap(), vol.id).unwrap());
    let b = b.expect("region 3 started its backfill");
    assert!(!b.installed);
    assert!(rs[2].read(|r| r.volume("main")).is_err());
    // A refused piece changes nothing.
    let bogus = ImagePart {
        volume: vol.id,
        point: b.since,
        index: 5,
        inodes: b"[]".to_vec(),
        tombs: Vec::new(),
        finish: None,
        whole: false,
    };
    let own = rs[2].id;
    assert!(
        rs[2]
            .write(|t| install_image(t, own, &bogus, false))
            .is_err()
    );

    // Region 3 writes nothing meanwhile: its leader promises later stamps (as the
    // promise loop does), so the others settle past the addition.
    promise_all(&mut rs);
    rounds(&mut rs, 3);
    let parts = image_for_3(&rs[0], vol.id, b.since).expect("settled past the addition");
    for part in &parts {
        rs[2]
            .write(|t| install_image(t, own, &part.part, part.split))
            .unwrap();
        // Proposed twice (a lost answer): installed once.
        rs[2]
            .write(|t| install_image(t, own, &part.part, part.split))
            .unwrap();
    }
    attr_of(rs[2].run(mknod(root, "from-3", FileKind::File)));
    attr_of(rs[1].run(mknod(root, "from-2-late", FileKind::File)));
    rounds(&mut rs, 6);
    let want = volume_rows(&rs[0]);
    for r in &rs {
        assert_eq!(volume_rows(r), want, "region {} differs", r.id.0);
        check_tree(r);
        assert_consistent(r);
    }
    let names = rs[2].names(root);
    for n in [
        "a",
        "b",
        "before-knowing",
        "after-knowing",
        "from-1-after",
        "from-3",
    ] {
        assert!(names.contains(&n.to_string()), "{n} in {names:?}");
    }

    // Region 3 leaves: it drops every row of the volume, the others keep it and go on.
    rs[0]
        .run(Op::SetVolumeRegions {
            name: "main".into(),
            regions: vec![RegionId(1), RegionId(2)],
        })
        .unwrap();
    attr_of(rs[1].run(mknod(root, "after-leave", FileKind::File)));
    rounds(&mut rs, 3);
    promise_all(&mut rs);
    rounds(&mut rs, 3);
    while !rs[2].write(|t| super::leave::leave_step(t, vol.id).unwrap()) {}
    rounds(&mut rs, 3);
    let dump = namespace_dump(&rs[2]);
    for table in [
        "inodes",
        "dirents",
        "extents",
        "volumes",
        "block_refs",
        "tombs",
    ] {
        assert!(
            dump[table].is_empty(),
            "{table} of region 3: {:?}",
            dump[table]
        );
    }
    assert_eq!(volume_rows(&rs[0]), volume_rows(&rs[1]));
    assert!(rs[0].names(root).contains(&"after-leave".to_string()));
    // Region 3 refuses local changes to a volume it left (it no longer has it).
    assert!(rs[2].run(mknod(root, "late", FileKind::File)).is_err());
}

#[test]
fn an_addition_is_refused_for_regions_that_are_not_peers_and_for_removing_oneself() {
    let mut rs = three_with_volume_in_two();
    let set = |regions: Vec<u16>| Op::SetVolumeRegions {
        name: "main".into(),
        regions: regions.into_iter().map(RegionId).collect(),
    };
    let before = namespace_dump(&rs[0]);
    assert!(matches!(
        rs[0].run(set(vec![1, 2, 9])),
        Err(NsError::Invalid(_))
    ));
    assert!(matches!(rs[0].run(set(vec![2])), Err(NsError::Invalid(_))));
    assert!(matches!(rs[0].run(set(vec![])), Err(NsError::Invalid(_))));
    assert!(matches!(
        rs[0].run(set(vec![1, 1])),
        Err(NsError::Invalid(_))
    ));
    assert_eq!(namespace_dump(&rs[0]), before, "a refusal changes nothing");
}

#[test]
fn a_region_that_left_is_brought_back_in_with_everything_written_meanwhile() {
    let mut rs = three_with_volume_in_two();
    let vol = rs[0].read(|r| r.volume("main")).unwrap();
    let root = vol.root;
    attr_of(rs[0].run(mknod(root, "first", FileKind::File)));
    rounds(&mut rs, 3);
    add_third(&mut rs);
    assert!(rs[2].names(root).contains(&"first".to_string()));

    rs[0]
        .run(Op::SetVolumeRegions {
            name: "main".into(),
            regions: vec![RegionId(1), RegionId(2)],
        })
        .unwrap();
    rounds(&mut rs, 3);
    promise_all(&mut rs);
    rounds(&mut rs, 3);
    while !rs[2].write(|t| super::leave::leave_step(t, vol.id).unwrap()) {}
    attr_of(rs[1].run(mknod(root, "while-away", FileKind::File)));
    rounds(&mut rs, 3);
    assert!(rs[2].read(|r| r.volume("main")).is_err());

    add_third(&mut rs);
    let want = volume_rows(&rs[0]);
    for r in &rs {
        assert_eq!(volume_rows(r), want, "region {} differs", r.id.0);
        assert_consistent(r);
    }
    let names = rs[2].names(root);
    assert!(names.contains(&"while-away".to_string()), "{names:?}");
}

#[test]
fn pieces_touching_another_volume_and_additions_of_two_regions_are_refused() {
    let mut rs = three_with_volume_in_two();
    let vol = rs[0].read(|r| r.volume("main")).unwrap();
    assert!(matches!(
        rs[0].run(Op::SetVolumeRegions {
            name: "main".into(),
            regions: vec![RegionId(1), RegionId(2), RegionId(3), RegionId(4)],
        }),
        Err(NsError::Invalid(_))
    ));
    // Region 3 holds a volume of its own.
    rs[2]
        .run(Op::CreateVolume {
            name: "local".into(),
            policy: VolumePolicy::default(),
        })
        .unwrap();
    let local = rs[2].read(|r| r.volume("local")).unwrap();
    rs[0]
        .run(Op::SetVolumeRegions {
            name: "main".into(),
            regions: vec![RegionId(1), RegionId(2), RegionId(3)],
        })
        .unwrap();
    rounds(&mut rs, 3);
    let b = rs[2]
        .write(|t| backfill::get(t.region_state.open().unwrap(), vol.id).unwrap())
        .expect("started");
    let before = namespace_dump(&rs[2]);
    // A piece naming region 3's own root as one of the volume's inodes.
    let mut hostile = backfill::InodeRows {
        ino: local.root,
        ..Default::default()
    };
    hostile.inode = rs[2].read(|r| r.inode(local.root)).ok();
    if let Some(i) = hostile.inode.as_mut() {
        i.attr.volume = vol.id;
    }
    let part = ImagePart {
        volume: vol.id,
        point: b.since,
        index: 0,
        inodes: serde_json::to_vec(&vec![hostile]).unwrap(),
        tombs: Vec::new(),
        finish: None,
        whole: false,
    };
    let own = rs[2].id;
    assert!(matches!(
        rs[2].write(|t| install_image(t, own, &part, false)),
        Err(NsError::Invalid(_))
    ));
    assert_eq!(
        namespace_dump(&rs[2]),
        before,
        "a refused piece changes nothing"
    );
    // The serving region says the image will never come: the backfill is given up and
    // the volume's records stop waiting.
    rs[2].write(|t| backfill::cancel(t, vol.id).unwrap());
    assert!(
        rs[2]
            .write(|t| backfill::get(t.region_state.open().unwrap(), vol.id).unwrap())
            .is_none()
    );
    attr_of(rs[0].run(mknod(vol.root, "after", FileKind::File)));
    rounds(&mut rs, 3);
    assert!(rs[2].read(|r| r.volume("main")).is_err());
}

#[test]
fn a_volume_may_name_a_relayed_region_only_with_the_region_that_relays_it() {
    // Region 1 is a peer of 2 only, and hears of 3 through 2 (a chain 1 - 2 - 3).
    let mut r1 = Region::new(1, &[RegionId(2)]);
    r1.write(|t| merge::set_relayed(t, &[(RegionId(3), RegionId(2))]).unwrap());
    let create = |name: &str, regions: &[u16]| Op::CreateVolume {
        name: name.into(),
        policy: VolumePolicy {
            regions: regions.iter().copied().map(RegionId).collect(),
            ..VolumePolicy::default()
        },
    };
    let before = namespace_dump(&r1);
    assert!(matches!(
        r1.run(create("skips", &[1, 3])),
        Err(NsError::Invalid(_))
    ));
    assert_eq!(namespace_dump(&r1), before, "a refusal changes nothing");
    r1.run(create("chain", &[1, 2, 3])).unwrap();
    assert!(matches!(
        r1.run(Op::SetVolumeRegions {
            name: "chain".into(),
            regions: vec![RegionId(1), RegionId(3)],
        }),
        Err(NsError::Invalid(_))
    ));
}

#[test]
fn records_of_other_volumes_go_on_while_an_image_is_on_its_way() {
    // "main" lives in regions 1 and 2; "everywhere" in all three.
    let mut rs = three_with_volume_in_two();
    rs[0]
        .run(Op::CreateVolume {
            name: "everywhere".into(),
            policy: VolumePolicy {
                regions: vec![RegionId(1), RegionId(2), RegionId(3)],
                ..VolumePolicy::default()
            },
        })
        .unwrap();
    rounds(&mut rs, 3);
    let main = rs[0].read(|r| r.volume("main")).unwrap();
    let other = rs[0].read(|r| r.volume("everywhere")).unwrap().root;

    // Region 1 adds region 3 to "main", then writes in both volumes.
    rs[0]
        .run(Op::SetVolumeRegions {
            name: "main".into(),
            regions: vec![RegionId(1), RegionId(2), RegionId(3)],
        })
        .unwrap();
    attr_of(rs[0].run(mknod(main.root, "while-coming", FileKind::File)));
    attr_of(rs[0].run(mknod(other, "meanwhile", FileKind::File)));
    rounds(&mut rs, 3);

    // Region 3 has the other volume's change while "main"'s record waits apart for the
    // image.
    assert!(rs[2].lookup(other, "meanwhile").is_ok());
    assert!(rs[2].read(|r| r.volume("main")).is_err());
    let waiting = |r: &Region| {
        r.write(|t| backfill::parked_count(t.parked.open().unwrap(), main.id, 100).unwrap())
    };
    assert_eq!(waiting(&rs[2]), 1);

    // The image comes: what waited applies, and region 3 holds "main" as the others do.
    promise_all(&mut rs);
    rounds(&mut rs, 3);
    let b = rs[2]
        .write(|t| backfill::get(t.region_state.open().unwrap(), main.id).unwrap())
        .expect("region 3 started its backfill");
    let parts = image_for_3(&rs[0], main.id, b.since).expect("settled past the addition");
    install_all(&mut rs[2], &parts);
    rounds(&mut rs, 4);
    assert_eq!(waiting(&rs[2]), 0);
    assert_eq!(rs[2].names(main.root), rs[0].names(main.root));
    assert!(rs[2].lookup(main.root, "while-coming").is_ok());
    assert_eq!(volume_rows(&rs[2]), volume_rows(&rs[0]));
    for r in &rs {
        assert_consistent(r);
    }
}

#[test]
fn an_image_whose_file_carries_a_cut_is_refused() {
    // An image's files hold their content alone, no cut (`image::give_rows`): a file in
    // an image with one pending is a hostile image's, and would hide the file's extents.
    let mut rs = three_with_volume_in_two();
    let root = rs[0].volume_root();
    let f = attr_of(rs[0].run(mknod(root, "f", FileKind::File))).ino;
    let (op, _) = write_op(f, 0, b"bytes");
    rs[0].run(op).unwrap();
    rounds(&mut rs, 3);
    let mut parts = image_to_add_third(&mut rs);
    let mut rows: Vec<backfill::InodeRows> = serde_json::from_slice(&parts[0].part.inodes).unwrap();
    let file = rows
        .iter_mut()
        .filter_map(|r| r.inode.as_mut())
        .find(|i| i.attr.ino == f)
        .expect("the file is in the image's first piece");
    file.cuts = vec![meridian_proto::ns::Cut {
        from: 0,
        to: u64::MAX,
    }];
    parts[0].part.inodes = serde_json::to_vec(&rows).unwrap();
    let own = rs[2].id;
    let refused = rs[2].write(|t| install_image(t, own, &parts[0].part, parts[0].split));
    assert!(
        matches!(&refused, Err(NsError::Invalid(m)) if m.contains("cut pending")),
        "{refused:?}"
    );
}

#[test]
fn an_image_carries_a_cut_files_content_alone() {
    // Region 1 cut a file and has not stepped through the leftovers: the image holds what
    // the file holds, no cut and no leftover, and region 3 ends reading what region 1
    // reads.
    use super::trim_tests::{extents_of, fragment, set_size};
    let mut rs = three_with_volume_in_two();
    let root = rs[0].volume_root();
    let n = super::trim::STEP;
    let size = 10 * 4096 + 50;
    let f = attr_of(rs[0].run(mknod(root, "cut", FileKind::File))).ino;
    fragment(&mut rs[0], f, n);
    set_size(&mut rs[0], f, size).unwrap();
    rounds(&mut rs, 3);
    let parts = image_to_add_third(&mut rs);
    assert_eq!(
        extents_of(&rs[0], f),
        n,
        "region 1 holds the leftovers still"
    );
    let rows: Vec<backfill::InodeRows> = parts
        .iter()
        .flat_map(|p| serde_json::from_slice::<Vec<backfill::InodeRows>>(&p.part.inodes).unwrap())
        .filter(|r| r.ino == f)
        .collect();
    assert_eq!(rows.len(), 1, "the file is in the image");
    assert_eq!(
        rows[0].inode.as_ref().map(|i| i.cuts.len()),
        Some(0),
        "no cut"
    );
    assert_eq!(rows[0].extents.len(), 11, "the content alone");
    assert!(rows[0].extents.iter().all(|e| e.end() <= size));
    install_all(&mut rs[2], &parts);
    rounds(&mut rs, 4);
    assert_eq!(file_extents(&rs[2], f), file_extents(&rs[0], f));
    assert_eq!(extents_of(&rs[2], f), 11);
    assert_consistent(&rs[2]);
}

#[test]
fn an_image_is_built_while_the_state_is_held_by_its_writer() {
    let mut rs = three_with_volume_in_two();
    let root = rs[0].read(|r| r.volume("main")).unwrap().root;
    let tag = |ino, value: &[u8]| Op::SetXattr {
        ino,
        name: b"user.tag".to_vec(),
        value: value.to_vec(),
        mode: XattrMode::Any,
        creds: root_creds(),
    };
    let mut files = Vec::new();
    for name in ["a", "b", "c"] {
        let f = attr_of(rs[0].run(mknod(root, name, FileKind::File)));
        let (w, _) = write_op(f.ino, 0, name.as_bytes());
        rs[0].run(w).unwrap();
        rs[0].run(tag(f.ino, name.as_bytes())).unwrap();
        files.push(f.ino);
    }
    let d = attr_of(rs[1].run(mknod(root, "d", FileKind::Dir)));
    rounds(&mut rs, 3);
    let (volume, since) = add_third_settled(&mut rs);
    // A tombstone kept past the image's point (as one whose extents go in steps is): c's,
    // put back after the regions settled on its removal and purged it.
    let c = rs[0].write(|t| super::tables::read_inode(t.inodes().unwrap(), files[2]).unwrap());
    rs[0].run(unlink(root, "c")).unwrap();
    rounds(&mut rs, 3);
    promise_all(&mut rs);
    rounds(&mut rs, 3);
    let tomb = super::tables::Tomb {
        inode: c.expect("c was there"),
        dir: root,
        name: b"c".to_vec(),
        at: rs[0].head().unwrap(),
    };
    let row = serde_json::to_vec(&tomb).unwrap();
    rs[0].write(|t| {
        t.write(Tab::Tombs, &files[2].0.to_be_bytes(), Some(&row))
            .unwrap()
    });
    // Changes after the image's point (not settled yet: region 3 has not seen them), which
    // the image's rewind takes out: a file in d (d's times and link count), a retag, a
    // removal, a write.
    attr_of(rs[0].run(mknod(d.ino, "e", FileKind::File)));
    rs[0].run(tag(files[0], b"later")).unwrap();
    rs[0].run(unlink(root, "b")).unwrap();
    let (w, _) = write_op(files[0], 1, b"later");
    rs[0].run(w).unwrap();
    // Region 1's state held by its writer, as an entry being applied holds it (redb has
    // one): the image is built meanwhile, from what the last commit left.
    let held = rs[0].db.begin_write().unwrap();
    let (done, built) = std::sync::mpsc::channel();
    let db = rs[0].db.clone();
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().to_path_buf();
    std::thread::spawn(move || {
        let _ = done.send(crate::backfill::serve::build(
            &db,
            &dir,
            volume,
            RegionId(3),
            since,
            backfill::RECORDS_MAX,
        ));
    });
    // A guard against a hang, not a measure: the old build waited for the writer for ever.
    let built = built
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the image is built while the writer is held")
        .unwrap()
        .expect("settled past the addition");
    held.abort().unwrap();
    let parts = image_for_3(&rs[0], volume, since).expect("settled past the addition");
    let image: backfill::VolumeImage =
        serde_json::from_slice(&std::fs::read(&built.1.file.0).unwrap()).unwrap();
    let names = |rows: &backfill::InodeRows| rows.dirents.len();
    assert_eq!(
        image.inodes.iter().map(names).sum::<usize>(),
        3,
        "a, b and d: the image is of its point, before e and b's removal"
    );
    let tags: Vec<&[u8]> = image
        .inodes
        .iter()
        .flat_map(|r| r.xattrs.iter().map(|(_, v)| v.as_slice()))
        .collect();
    assert_eq!(tags.len(), 2, "a's and b's tags are in the image");
    assert_eq!(image.tombs.len(), 1, "c's tombstone is in the image");
    assert!(
        tags.contains(&b"a".as_slice()),
        "a's tag as it was: {tags:?}"
    );
    assert_eq!(image.parts().unwrap(), parts);
}

/// Volume "main" with a directory of 200 names, a file of 300 extents, small files and a
/// tagged file,
/// added to region 3: the regions, the directory, the file, and the image built for
/// region 3.
fn many_rows_to_add_third() -> (Vec<Region>, InodeId, InodeId, backfill::VolumeImage) {
    let mut rs = three_with_volume_in_two();
    let root = rs[0].volume_root();
    let dir = attr_of(rs[0].run(mknod(root, "many", FileKind::Dir))).ino;
    for i in 0..200 {
        attr_of(rs[0].run(mknod(dir, &format!("name-{i:04}"), FileKind::File)));
    }
    let f = attr_of(rs[0].run(mknod(root, "fragmented", FileKind::File))).ino;
    super::trim_tests::fragment(&mut rs[0], f, 300);
    // Small files after it (the image takes a directory's files in their names' order).
    for name in ["g0", "g1", "g2"] {
        attr_of(rs[0].run(mknod(root, name, FileKind::File)));
    }
    let tagged = attr_of(rs[0].run(mknod(root, "tagged", FileKind::File))).ino;
    rs[0]
        .run(Op::SetXattr {
            ino: tagged,
            name: b"user.tag".to_vec(),
            value: vec![7; 1000],
            mode: XattrMode::Any,
            creds: root_creds(),
        })
        .unwrap();
    rounds(&mut rs, 3);
    let (volume, since) = add_third_settled(&mut rs);
    let image = built_for_3(&rs[0], volume, since).expect("settled past the addition");
    (rs, dir, f, image)
}

/// Installs `p` in `r`, as its members apply it.
fn install(r: &Region, p: &ImagePiece) {
    let own = r.id;
    r.write(|t| install_image(t, own, &p.part, p.split))
        .unwrap();
}

/// What `r` knows of bringing `volume` in.
fn backfill_of(r: &Region, volume: u32) -> backfill::Backfill {
    r.write(|t| backfill::get(t.region_state.open().unwrap(), volume).unwrap())
        .expect("a backfill of the volume")
}

/// `image` as the serving leader writes it while it builds it (`JsonImage`).
fn written(image: &backfill::VolumeImage) -> Vec<u8> {
    use backfill::ImageSink;
    let mut json = backfill::JsonImage::new(Vec::new());
    json.begin(image.point, &image.volume).unwrap();
    for rows in &image.inodes {
        json.inode(rows.clone()).unwrap();
    }
    for (tomb, rows) in &image.tombs {
        json.tomb(tomb.clone(), rows.clone()).unwrap();
    }
    json.end(image.records.clone()).unwrap();
    json.into_inner()
}

/// The pieces of `image` as a receiving leader cuts them: read from its JSON (as served)
/// a row at a time.
fn streamed(image: &backfill::VolumeImage, limit: usize) -> Vec<ImagePiece> {
    read_cut(&serde_json::to_vec(image).unwrap(), image, limit, false)
}

/// The pieces of `image` read from `json` (its JSON, or the same rows otherwise written),
/// cut in pieces of about `limit` bytes (with `whole`, each inode whole in a piece).
fn read_cut(
    json: &[u8],
    image: &backfill::VolumeImage,
    limit: usize,
    whole: bool,
) -> Vec<ImagePiece> {
    let mut got = Vec::new();
    let read = backfill::read_pieces(json, image.volume.id, limit, whole, |p| {
        got.push(p);
        true
    })
    .unwrap();
    assert_eq!(read.name, image.volume.name);
    assert_eq!(read.inodes, image.inodes.len() as u64);
    got
}

#[test]
fn an_image_read_a_piece_at_a_time_refuses_what_is_not_the_volumes_whole_image() {
    let (_, _, _, image) = many_rows_to_add_third();
    let limit = 4096;
    let json = serde_json::to_vec(&image).unwrap();
    let read = |json: &[u8], volume: u32, stop_after: usize| {
        let mut got = 0;
        let r = backfill::read_pieces(json, volume, limit, false, |_| {
            got += 1;
            got <= stop_after
        });
        (r.map(|r| r.inodes), got)
    };
    let all = streamed(&image, limit).len();
    assert!(all > 5);
    assert!(matches!(read(&json, image.volume.id, usize::MAX), (Ok(_), n) if n == all));
    // Another volume's image: nothing is given.
    let (other, given) = read(&json, image.volume.id + 1, usize::MAX);
    assert!(other.unwrap_err().contains("was sent volume"));
    assert_eq!(given, 0);
    // Cut short, or damaged: an error once it is found (the caller starts over; a new
    // image wipes what the pieces given installed, the same image skips them).
    for bad in [&json[..json.len() / 2], &json[..json.len() - 1]] {
        let (r, given) = read(bad, image.volume.id, usize::MAX);
        assert!(r.unwrap_err().contains("damaged"), "{given}");
        assert!(given < all);
    }
    // Fields out of order, twice, missing, unknown, or no inode: refused, and the volume's
    // row (the last piece, which makes the volume appear) never given.
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let doc = |fields: &[&str], inodes: &serde_json::Value| {
        let body: Vec<String> = fields
            .iter()
            .map(|f| {
                let value = if *f == "inodes" { inodes } else { &v[*f] };
                format!("{f:?}:{value}")
            })
            .collect();
        format!("{{{}}}", body.join(",")).into_bytes()
    };
    let all_fields = ["point", "volume", "inodes", "tombs", "records"];
    // (The fields in the order written read whole: what follows is refused for its order.)
    let whole = doc(&all_fields, &v["inodes"]);
    assert!(matches!(read(&whole, image.volume.id, usize::MAX), (Ok(_), n) if n == all));
    let none = serde_json::Value::Array(Vec::new());
    for (fields, inodes) in [
        (
            &["point", "volume", "records", "inodes", "tombs"][..],
            &v["inodes"],
        ),
        (
            &["point", "volume", "inodes", "inodes", "tombs", "records"][..],
            &v["inodes"],
        ),
        (&["point", "volume", "tombs", "records"][..], &v["inodes"]),
        (
            &["point", "volume", "inodes", "tombs", "records", "more"][..],
            &v["inodes"],
        ),
        (&all_fields[..], &none),
    ] {
        let bad = doc(fields, inodes);
        let mut finish = false;
        let r = backfill::read_pieces(bad.as_slice(), image.volume.id, limit, false, |p| {
            finish |= p.part.finish.is_some();
            true
        });
        assert!(r.is_err(), "{fields:?}");
        assert!(!finish, "{fields:?}: the last piece was given");
    }
    // The install stops taking pieces: the reading stops there.
    let (stopped, given) = read(&json, image.volume.id, 2);
    assert!(stopped.unwrap_err().contains("stopped"));
    assert_eq!(given, 3, "two taken, the third refused");
}

/// The rows of `ino` in each piece that has some: (the piece's index, with the inode or
/// the tombstone, rows).
fn rows_by_piece(pieces: &[ImagePiece], ino: InodeId) -> Vec<(u32, bool, usize)> {
    let mut out = Vec::new();
    for p in pieces {
        let mut rows: Vec<(bool, backfill::InodeRows)> =
            serde_json::from_slice::<Vec<backfill::InodeRows>>(&p.part.inodes)
                .unwrap()
                .into_iter()
                .map(|r| (r.inode.is_some(), r))
                .collect();
        if !p.part.tombs.is_empty() {
            let tombs: Vec<(super::tables::Tomb, backfill::InodeRows)> =
                serde_json::from_slice(&p.part.tombs).unwrap();
            rows.extend(tombs.into_iter().map(|(_, r)| (true, r)));
        }
        for (head, r) in rows.into_iter().filter(|(_, r)| r.ino == ino) {
            let n = r.dirents.len() + r.xattrs.len() + r.extents.len();
            out.push((p.part.index, head, n));
        }
    }
    out
}

#[test]
fn a_directory_of_many_names_and_a_file_of_many_extents_go_over_several_pieces() {
    let (mut rs, dir, f, image) = many_rows_to_add_third();
    // Cut as the image's size says: nothing is larger than a piece, so the pieces are the
    // ones an older member installs (no split piece, no field it does not know).
    let whole = image.clone().parts().unwrap();
    assert!(whole.iter().all(|p| !p.split));
    for p in &whole {
        let json = String::from_utf8(serde_json::to_vec(&p.part).unwrap()).unwrap();
        assert!(!json.contains("tombs"), "{json}");
    }
    // Cut small, as a directory of a million names is cut at the real size.
    let limit = 4096;
    let pieces = image.clone().pieces_within(limit, false).unwrap();
    for p in &pieces {
        assert!(
            p.part.inodes.len() + p.part.tombs.len() <= limit + 2,
            "piece {} holds {} bytes of rows",
            p.part.index,
            p.part.inodes.len()
        );
    }
    assert_eq!(
        streamed(&image, limit),
        pieces,
        "read a piece at a time, cut alike"
    );
    let spans = |ino| rows_by_piece(&pieces, ino);
    for (ino, rows) in [(dir, 200), (f, 300)] {
        let span = spans(ino);
        assert!(span.len() >= 3, "inode {ino} in pieces {span:?}");
        assert_eq!(span.iter().filter(|(_, head, _)| *head).count(), 1);
        assert!(span[0].1, "the inode comes first");
        assert_eq!(span.iter().map(|(_, _, n)| n).sum::<usize>(), rows);
        // In consecutive pieces, each its own after the first.
        assert!(span.windows(2).all(|w| w[1].0 == w[0].0 + 1), "{span:?}");
    }
    for p in &pieces {
        let rows: Vec<backfill::InodeRows> = serde_json::from_slice(&p.part.inodes).unwrap();
        assert_eq!(p.split, rows.iter().any(|r| r.inode.is_none()));
    }
    // The images cut either way hold the same rows.
    let all_rows = |ps: &[ImagePiece]| {
        let mut rows: Vec<(InodeId, usize)> = Vec::new();
        for p in ps {
            for r in serde_json::from_slice::<Vec<backfill::InodeRows>>(&p.part.inodes).unwrap() {
                rows.push((r.ino, r.dirents.len() + r.xattrs.len() + r.extents.len()));
            }
        }
        let mut by: BTreeMap<InodeId, usize> = BTreeMap::new();
        for (ino, n) in rows {
            *by.entry(ino).or_default() += n;
        }
        by
    };
    assert_eq!(all_rows(&pieces), all_rows(&whole));

    let own = rs[2].id;
    // A split piece going on with an inode's last rows, then beginning others.
    let first_split = pieces
        .iter()
        .position(|p| p.split && p.heads > 0)
        .expect("a split piece that begins inodes too");
    for p in &pieces[..first_split] {
        install(&rs[2], p);
    }
    // What a leader going on with the install checks: the inodes the pieces installed so
    // far began.
    let b = backfill_of(&rs[2], image.volume.id);
    let began: u64 = pieces[..first_split].iter().map(|p| p.heads).sum();
    assert_eq!((b.parts as usize, b.inodes), (first_split, began));
    assert_eq!(
        pieces.iter().map(|p| p.heads).sum::<u64>(),
        image.inodes.len() as u64
    );
    // A split piece by the older request is refused, and changes nothing; so are rows
    // going on from an inode the image did not bring.
    let before = namespace_dump(&rs[2]);
    let split = &pieces[first_split].part;
    let refused = rs[2].write(|t| install_image(t, own, split, false));
    assert!(
        matches!(&refused, Err(NsError::Invalid(m)) if m.contains("without the inode")),
        "{refused:?}"
    );
    let local = make_volume(&mut rs[2], "local", vec![RegionId(3)]);
    let before_local = namespace_dump(&rs[2]);
    for stranger in [local, InodeId(u64::MAX / 2)] {
        let mut rows: Vec<backfill::InodeRows> = serde_json::from_slice(&split.inodes).unwrap();
        let at = rows.iter().position(|r| r.inode.is_none()).unwrap();
        let mut go_on = rows.remove(at);
        go_on.ino = stranger;
        for (k, _) in go_on.dirents.iter_mut().chain(go_on.xattrs.iter_mut()) {
            k[..8].copy_from_slice(&stranger.0.to_be_bytes());
        }
        // Last, after inodes the piece begins: what they wrote is undone.
        assert!(rows.iter().any(|r| r.inode.is_some()));
        rows.push(go_on);
        let hostile = ImagePart {
            inodes: serde_json::to_vec(&rows).unwrap(),
            ..split.clone()
        };
        let refused = rs[2].write(|t| install_image(t, own, &hostile, true));
        assert!(matches!(&refused, Err(NsError::Invalid(_))), "{refused:?}");
        assert_eq!(
            namespace_dump(&rs[2]),
            before_local,
            "a refused piece changes nothing"
        );
    }
    assert_ne!(before, before_local, "the local volume is there");
    for p in &pieces[first_split..] {
        install(&rs[2], p);
        // Proposed twice (a lost answer): installed once.
        install(&rs[2], p);
    }
    let b = backfill_of(&rs[2], image.volume.id);
    assert!(b.installed);
    assert_eq!(
        b.inodes,
        image.inodes.len() as u64,
        "each inode counted once"
    );
    rounds(&mut rs, 4);
    let mut got = volume_rows(&rs[2]);
    // Region 3's own volume aside.
    let of_local = |k: &[u8]| k.starts_with(&local.0.to_be_bytes()) || k == b"local";
    for rows in got.values_mut() {
        rows.retain(|(k, _)| !of_local(k));
    }
    assert_eq!(got, volume_rows(&rs[0]));
    assert_eq!(rs[2].names(dir).len(), 200);
    assert_eq!(file_extents(&rs[2], f), file_extents(&rs[0], f));
    for r in &rs {
        assert_consistent(r);
    }
}

/// File `f` of `image` as a tombstone kept with its extents (as a removed file's are until
/// every region settled past its removal), its name gone from the root; its extents.
fn as_tomb(image: &mut backfill::VolumeImage, f: InodeId) -> Vec<Extent> {
    let at = image.inodes.iter().position(|r| r.ino == f).unwrap();
    let mut rows = image.inodes.remove(at);
    let mut inode = rows.inode.take().unwrap();
    inode.attr.nlink = 0;
    let root = image.volume.root;
    let root_rows = image.inodes.iter_mut().find(|r| r.ino == root).unwrap();
    root_rows
        .dirents
        .retain(|(k, v)| super::tables::decode_dirent(k, v).unwrap().ino != f);
    let extents = rows.extents.clone();
    let tomb = super::tables::Tomb {
        inode,
        dir: root,
        name: b"fragmented".to_vec(),
        at: image.point,
    };
    image.tombs.push((tomb, rows));
    extents
}

#[test]
fn tombstones_that_do_not_fit_the_last_piece_go_before_it_and_their_rows_over_several() {
    let (rs, _, f, mut image) = many_rows_to_add_third();
    let extents = as_tomb(&mut image, f);

    // Written as it is built, with no tombstone, one or two: the image's own bytes.
    let mut two = image.clone();
    two.tombs.push(two.tombs[0].clone());
    let mut none = image.clone();
    none.tombs.clear();
    for i in [&none, &image, &two] {
        assert_eq!(written(i), serde_json::to_vec(i).unwrap());
    }
    // Cut as the image's size says, the tombstones ride in the last piece, as before.
    let whole = image.clone().parts().unwrap();
    assert!(whole.iter().all(|p| !p.split && p.part.tombs.is_empty()));
    let limit = 4096;
    let pieces = image.clone().pieces_within(limit, false).unwrap();
    assert_eq!(
        streamed(&image, limit),
        pieces,
        "read a piece at a time, cut alike"
    );
    let last = pieces.last().unwrap();
    assert!(last.part.finish.is_some() && !last.split);
    let span = rows_by_piece(&pieces, f);
    assert!(span.len() >= 3, "{span:?}");
    assert!(span[0].1, "the tombstone comes first");
    assert!(span.iter().all(|(i, _, _)| *i < last.part.index));
    assert_eq!(span.iter().map(|(_, _, n)| n).sum::<usize>(), 300);
    for p in &pieces {
        assert!(p.part.inodes.len() + p.part.tombs.len() <= limit + 2);
        let rows: Vec<backfill::InodeRows> = serde_json::from_slice(&p.part.inodes).unwrap();
        let split = !p.part.tombs.is_empty() || rows.iter().any(|r| r.inode.is_none());
        assert_eq!(p.split, split, "piece {}", p.part.index);
    }
    // Tombstones before the last piece by the older request: refused.
    let own = rs[2].id;
    let with_tomb = pieces.iter().find(|p| !p.part.tombs.is_empty()).unwrap();
    for p in pieces
        .iter()
        .take_while(|p| p.part.index < with_tomb.part.index)
    {
        install(&rs[2], p);
    }
    let before = namespace_dump(&rs[2]);
    let refused = rs[2].write(|t| install_image(t, own, &with_tomb.part, false));
    assert!(matches!(&refused, Err(NsError::Invalid(_))), "{refused:?}");
    assert_eq!(
        namespace_dump(&rs[2]),
        before,
        "a refused piece changes nothing"
    );
    for p in pieces.iter().skip(with_tomb.part.index as usize) {
        install(&rs[2], p);
    }
    assert!(
        rs[2].write(|t| t.tomb(f).unwrap()).is_some(),
        "the tombstone is here"
    );
    let kept = rs[2].write(|t| read_extents(t.extents().unwrap(), f, 0, u64::MAX).unwrap());
    assert_eq!(kept, extents, "with every extent");
    assert_consistent(&rs[2]);
}

/// Cut for a group with members older than split pieces: each inode whole in a piece
/// however large, the tombstones in the last, every piece one such a member installs by
/// the request it reads; the install notes the way it was cut.
#[test]
fn an_image_cut_for_older_members_keeps_each_inode_whole_and_its_tombstones_last() {
    let (mut rs, dir, f, mut image) = many_rows_to_add_third();
    let extents = as_tomb(&mut image, f);
    let limit = 4096;
    let json = serde_json::to_vec(&image).unwrap();
    let mut pieces = Vec::new();
    backfill::read_pieces(json.as_slice(), image.volume.id, limit, true, |p| {
        pieces.push(p);
        true
    })
    .unwrap();
    assert!(pieces.len() >= 2, "{} pieces", pieces.len());
    let last = pieces.last().unwrap();
    assert!(last.part.finish.is_some());
    for p in &pieces {
        assert!(!p.split && p.part.whole && p.part.tombs.is_empty());
        let rows: Vec<backfill::InodeRows> = serde_json::from_slice(&p.part.inodes).unwrap();
        assert!(
            rows.iter().all(|r| r.inode.is_some()),
            "every inode with its rows"
        );
    }
    assert_eq!(
        rows_by_piece(&pieces, dir),
        [(rows_by_piece(&pieces, dir)[0].0, true, 200)]
    );
    // The directory's piece holds more than the limit: it was not cut.
    let at = rows_by_piece(&pieces, dir)[0].0 as usize;
    assert!(pieces[at].part.inodes.len() > limit);
    assert_eq!(
        pieces.iter().map(|p| p.heads).sum::<u64>(),
        image.inodes.len() as u64
    );
    // An older member reads the piece and leaves the field it does not know.
    let json = String::from_utf8(serde_json::to_vec(&pieces[0].part).unwrap()).unwrap();
    assert!(json.contains("\"whole\":true"), "{json}");

    // Installed by the older request, piece by piece, as the older members do.
    let own = rs[2].id;
    for p in &pieces {
        rs[2]
            .write(|t| install_image(t, own, &p.part, false))
            .unwrap();
        let b = backfill_of(&rs[2], image.volume.id);
        assert!(b.whole, "the install notes how its pieces were cut");
    }
    assert!(backfill_of(&rs[2], image.volume.id).installed);
    rounds(&mut rs, 4);
    assert_eq!(rs[2].names(dir).len(), 200);
    assert!(rs[2].write(|t| t.tomb(f).unwrap()).is_some());
    let kept = rs[2].write(|t| read_extents(t.extents().unwrap(), f, 0, u64::MAX).unwrap());
    assert_eq!(kept, extents, "the tombstone with every extent");
    assert_consistent(&rs[2]);
}

/// Read from its JSON, an inode of more rows than a piece holds goes in the same pieces as
/// cut whole, whatever the size of a piece, and its first pieces go before the reading
/// reached its last rows: the reader never holds it whole.
#[test]
fn an_image_read_a_row_at_a_time_is_cut_as_it_would_be_whole() {
    use std::cell::Cell;
    use std::rc::Rc;
    let (_, dir, f, image) = many_rows_to_add_third();
    let mut with_tomb = image.clone();
    as_tomb(&mut with_tomb, f);
    for image in [&image, &with_tomb] {
        for limit in [200, 700, 1500, 4096, 9000, 1 << 20] {
            assert_eq!(
                streamed(image, limit),
                image.clone().pieces_within(limit, false).unwrap(),
                "limit {limit}"
            );
        }
    }

    /// A reader that counts what it gave.
    struct Counted<'a>(&'a [u8], Rc<Cell<usize>>);
    impl std::io::Read for Counted<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = std::io::Read::read(&mut self.0, buf)?;
            self.1.set(self.1.get() + n);
            Ok(n)
        }
    }
    let json = serde_json::to_vec(&image).unwrap();
    let dir_rows = image.inodes.iter().find(|r| r.ino == dir).unwrap();
    let last_name = serde_json::to_string(&dir_rows.dirents.last().unwrap().0).unwrap();
    let text = String::from_utf8(json.clone()).unwrap();
    let last_at = text
        .rfind(&last_name)
        .expect("the directory's last name in the image");
    let read = Rc::new(Cell::new(0));
    let mut first_given_at = None;
    backfill::read_pieces(
        Counted(&json, read.clone()),
        image.volume.id,
        700,
        false,
        |p| {
            if first_given_at.is_none() && !rows_by_piece(std::slice::from_ref(&p), dir).is_empty()
            {
                first_given_at = Some(read.get());
            }
            true
        },
    )
    .unwrap();
    let at = first_given_at.expect("a piece of the directory");
    assert!(
        at < last_at,
        "the directory's first piece went at byte {at}, its last name is at {last_at}"
    );
}

/// An install taken over by a leader that cuts the image otherwise (whole, then split: a
/// member of the version before goes on with it) gets a piece beginning with rows a piece
/// before installed already: they are installed once, and the blocks' counts stay right.
#[test]
fn an_install_going_on_cut_otherwise_installs_rows_once() {
    let (mut rs, _, f, image) = many_rows_to_add_third();
    let limit = 4096;
    let json = serde_json::to_vec(&image).unwrap();
    let cut = |whole| {
        let mut out = Vec::new();
        backfill::read_pieces(json.as_slice(), image.volume.id, limit, whole, |p| {
            out.push(p);
            true
        })
        .unwrap();
        out
    };
    let (whole, split) = (cut(true), cut(false));
    // The file of many extents: whole in piece j of one cut, begun in piece j of the other.
    let j = rows_by_piece(&whole, f)[0].0 as usize;
    assert_eq!(rows_by_piece(&whole, f), [(j as u32, true, 300)]);
    let in_split = rows_by_piece(&split, f);
    assert_eq!(in_split[0].0 as usize, j);
    assert!(in_split.len() >= 2 && in_split[1].0 as usize == j + 1);
    let own = rs[2].id;
    for p in whole.iter().take(j + 1) {
        rs[2]
            .write(|t| install_image(t, own, &p.part, p.split))
            .unwrap();
    }
    for p in &split[j + 1..] {
        rs[2]
            .write(|t| install_image(t, own, &p.part, p.split))
            .unwrap();
    }
    assert!(backfill_of(&rs[2], image.volume.id).installed);
    assert_consistent(&rs[2]);
    rounds(&mut rs, 4);
    assert_eq!(file_extents(&rs[2], f), file_extents(&rs[0], f));
    assert_eq!(volume_rows(&rs[2]), volume_rows(&rs[0]));
}

/// The rows of directory `ino` with `n` names of about 30 bytes.
fn many_names(ino: InodeId, n: u32) -> backfill::InodeRows {
    backfill::InodeRows {
        ino,
        dirents: (0..n)
            .map(|i| {
                let mut k = ino.0.to_be_bytes().to_vec();
                k.extend_from_slice(format!("a-long-enough-name-{i:08}").as_bytes());
                (k, vec![7; 12])
            })
            .collect(),
        ..Default::default()
    }
}

/// Cut whole, an inode whose rows no entry a member takes could carry is refused (the
/// install waits for the members' upgrade), where cut split it goes over pieces.
#[test]
fn an_image_cut_whole_refuses_an_inode_no_piece_holds() {
    let (_, _, _, mut image) = many_rows_to_add_third();
    let ino = InodeId(u64::MAX / 3);
    let huge = many_names(ino, 110_000);
    assert!(serde_json::to_vec(&huge).unwrap().len() > backfill::WHOLE_MAX);
    image.inodes.push(huge);
    let json = serde_json::to_vec(&image).unwrap();
    let cut = |whole| {
        let mut given = 0;
        let read = backfill::read_pieces(
            json.as_slice(),
            image.volume.id,
            backfill::PART_JSON,
            whole,
            |_| {
                given += 1;
                true
            },
        );
        (read, given)
    };
    let (read, given) = cut(true);
    let e = read.unwrap_err();
    assert!(e.contains(backfill::NEEDS_SPLIT), "{e}");
    assert!(given <= 2, "{given} pieces before the refusal");
    let (read, given) = cut(false);
    read.unwrap();
    assert!(given >= 8, "{given} pieces");
}

/// Cut whole, the last piece holds the tombstones and the late records together: past
/// what one entry carries it is refused (the install waits for the members' upgrade),
/// where cut split the tombstones go in pieces of their own.
#[test]
fn an_image_cut_whole_refuses_a_last_piece_of_tombstones_and_records_no_entry_holds() {
    let (rs, _, _, mut image) = many_rows_to_add_third();
    // A tombstone of many rows, within what a whole piece holds on its own.
    let ino = InodeId(u64::MAX / 3);
    let mut tomb_node = image.inodes[1].inode.clone().expect("an inode");
    tomb_node.attr.ino = ino;
    let rows = many_names(ino, 60_000);
    let tomb = super::tables::Tomb {
        inode: tomb_node,
        dir: image.volume.root,
        name: b"gone".to_vec(),
        at: image.point,
    };
    let tomb_bytes = serde_json::to_vec(&(&tomb, &rows)).unwrap().len();
    assert!(tomb_bytes < backfill::WHOLE_MAX && tomb_bytes > backfill::WHOLE_MAX / 2);
    image.tombs.push((tomb, rows));
    // Late records that the tombstone leaves no room for.
    let mut record = rs[0].changes(1, 1)[0].1.clone();
    record.op = Op::SetXattr {
        ino: InodeId(1),
        name: b"user.big".to_vec(),
        value: vec![200; 700 << 10],
        mode: meridian_proto::ns::XattrMode::Any,
        creds: root_creds(),
    };
    image.records = vec![record; 2];
    let records_bytes = serde_json::to_vec(&image.records).unwrap().len();
    assert!(records_bytes < backfill::RECORDS_MAX);
    assert!(tomb_bytes + records_bytes > backfill::WHOLE_MAX);
    let e = image
        .clone()
        .pieces_within(backfill::PART_JSON, true)
        .unwrap_err();
    assert!(e.to_string().contains(backfill::NEEDS_SPLIT), "{e}");
    let split = image.pieces_within(backfill::PART_JSON, false).unwrap();
    let last = split.last().unwrap().part.finish.as_ref().unwrap().len();
    assert!(last < backfill::WHOLE_MAX, "{last} bytes in the last piece");
}

/// Given a few rows at a time, as the serving leader reads them, an image is written as
/// the same bytes as given whole.
#[test]
fn an_image_written_a_few_rows_at_a_time_is_the_same_bytes() {
    use backfill::ImageSink;
    let (_, _, f, image) = many_rows_to_add_third();
    let mut with_tomb = image.clone();
    as_tomb(&mut with_tomb, f);
    /// `rows` in pages of `n` rows, each kind in turn.
    fn pages(rows: &backfill::InodeRows, n: usize) -> Vec<backfill::InodeRows> {
        let of = |ino| backfill::InodeRows {
            ino,
            ..Default::default()
        };
        let mut out = Vec::new();
        for c in rows.dirents.chunks(n) {
            out.push(backfill::InodeRows {
                dirents: c.to_vec(),
                ..of(rows.ino)
            });
        }
        for c in rows.xattrs.chunks(n) {
            out.push(backfill::InodeRows {
                xattrs: c.to_vec(),
                ..of(rows.ino)
            });
        }
        for c in rows.extents.chunks(n) {
            out.push(backfill::InodeRows {
                extents: c.to_vec(),
                ..of(rows.ino)
            });
        }
        out
    }
    for image in [&image, &with_tomb] {
        for n in [1, 7, 4096] {
            let mut json = backfill::JsonImage::new(Vec::new());
            json.begin(image.point, &image.volume).unwrap();
            for rows in &image.inodes {
                json.head(rows.ino, rows.inode.clone(), None).unwrap();
                for p in pages(rows, n) {
                    json.more(p).unwrap();
                }
            }
            for (tomb, rows) in &image.tombs {
                json.head(rows.ino, None, Some(tomb.clone())).unwrap();
                for p in pages(rows, n) {
                    json.more(p).unwrap();
                }
            }
            json.end(image.records.clone()).unwrap();
            assert_eq!(
                String::from_utf8(json.into_inner()).unwrap(),
                String::from_utf8(serde_json::to_vec(image).unwrap()).unwrap(),
                "pages of {n}"
            );
        }
    }
    // Rows of a kind after a later kind's are refused.
    let mut json = backfill::JsonImage::new(Vec::new());
    json.begin(image.point, &image.volume).unwrap();
    json.head(f, None, None).unwrap();
    json.more(backfill::InodeRows {
        ino: f,
        extents: image.inodes.iter().find(|r| r.ino == f).unwrap().extents[..1].to_vec(),
        ..Default::default()
    })
    .unwrap();
    let late = backfill::InodeRows {
        ino: f,
        xattrs: vec![(f.0.to_be_bytes().to_vec(), b"v".to_vec())],
        ..Default::default()
    };
    assert!(json.more(late).is_err());
}

/// The serving leader reads a directory of more names than a page holds a page at a time,
/// and gives the image the same rows.
#[test]
fn an_image_is_built_a_page_of_rows_at_a_time() {
    use backfill::ImageSink;
    /// The rows given, and the most given at once.
    #[derive(Default)]
    struct Pages {
        names: BTreeMap<InodeId, usize>,
        most: usize,
    }
    impl ImageSink for Pages {
        fn begin(&mut self, _: Hlc, _: &Volume) -> Result<(), NsError> {
            Ok(())
        }
        fn head(&mut self, _: InodeId, _: Option<Inode>, _: Option<Tomb>) -> Result<(), NsError> {
            Ok(())
        }
        fn more(&mut self, rows: backfill::InodeRows) -> Result<(), NsError> {
            let n = rows.dirents.len() + rows.xattrs.len() + rows.extents.len();
            self.most = self.most.max(n);
            *self.names.entry(rows.ino).or_default() += rows.dirents.len();
            Ok(())
        }
        fn end(&mut self, _: Vec<Record>) -> Result<(), NsError> {
            Ok(())
        }
    }
    let mut rs = three_with_volume_in_two();
    let root = rs[0].volume_root();
    let dir = attr_of(rs[0].run(mknod(root, "many", FileKind::Dir))).ino;
    let names = backfill::ROWS_PAGE + 100;
    for i in 0..names {
        attr_of(rs[0].run(mknod(dir, &format!("n{i:05}"), FileKind::File)));
    }
    rounds(&mut rs, 3);
    let (volume, since) = add_third_settled(&mut rs);
    let tx = rs[0].db.begin_write().unwrap();
    let mut pages = Pages::default();
    {
        let mut t = WriteTables::open(&tx);
        backfill::build_image_into(&mut t, volume, RegionId(3), since, &mut pages)
            .unwrap()
            .expect("settled past the addition");
    }
    tx.abort().unwrap();
    assert_eq!(pages.names[&dir], names);
    assert_eq!(pages.most, backfill::ROWS_PAGE);
    // The same image as built in a scratch copy and read back (`built_for_3` compares).
    let image = built_for_3(&rs[0], volume, since).unwrap();
    let rows = image.inodes.iter().find(|r| r.ino == dir).unwrap();
    assert_eq!(rows.dirents.len(), names);
}

/// Cut as it is read, an image of several inodes and tombstones of many rows of every kind
/// (some more than a piece, some not, the tombstones more than the last piece holds) is
/// cut as given whole, split or whole, at many sizes; and read with its fields in another
/// order (the rows of a kind held until their turn) too. A kind given twice, or an inode's
/// rows without their inode, are refused.
#[test]
fn an_image_of_many_mixed_rows_is_cut_alike_read_or_given_whole() {
    let (_, _, f, mut image) = many_rows_to_add_third();
    let tagged = image
        .inodes
        .iter()
        .find(|r| !r.xattrs.is_empty())
        .unwrap()
        .clone();
    let extents = image
        .inodes
        .iter()
        .find(|r| r.ino == f)
        .unwrap()
        .extents
        .clone();
    // Rows of every kind, of sizes from a few rows to several pieces.
    let mixed = |n: u64, rows: usize| {
        let ino = InodeId(u64::MAX / 5 + n);
        let key = |i: usize| {
            let mut k = ino.0.to_be_bytes().to_vec();
            k.extend_from_slice(format!("name-{i:05}").as_bytes());
            k
        };
        backfill::InodeRows {
            ino,
            inode: None,
            dirents: (0..rows).map(|i| (key(i), vec![1; 9])).collect(),
            xattrs: (0..rows / 3 + 1).map(|i| (key(i), vec![2; 40])).collect(),
            extents: extents.iter().take(rows).copied().collect(),
        }
    };
    for (n, rows) in [(1, 3), (2, 80), (3, 2), (4, 150)] {
        image.inodes.push(mixed(n, rows));
    }
    let tomb_of = |rows: &backfill::InodeRows| super::tables::Tomb {
        inode: tagged.inode.clone().unwrap(),
        dir: image.volume.root,
        name: format!("gone-{}", rows.ino).into_bytes(),
        at: image.point,
    };
    for (n, rows) in [(11, 1), (12, 120), (13, 4), (14, 60), (15, 2)] {
        let rows = mixed(n, rows);
        image.tombs.push((tomb_of(&rows), rows));
    }
    let json = serde_json::to_vec(&image).unwrap();
    // The same document with every object's keys in alphabetical order but its own.
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let sorted = format!(
        "{{\"point\":{},\"volume\":{},\"inodes\":{},\"tombs\":{},\"records\":{}}}",
        v["point"], v["volume"], v["inodes"], v["tombs"], v["records"]
    )
    .into_bytes();
    assert_ne!(json, sorted);
    for limit in [300, 900, 2500, 6000, 20_000, 1 << 20] {
        for whole in [false, true] {
            let given = image.clone().pieces_within(limit, whole).unwrap();
            assert_eq!(
                read_cut(&json, &image, limit, whole),
                given,
                "{limit} {whole}"
            );
            assert_eq!(
                read_cut(&sorted, &image, limit, whole),
                given,
                "{limit} {whole}"
            );
        }
    }
    // A kind given twice, or no inode field: refused.
    let text = String::from_utf8(json.clone()).unwrap();
    let twice = text.replacen("\"xattrs\":[", "\"xattrs\":[],\"xattrs\":[", 1);
    let no_inode = text.replacen("\"inode\":null,", "", 1);
    for bad in [twice, no_inode] {
        assert_ne!(bad, text);
        let r = backfill::read_pieces(bad.as_bytes(), image.volume.id, 900, false, |_| true);
        assert!(r.is_err(), "{r:?}");
    }
}

/// A file of more extents than a page, with a hole the steps have not dropped yet: the
/// serving leader gives its content alone over several pages.
#[test]
fn an_image_takes_a_file_of_many_extents_a_page_at_a_time() {
    let mut rs = three_with_volume_in_two();
    let root = rs[0].volume_root();
    let f = attr_of(rs[0].run(mknod(root, "long", FileKind::File))).ino;
    super::trim_tests::fragment(&mut rs[0], f, backfill::ROWS_PAGE * 2 + 300);
    super::trim_tests::punch(&mut rs[0], f, 50 * 4096 + 10, 3000 * 4096).unwrap();
    rounds(&mut rs, 3);
    let (volume, since) = add_third_settled(&mut rs);
    let content = rs[0].write(|t| {
        let node = super::tables::read_inode(t.inodes().unwrap(), f)
            .unwrap()
            .unwrap();
        assert!(!node.cuts.is_empty(), "a hole the steps have not dropped");
        let all = read_extents(t.extents().unwrap(), f, 0, u64::MAX).unwrap();
        super::trim::live(&node, all)
    });
    assert!(
        content.len() > backfill::ROWS_PAGE,
        "{} extents",
        content.len()
    );
    let image = built_for_3(&rs[0], volume, since).unwrap();
    let rows = image.inodes.iter().find(|r| r.ino == f).unwrap();
    assert_eq!(rows.extents, content);
    assert!(rows.inode.as_ref().unwrap().cuts.is_empty());
}

/// The records an image carries (written before the region was added, stamped after the
/// image's point) go in its last piece, one Raft entry: past a bound the image is not
/// built, nothing is copied for it, and it is once the regions settle past them.
#[test]
fn an_image_whose_records_pass_the_bound_waits_until_the_regions_settle_past_them() {
    let mut rs = three_with_volume_in_two();
    let vol = rs[0].read(|r| r.volume("main")).unwrap();
    let root = vol.root;
    rounds(&mut rs, 3);
    rs[0]
        .run(Op::SetVolumeRegions {
            name: "main".into(),
            regions: vec![RegionId(1), RegionId(2), RegionId(3)],
        })
        .unwrap();
    // Region 2, its clock ahead, writes before it hears of the addition.
    rs[1].phys += 5000;
    for i in 0..30 {
        attr_of(rs[1].run(mknod(root, &format!("ahead-{i}"), FileKind::File)));
    }
    rounds(&mut rs, 3);
    let since = rs[2]
        .write(|t| backfill::get(t.region_state.open().unwrap(), vol.id).unwrap())
        .expect("region 3 started its backfill")
        .since;
    let ready = |r: &Region, max: usize| {
        let tx = r.db.begin_read().unwrap();
        backfill::readiness(&tx, vol.id, RegionId(3), since, max).unwrap()
    };
    assert_eq!(ready(&rs[0], usize::MAX), backfill::Readiness::Unsettled);
    promise_all(&mut rs);
    rounds(&mut rs, 2);
    let image = built_for_3(&rs[0], vol.id, since).expect("settled past the addition");
    assert_eq!(
        image.records.len(),
        30,
        "the records ahead of the image's point"
    );
    let bytes = serde_json::to_vec(&image.records).unwrap().len();
    assert_eq!(
        ready(&rs[0], bytes),
        backfill::Readiness::Ready(image.point)
    );
    assert_eq!(
        ready(&rs[0], bytes - 1),
        backfill::Readiness::TooManyRecords { records: 30, bytes }
    );
    // Refused before anything is copied, as a wait.
    let scratch = tempfile::tempdir().unwrap();
    let refused =
        crate::backfill::serve::build(&rs[0].db, scratch.path(), vol.id, RegionId(3), since, 1000);
    let Err(crate::error::MetaError::Unavailable(why)) = refused else {
        panic!(
            "not refused as a wait: {:?}",
            refused.map(|b| b.map(|(p, _)| p))
        );
    };
    assert!(why.contains("settle further"), "{why}");
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);

    // Time passes, and the regions settle past them: the image carries none, and is built.
    for r in rs.iter_mut() {
        r.phys += 5000;
    }
    promise_all(&mut rs);
    rounds(&mut rs, 3);
    let image = built_for_3(&rs[0], vol.id, since).expect("settled");
    assert!(image.records.is_empty(), "{:?}", image.records.len());
    assert!(matches!(ready(&rs[0], 1000), backfill::Readiness::Ready(_)));
    let parts = image.parts().unwrap();
    install_all(&mut rs[2], &parts);
    rounds(&mut rs, 4);
    let names = rs[2].names(root);
    assert_eq!(names.iter().filter(|n| n.starts_with("ahead-")).count(), 30);
}
