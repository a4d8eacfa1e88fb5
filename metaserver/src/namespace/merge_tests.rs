//! Convergence of regions, each conflict rule on its own: deterministic scenarios over
//! the regions of `test_regions`.

use std::collections::{BTreeMap, BTreeSet};

use meridian_proto::{BlockId, InodeId, RegionId};

use redb::ReadableDatabase;

use super::test_regions::*;

#[test]
fn a_record_from_one_region_appears_in_the_other() {
    let mut rs = regions(2);
    let root = rs[0].volume_root();
    assert_eq!(rs[1].volume_root(), root);
    let a = attr_of(rs[0].run(mknod(root, "f", FileKind::File)));
    settle(&mut rs);
    assert_eq!(rs[1].lookup(root, "f").unwrap().ino, a.ino);
    assert_eq!(namespace_dump(&rs[0]), namespace_dump(&rs[1]));
}

#[test]
fn concurrent_creates_of_one_name_keep_both() {
    let mut rs = regions(2);
    let root = rs[0].volume_root();
    let a = attr_of(rs[0].run(mknod(root, "x", FileKind::File)));
    let b = attr_of(rs[1].run(mknod(root, "x", FileKind::Dir)));
    settle(&mut rs);
    for r in &rs {
        let names = r.names(root);
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(
            names.iter().any(|n| n.starts_with("x.conflict-")),
            "{names:?}"
        );
        let inos: BTreeSet<InodeId> = names
            .iter()
            .map(|n| r.lookup(root, n).unwrap().ino)
            .collect();
        assert_eq!(inos, BTreeSet::from([a.ino, b.ino]));
        assert_eq!(r.conflicts().len(), 1);
        check_tree(r);
    }
    assert_eq!(namespace_dump(&rs[0]), namespace_dump(&rs[1]));
}

#[test]
fn concurrent_writes_keep_a_conflict_copy_sharing_blocks() {
    let mut rs = regions(2);
    let root = rs[0].volume_root();
    let f = attr_of(rs[0].run(mknod(root, "doc", FileKind::File)));
    settle(&mut rs);
    let (wa, ba) = write_op(f.ino, 0, b"written in A");
    let (wb, bb) = write_op(f.ino, 0, b"written in B");
    rs[0].run(wa).unwrap();
    rs[1].run(wb).unwrap();
    settle(&mut rs);
    for r in &rs {
        let names = r.names(root);
        assert_eq!(names.len(), 2, "{names:?}");
        let blocks: BTreeSet<BlockId> = names
            .iter()
            .map(|n| {
                let ino = r.lookup(root, n).unwrap().ino;
                let ext = r.read(|x| x.extents(ino, 0, 100)).unwrap();
                assert_eq!(ext.len(), 1);
                ext[0].block
            })
            .collect();
        assert_eq!(blocks, BTreeSet::from([ba, bb]), "both versions are kept");
        assert_eq!(r.conflicts()[0].kind, "write");
        check_tree(r);
    }
    assert_eq!(namespace_dump(&rs[0]), namespace_dump(&rs[1]));
}

#[test]
fn an_update_beats_a_concurrent_delete_in_either_order() {
    for writer_first in [false, true] {
        let mut rs = regions(2);
        let root = rs[0].volume_root();
        let f = attr_of(rs[0].run(mknod(root, "keep", FileKind::File)));
        settle(&mut rs);
        let (w, block) = write_op(f.ino, 0, b"update");
        let unlink = unlink(root, "keep");
        if writer_first {
            rs[1].run(w).unwrap();
            rs[0].run(unlink).unwrap();
        } else {
            rs[0].run(unlink).unwrap();
            rs[1].run(w).unwrap();
        }
        settle(&mut rs);
        for r in &rs {
            let back = r.lookup(root, "keep").expect("the file comes back");
            assert_eq!(back.ino, f.ino);
            let ext = r.read(|x| x.extents(f.ino, 0, 100)).unwrap();
            assert_eq!(ext[0].block, block);
            assert_eq!(r.conflicts().len(), 1, "{:?}", r.conflicts());
            check_tree(r);
        }
        assert_eq!(namespace_dump(&rs[0]), namespace_dump(&rs[1]));
    }
}

#[test]
fn crossing_moves_never_make_a_cycle() {
    let mut rs = regions(2);
    let root = rs[0].volume_root();
    let a = attr_of(rs[0].run(mknod(root, "a", FileKind::Dir)));
    let b = attr_of(rs[0].run(mknod(root, "b", FileKind::Dir)));
    settle(&mut rs);
    let mv = |from: &str, into: InodeId| Op::Rename {
        parent: root,
        name: from.as_bytes().to_vec(),
        new_parent: into,
        new_name: from.as_bytes().to_vec(),
        flags: RenameFlags::default(),
        creds: root_creds(),
    };
    rs[0].run(mv("a", b.ino)).unwrap();
    rs[1].run(mv("b", a.ino)).unwrap();
    settle(&mut rs);
    for r in &rs {
        check_tree(r);
        let skipped = r.conflicts();
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].kind, "skip");
    }
    assert_eq!(namespace_dump(&rs[0]), namespace_dump(&rs[1]));
}

#[test]
fn attributes_are_last_writer_wins_per_field() {
    let mut rs = regions(2);
    let root = rs[0].volume_root();
    let f = attr_of(rs[0].run(mknod(root, "f", FileKind::File)));
    settle(&mut rs);
    let set = |perm: Option<u16>, uid: Option<u32>| Op::SetAttr {
        ino: f.ino,
        set: SetAttr {
            perm,
            uid,
            ..SetAttr::default()
        },
        creds: root_creds(),
    };
    rs[0].run(set(Some(0o600), None)).unwrap();
    rs[1].run(set(Some(0o640), Some(7))).unwrap();
    rs[0].run(set(None, Some(9))).unwrap();
    settle(&mut rs);
    for r in &rs {
        let a = r.read(|x| x.getattr(f.ino)).unwrap();
        assert_eq!((a.perm, a.uid), (0o640, 9));
    }
    assert_eq!(namespace_dump(&rs[0]), namespace_dump(&rs[1]));
}

#[test]
fn concurrent_volume_creates_of_one_name_keep_both() {
    let mut rs = regions(2);
    let policy = VolumePolicy {
        regions: vec![RegionId(1), RegionId(2)],
        ..VolumePolicy::default()
    };
    for r in rs.iter_mut() {
        r.run(Op::CreateVolume {
            name: "team".into(),
            policy: policy.clone(),
        })
        .unwrap();
    }
    settle(&mut rs);
    assert_eq!(namespace_dump(&rs[0]), namespace_dump(&rs[1]));
    let names: Vec<String> = rs[0].read(|r| {
        r.volumes()
            .unwrap()
            .into_iter()
            .map(|v| v.name)
            .filter(|n| n.starts_with("team"))
            .collect()
    });
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names.iter().any(|n| n.starts_with("team-conflict-")),
        "{names:?}"
    );
    assert!(rs[1].conflicts().iter().any(|c| c.kind == "create volume"));
}

#[test]
fn a_record_of_a_volume_elsewhere_is_refused_and_changes_nothing() {
    let mut a = Region::new(1, &[RegionId(2)]);
    let b = Region::new(2, &[RegionId(1)]);
    a.run(Op::CreateVolume {
        name: "only-a".into(),
        policy: VolumePolicy {
            regions: vec![RegionId(1)],
            ..VolumePolicy::default()
        },
    })
    .unwrap();
    let batch = RemoteBatch {
        origin: RegionId(1),
        records: a.changes(1, 10),
        frontier: None,
        settled: None,
        scanned: 0,
        settled_by: Vec::new(),
    };
    let before = namespace_dump(&b);
    let err = b
        .write(|t| apply_remote(t, RegionId(2), &batch))
        .unwrap_err();
    assert!(matches!(err, NsError::Perm(_)), "{err:?}");
    assert_eq!(namespace_dump(&b), before);
    assert_eq!(b.watermark(RegionId(1)), 0);
}

#[test]
fn a_volume_cannot_be_made_in_a_region_it_may_not_live_in() {
    let mut a = Region::new(1, &[RegionId(2)]);
    let err = a
        .run(Op::CreateVolume {
            name: "only-b".into(),
            policy: VolumePolicy {
                regions: vec![RegionId(2)],
                ..VolumePolicy::default()
            },
        })
        .unwrap_err();
    assert!(matches!(err, NsError::Invalid(_)), "{err:?}");
    assert!(a.changes(1, 10).iter().all(|r| !matches!(
        &r.1.op,
        Op::CreateVolume { name, .. } if name == "only-b"
    )));
    a.run(Op::CreateVolume {
        name: "a-and-b".into(),
        policy: VolumePolicy {
            regions: vec![RegionId(2), RegionId(1)],
            ..VolumePolicy::default()
        },
    })
    .unwrap();
}

#[test]
fn tombstones_are_purged_once_every_region_has_settled_past_them() {
    let mut rs = regions(3);
    let root = rs[0].volume_root();
    let f = attr_of(rs[0].run(mknod(root, "gone", FileKind::File)));
    let (w, block) = write_op(f.ino, 0, b"old content");
    rs[0].run(w).unwrap();
    settle(&mut rs);
    rs[1].run(unlink(root, "gone")).unwrap();
    // Only the region that removed it knows: its tombstone stays.
    let tombs =
        |r: &Region| r.write(|t| redb::ReadableTableMetadata::len(t.tombs().unwrap()).unwrap());
    assert_eq!(tombs(&rs[1]), 1);
    assert_consistent(&rs[1]);
    // A state written before the index existed gets it rebuilt when opened.
    let tx = rs[1].db.begin_write().unwrap();
    tx.delete_table(TOMB_TIMES).unwrap();
    index_tombs(&tx, false).unwrap();
    tx.commit().unwrap();
    assert_consistent(&rs[1]);
    // A later record of every region, then everything settles: no region can still write
    // the file unknowingly, so every region drops the tombstone and the block's reference.
    for (i, r) in rs.iter_mut().enumerate() {
        r.run(mknod(root, &format!("later{i}"), FileKind::File))
            .unwrap();
    }
    settle(&mut rs);
    for r in &rs {
        assert_eq!(tombs(r), 0, "region {} kept the tombstone", r.id.0);
        assert_eq!(r.read(|x| x.block_refs(&block)).unwrap(), 0);
        assert_consistent(r);
    }
    assert_eq!(namespace_dump(&rs[0]), namespace_dump(&rs[2]));
}

#[test]
fn a_purge_under_newer_records_that_are_later_reordered_keeps_counts_exact() {
    let mut rs = regions(3);
    let root = rs[0].volume_root();
    let gone = attr_of(rs[0].run(mknod(root, "gone", FileKind::File)));
    let kept = attr_of(rs[0].run(mknod(root, "kept", FileKind::File)));
    let (w, block) = write_op(gone.ino, 0, b"shared");
    rs[0].run(w).unwrap();
    settle(&mut rs);
    rs[0].run(unlink(root, "gone")).unwrap();
    // Every region moves past the removal, but regions 2 and 3 hold their settled marks
    // back, so nobody purges yet.
    rs[1].marks = false;
    rs[2].marks = false;
    for (i, r) in rs.iter_mut().enumerate() {
        r.run(mknod(root, &format!("later{i}"), FileKind::File))
            .unwrap();
    }
    settle(&mut rs);
    // Region 1, its clock well ahead, writes the same block into another file: its undo
    // image says the block had one reference (the tombstone's).
    rs[0].phys += 1_000_000;
    let (w, _) = write_op(kept.ino, 0, b"shared");
    rs[0].run(w).unwrap();
    assert_eq!(rs[0].read(|x| x.block_refs(&block)).unwrap(), 2);
    // The marks arrive: region 1 purges the tombstone under that newer record.
    rs[2].marks = true;
    let (c, a) = two(&mut rs, 2, 0);
    deliver(c, a, usize::MAX, 0);
    rs[1].marks = true;
    let (b, a) = two(&mut rs, 1, 0);
    deliver(b, a, usize::MAX, 0);
    let tombs =
        |r: &Region| r.write(|t| redb::ReadableTableMetadata::len(t.tombs().unwrap()).unwrap());
    assert_eq!(tombs(&rs[0]), 0, "region 1 purged the tombstone");
    assert_eq!(rs[0].read(|x| x.block_refs(&block)).unwrap(), 1);
    // Region 3, behind region 1's clock, writes a record that sorts before region 1's
    // write: region 1 undoes its write, applies it, and redoes the write.
    rs[2].run(mknod(root, "late", FileKind::File)).unwrap();
    let (c, a) = two(&mut rs, 2, 0);
    deliver(c, a, usize::MAX, 0);
    assert!(rs[0].lookup(root, "late").is_ok());
    assert_eq!(
        rs[0].read(|x| x.block_refs(&block)).unwrap(),
        extents_using(&rs[0], &block),
        "the count matches the extents after the reorder"
    );
    settle(&mut rs);
    for r in &rs {
        assert_eq!(tombs(r), 0, "region {} kept the tombstone", r.id.0);
        assert_eq!(r.read(|x| x.block_refs(&block)).unwrap(), 1);
        assert_eq!(extents_using(r, &block), 1);
        assert_consistent(r);
    }
    assert_eq!(namespace_dump(&rs[0]), namespace_dump(&rs[1]));
    assert_eq!(namespace_dump(&rs[0]), namespace_dump(&rs[2]));
}

#[test]
fn a_snapshot_installed_over_other_tombstones_rebuilds_their_index() {
    let mut rs = regions(2);
    let root = rs[0].volume_root();
    for name in ["x", "y"] {
        rs[0].run(mknod(root, name, FileKind::File)).unwrap();
    }
    let other = attr_of(rs[1].run(mknod(root, "z", FileKind::File)));
    rs[1].run(mknod(root, "w", FileKind::File)).unwrap();
    settle(&mut rs);
    rs[0].marks = false;
    rs[1].marks = false;
    // Region 1 removes x and y; region 2 removes z and w (as many tombstones) and never
    // hears of x and y.
    for name in ["x", "y"] {
        rs[0].run(unlink(root, name)).unwrap();
    }
    for name in ["z", "w"] {
        rs[1].run(unlink(root, name)).unwrap();
    }
    assert!(rs[1].write(|t| t.tomb(other.ino).unwrap()).is_some());
    // Region 1's state replaces region 2's, as a snapshot install does.
    let mut data = Vec::new();
    crate::raft::snapshot::dump(&rs[0].db.begin_read().unwrap(), &mut data).unwrap();
    let tx = rs[1].db.begin_write().unwrap();
    crate::raft::snapshot::load(&tx, data.as_slice()).unwrap();
    tx.commit().unwrap();
    assert_consistent(&rs[1]);
    assert_eq!(namespace_dump(&rs[1]), namespace_dump(&rs[0]));
}

#[test]
fn the_merged_log_is_pruned_below_the_stability_watermark() {
    let mut rs = regions(2);
    let root = rs[0].volume_root();
    for i in 0..20 {
        rs[0]
            .run(mknod(root, &format!("f{i}"), FileKind::File))
            .unwrap();
    }
    settle(&mut rs);
    // Region 1 learns region 0's frontier only by pulling: one more round each way.
    rs[1].run(mknod(root, "g", FileKind::File)).unwrap();
    settle(&mut rs);
    for r in &rs {
        let kept = r.write(|t| redb::ReadableTableMetadata::len(t.oplog.open().unwrap()).unwrap());
        assert!(
            kept < 5,
            "{kept} merged-log entries kept after everything is stable"
        );
    }
}

#[test]
fn a_truncate_and_rewrite_in_each_region_keeps_both_versions() {
    let mut rs = regions(2);
    let root = rs[0].volume_root();
    let f = attr_of(rs[0].run(mknod(root, "doc", FileKind::File)));
    let (w0, _) = write_op(f.ino, 0, b"version 0");
    rs[0].run(w0).unwrap();
    settle(&mut rs);
    let truncate = Op::SetAttr {
        ino: f.ino,
        set: SetAttr {
            size: Some(0),
            via_handle: true,
            ..SetAttr::default()
        },
        creds: root_creds(),
    };
    let (wa, ba) = write_op(f.ino, 0, b"version A");
    let (wb, bb) = write_op(f.ino, 0, b"version B");
    rs[0].run(truncate.clone()).unwrap();
    rs[0].run(wa).unwrap();
    rs[1].run(truncate).unwrap();
    rs[1].run(wb).unwrap();
    settle(&mut rs);
    for r in &rs {
        for b in [ba, bb] {
            assert!(
                r.read(|x| x.block_refs(&b)).unwrap() > 0,
                "a version is lost"
            );
        }
        check_tree(r);
    }
    assert_eq!(namespace_dump(&rs[0]), namespace_dump(&rs[1]));
}

/// The bytes of a file written by [`write_op`]-style single-block writes: (offset, block)
/// pairs of its extents, in order.
fn layout(r: &Region, ino: InodeId) -> (u64, Vec<(u64, BlockId)>) {
    let (size, ext) = file_extents(r, ino);
    (size, ext.into_iter().map(|e| (e.offset, e.block)).collect())
}

/// Every file in the root: name -> layout.
fn files(r: &Region) -> BTreeMap<String, (u64, Vec<(u64, BlockId)>)> {
    let root = r.volume_root();
    r.names(root)
        .into_iter()
        .map(|n| {
            let ino = r.lookup(root, &n).unwrap().ino;
            (n, layout(r, ino))
        })
        .collect()
}

#[test]
fn an_atomic_save_over_a_file_another_region_wrote_keeps_that_write() {
    for saver_first in [false, true] {
        let mut rs = regions(2);
        let root = rs[0].volume_root();
        let f = attr_of(rs[0].run(mknod(root, "f", FileKind::File)));
        let (w0, _) = write_op(f.ino, 0, b"original");
        rs[0].run(w0).unwrap();
        settle(&mut rs);
        let save = |r: &mut Region| {
            let tmp = attr_of(r.run(mknod(root, "f.tmp", FileKind::File)));
            let (w, b) = write_op(tmp.ino, 0, b"saved");
            r.run(w).unwrap();
            r.run(Op::Rename {
                parent: root,
                name: b"f.tmp".to_vec(),
                new_parent: root,
                new_name: b"f".to_vec(),
                flags: RenameFlags::default(),
                creds: root_creds(),
            })
            .unwrap();
            b
        };
        let (w2, written) = write_op(f.ino, 0, b"written in place");
        let saved = if saver_first {
            let b = save(&mut rs[0]);
            rs[1].run(w2).unwrap();
            b
        } else {
            rs[1].run(w2).unwrap();
            save(&mut rs[0])
        };
        settle(&mut rs);
        let all = files(&rs[0]);
        assert_eq!(
            all["f"].1,
            vec![(0, saved)],
            "the save is the file: {all:?}"
        );
        assert!(
            all.iter()
                .any(|(n, l)| n.starts_with("f.conflict-") && l.1 == vec![(0, written)]),
            "the other region's write is kept: {all:?}"
        );
        assert!(!rs[0].conflicts().is_empty());
        assert_eq!(namespace_dump(&rs[0]), namespace_dump(&rs[1]));
        check_tree(&rs[0]);
    }
}

#[test]
fn an_overwrite_and_an_in_place_patch_keep_both_versions_unmixed() {
    for overwriter_first in [false, true] {
        let mut rs = regions(2);
        let root = rs[0].volume_root();
        let g = attr_of(rs[0].run(mknod(root, "g", FileKind::File)));
        let (w0, b0) = write_op(g.ino, 0, b"0123456789");
        rs[0].run(w0).unwrap();
        settle(&mut rs);
        let truncate = Op::SetAttr {
            ino: g.ino,
            set: SetAttr {
                size: Some(0),
                via_handle: true,
                ..SetAttr::default()
            },
            creds: root_creds(),
        };
        let (rewrite, ba) = write_op(g.ino, 0, b"AAAAAAAAAA");
        let patch = Op::CommitExtents {
            ino: g.ino,
            extents: vec![Extent {
                offset: 2,
                len: 1,
                block: BlockId::of(b"B"),
                block_offset: 0,
                block_len: 1,
            }],
            size: 0,
            base_version: None,
            creds: root_creds(),
            staged: Vec::new(),
        };
        if overwriter_first {
            rs[0].run(truncate).unwrap();
            rs[0].run(rewrite).unwrap();
            rs[1].run(patch).unwrap();
        } else {
            rs[1].run(patch).unwrap();
            rs[0].run(truncate).unwrap();
            rs[0].run(rewrite).unwrap();
        }
        settle(&mut rs);
        let rewritten = (100, vec![(0, ba)]);
        let patched = (100, vec![(0, b0), (2, BlockId::of(b"B")), (3, b0)]);
        let all: Vec<_> = files(&rs[0]).into_values().collect();
        assert!(all.contains(&rewritten), "{all:?}");
        assert!(all.contains(&patched), "{all:?}");
        assert_eq!(all.len(), 2, "no third, mixed version: {all:?}");
        assert_eq!(namespace_dump(&rs[0]), namespace_dump(&rs[1]));
    }
}

#[test]
fn a_truncate_and_an_append_keep_both_versions() {
    let mut rs = regions(2);
    let root = rs[0].volume_root();
    let log = attr_of(rs[0].run(mknod(root, "log", FileKind::File)));
    let (w0, b0) = write_op(log.ino, 0, b"a thousand bytes");
    rs[0].run(w0).unwrap();
    settle(&mut rs);
    rs[0]
        .run(Op::SetAttr {
            ino: log.ino,
            set: SetAttr {
                size: Some(0),
                ..SetAttr::default()
            },
            creds: root_creds(),
        })
        .unwrap();
    let (append, bh) = write_op(log.ino, 100, b"hi");
    rs[1].run(append).unwrap();
    settle(&mut rs);
    let all = files(&rs[0]);
    // The append, later, stays the file: what its writer had plus "hi", never zeros.
    assert_eq!(all["log"], (200, vec![(0, b0), (100, bh)]), "{all:?}");
    assert_eq!(namespace_dump(&rs[0]), namespace_dump(&rs[1]));
    check_tree(&rs[0]);
}

#[test]
fn a_volume_deleted_while_another_region_writes_to_it_comes_back_and_nothing_stops() {
    let mut rs = regions(2);
    let policy = VolumePolicy {
        regions: vec![RegionId(1), RegionId(2)],
        ..VolumePolicy::default()
    };
    rs[0]
        .run(Op::CreateVolume {
            name: "w".into(),
            policy,
        })
        .unwrap();
    settle(&mut rs);
    let w_root = rs[1].read(|x| x.volume("w")).unwrap().root;
    rs[0].run(Op::DeleteVolume { name: "w".into() }).unwrap();
    let f = attr_of(rs[1].run(mknod(w_root, "late", FileKind::File)));
    let (w, block) = write_op(f.ino, 0, b"kept");
    rs[1].run(w).unwrap();
    settle(&mut rs);
    for r in &rs {
        let vol = r.read(|x| x.volume("w")).expect("the volume is back");
        assert_eq!(vol.root, w_root);
        let ino = r.lookup(w_root, "late").unwrap().ino;
        assert_eq!(layout(r, ino).1, vec![(0, block)]);
        assert!(r.conflicts().iter().any(|c| c.kind == "resurrect"));
        check_tree(r);
        assert_consistent(r);
    }
    assert_eq!(namespace_dump(&rs[0]), namespace_dump(&rs[1]));
    // Deleted for good once emptied in both, and gone once every region settled past it.
    rs[1].run(unlink(w_root, "late")).unwrap();
    settle(&mut rs);
    rs[1].run(Op::DeleteVolume { name: "w".into() }).unwrap();
    for (i, r) in rs.iter_mut().enumerate() {
        let root = r.volume_root();
        r.run(mknod(root, &format!("later{i}"), FileKind::File))
            .unwrap();
    }
    settle(&mut rs);
    for r in &rs {
        assert!(r.read(|x| x.volume("w")).is_err());
        let rows = r.write(|t| redb::ReadableTableMetadata::len(t.volumes().unwrap()).unwrap());
        assert_eq!(rows, 1, "the deleted volume's tombstone is purged");
    }
}

#[test]
fn a_volume_copy_made_in_a_region_with_peers_survives_a_rewind() {
    let mut rs = regions(2);
    // Region 2 runs ahead: region 1's next record, delivered late, is older than its own.
    rs[1].phys += 1000;
    let Reply::Volume(loc) = rs[1]
        .run(Op::CreateVolume {
            name: "loc".into(),
            policy: VolumePolicy::default(),
        })
        .unwrap()
    else {
        panic!("no volume")
    };
    let d = match rs[1].run(mknod(loc.root, "d", FileKind::Dir)).unwrap() {
        Reply::Attr(a) => a,
        other => panic!("{other:?}"),
    };
    rs[1].run(mknod(d.ino, "f", FileKind::File)).unwrap();
    let Reply::Volume(cl) = rs[1]
        .run(Op::CloneVolume {
            source: "loc".into(),
            name: "cl".into(),
            read_only: false,
        })
        .unwrap()
    else {
        panic!("no volume")
    };
    // A change that needs the copy's ids to be the same after the replay.
    let cd = rs[1].lookup(cl.root, "d").unwrap();
    rs[1].run(mknod(cd.ino, "after", FileKind::File)).unwrap();

    let main_root = rs[0].volume_root();
    rs[0].run(mknod(main_root, "late", FileKind::File)).unwrap();
    // (Region 2's records of its own volume never leave it: deliver one way.)
    let (from, to) = two(&mut rs, 0, 1);
    assert!(deliver(from, to, 1000, 0) >= 1);

    // The late record was merged before the copy (a rewind), and the copy came back whole.
    assert!(rs[1].lookup(main_root, "late").is_ok());
    // The region's own volume's records replayed too (they were skipped, and lost, when a
    // volume naming no regions was taken to live nowhere).
    assert!(rs[1].lookup(d.ino, "f").is_ok());
    assert_eq!(rs[1].lookup(cl.root, "d").unwrap().ino, cd.ino);
    assert_eq!(rs[1].names(cd.ino), ["after", "f"]);
    assert!(rs[1].conflicts().is_empty(), "{:?}", rs[1].conflicts());
}

#[test]
fn the_change_log_is_trimmed_behind_its_retention_and_what_peers_still_need() {
    let mut a = Region::new(1, &[RegionId(2)]);
    let here = make_volume(&mut a, "here", Vec::new());
    for i in 0..40 {
        a.run(mknod(here, &format!("h{i}"), FileKind::File))
            .unwrap();
    }
    let first_shared = a.changes(1, usize::MAX).last().unwrap().0 + 1;
    let shared = make_volume(&mut a, "shared", vec![RegionId(1), RegionId(2)]);
    for i in 0..39 {
        a.run(mknod(shared, &format!("s{i}"), FileKind::File))
            .unwrap();
    }
    assert_eq!(seqs(&a).first(), Some(&1));

    // Past the retention: what only this region needed goes; region 2 has applied none of
    // the shared volume's records, so they, and what follows them, stay.
    a.phys += super::history::CHANGELOG_RETENTION_MS + 60_000;
    for i in 0..100 {
        a.run(mknod(here, &format!("late{i}"), FileKind::File))
            .unwrap();
    }
    let kept = seqs(&a);
    assert_eq!(kept.first(), Some(&first_shared), "{kept:?}");

    // Region 2 has applied them all (the leader noted it): they go too, but not the
    // records inside the retention.
    a.write(|t| {
        super::links::note(
            t,
            &super::links::PeerNote {
                region: RegionId(2),
                acked: Some(first_shared + 39),
                event: None,
                have: Vec::new(),
            },
        )
        .unwrap()
    });
    for i in 0..100 {
        a.run(mknod(here, &format!("later{i}"), FileKind::File))
            .unwrap();
    }
    let kept = seqs(&a);
    assert!(kept.first() > Some(&(first_shared + 39)), "{kept:?}");
    assert_eq!(
        kept.len(),
        200,
        "the records inside the retention are all kept"
    );
    // The feed says a mount that asks from before the trim missed something.
    let tx = a.db.begin_read().unwrap();
    let answer = crate::watch::changes(&tx, 0, 1, 0).unwrap();
    assert!(answer.gap);
    // A peer asking for trimmed records is told so, not given a log with a hole; and a
    // peer cannot claim to have applied more than was written.
    let regions = crate::regions::Regions::default();
    let err = regions
        .serve_pull(&tx, RegionId(1), RegionId(2), 1, 100)
        .unwrap_err();
    assert!(err.to_string().contains("backfill"), "{err}");
    let first = *kept.first().unwrap();
    let served = regions
        .serve_pull(&tx, RegionId(1), RegionId(2), first, 1000)
        .unwrap();
    // (What is left is the first volume's, which region 2 does not get: scanned past.)
    assert!(
        served.records.is_empty() && served.next > first,
        "{served:?}"
    );
    regions
        .serve_pull(&tx, RegionId(1), RegionId(2), u64::MAX, 10)
        .unwrap();
    assert_eq!(regions.link(2).acked, *kept.last().unwrap());
}

/// The records of `from` that `to` has not applied yet, as one batch, applied in `to`.
fn late_batch(from: &Region, to: &mut Region) -> MergeOutcome {
    let batch = RemoteBatch {
        origin: from.id,
        records: from.changes(to.watermark(from.id) + 1, usize::MAX),
        frontier: None,
        settled: None,
        scanned: 0,
        settled_by: Vec::new(),
    };
    let own = to.id;
    to.write(|t| apply_remote(t, own, &batch)).unwrap()
}

#[test]
fn changes_of_other_names_in_one_directory_commute_and_the_directory_still_matches() {
    let mut rs = regions(2);
    let root = rs[0].volume_root();
    let d = attr_of(rs[0].run(mknod(root, "d", FileKind::Dir))).ino;
    settle(&mut rs);
    // Region 2 writes first (older stamps) in the directory both share, then region 1,
    // on a clock ahead: everything of region 2 arrives late at region 1.
    for i in 0..20 {
        rs[1]
            .run(mknod(d, &format!("two-{i}"), FileKind::File))
            .unwrap();
    }
    rs[1].run(mknod(d, "sub-two", FileKind::Dir)).unwrap();
    rs[1].run(unlink(d, "two-3")).unwrap();
    rs[0].phys += 10_000;
    for i in 0..20 {
        rs[0]
            .run(mknod(d, &format!("one-{i}"), FileKind::File))
            .unwrap();
    }
    rs[0].run(mknod(d, "sub-one", FileKind::Dir)).unwrap();
    let newest = attr_of(rs[0].run(mknod(d, "last", FileKind::File)));
    let (a, b) = two(&mut rs, 1, 0);
    let outcome = late_batch(a, b);
    assert_eq!(outcome.applied, 22);
    assert_eq!(outcome.redone, 0, "no change of region 1 meets region 2's");
    settle(&mut rs);
    for r in &rs {
        let dir = r.read(|x| x.getattr(d)).unwrap();
        assert_eq!(dir.nlink, 4, "two subdirectories");
        assert_eq!(dir.mtime, newest.ctime, "the newest change's time");
        assert_eq!(r.names(d).len(), 42);
        check_tree(r);
        assert_consistent(r);
    }
    assert_eq!(namespace_dump(&rs[0]), namespace_dump(&rs[1]));

    // A late change of the same name does meet (a conflict name), and so does one of
    // the directory as a whole: the times and count stay those of stamp order.
    rs[1].run(mknod(d, "clash", FileKind::File)).unwrap();
    rs[1].run(mknod(d, "sub-late", FileKind::Dir)).unwrap();
    rs[0].phys += 10_000;
    rs[0].run(mknod(d, "other", FileKind::File)).unwrap();
    rs[0]
        .run(Op::SetAttr {
            ino: d,
            set: SetAttr {
                perm: Some(0o750),
                ..SetAttr::default()
            },
            creds: root_creds(),
        })
        .unwrap();
    rs[0].run(mknod(d, "clash", FileKind::File)).unwrap();
    rs[0].run(unlink(d, "one-4")).unwrap();
    let (a, b) = two(&mut rs, 1, 0);
    let outcome = late_batch(a, b);
    assert_eq!(outcome.applied, 2);
    assert_eq!(
        outcome.redone, 3,
        "the mode change, and the creates and unlink after it"
    );
    settle(&mut rs);
    for r in &rs {
        let dir = r.read(|x| x.getattr(d)).unwrap();
        assert_eq!(dir.nlink, 5);
        assert_eq!(dir.perm & 0o7777, 0o750);
        check_tree(r);
        assert_consistent(r);
    }
    assert_eq!(namespace_dump(&rs[0]), namespace_dump(&rs[1]));
}

#[test]
fn a_home_moved_by_force_fences_what_the_old_home_accepted_after_and_keeps_it() {
    let mut rs = regions(2);
    let home = |h: u16, force: bool| Op::SetVolumeHome {
        name: "main".into(),
        home: Some(RegionId(h)),
        force,
    };
    // A planned change is made at the current home only (region 2 is not one yet).
    rs[0].run(home(1, false)).unwrap();
    settle(&mut rs);
    let err = rs[1].run(home(2, false)).unwrap_err();
    assert!(matches!(err, NsError::ReadOnly(_)), "{err:?}");
    let root = rs[0].volume_root();
    let f = attr_of(rs[0].run(mknod(root, "kept", FileKind::File)));
    settle(&mut rs);
    // Region 2 changes nothing of a volume whose home is region 1.
    let err = rs[1]
        .run(mknod(root, "refused", FileKind::File))
        .unwrap_err();
    assert!(matches!(err, NsError::ReadOnly(_)), "{err:?}");

    // Cut off: region 2 takes over by force; region 1 goes on, stamped after it.
    let promoted = rs[1].run(home(2, true)).unwrap();
    let Reply::Volume(v) = promoted else {
        panic!("{promoted:?}")
    };
    assert_eq!((v.policy.home, v.policy.epoch), (Some(RegionId(2)), 2));
    rs[0].phys += 10_000;
    rs[0].run(mknod(root, "late", FileKind::File)).unwrap();
    let (w, block) = write_op(f.ino, 0, b"late bytes");
    rs[0].run(w).unwrap();
    rs[0].run(unlink(root, "kept")).unwrap();
    rs[1].phys += 20_000;
    rs[1]
        .run(mknod(root, "at-new-home", FileKind::File))
        .unwrap();

    settle(&mut rs);
    for r in &rs {
        let names = r.names(root);
        assert!(names.contains(&"kept".to_string()), "{names:?}");
        assert!(names.contains(&"at-new-home".to_string()), "{names:?}");
        assert!(!names.contains(&"late".to_string()), "{names:?}");
        let kept: Vec<&String> = names.iter().filter(|n| n.starts_with("fenced-")).collect();
        assert_eq!(kept.len(), 1, "{names:?}");
        let copy = r.lookup(root, kept[0]).unwrap();
        let ext = r.read(|x| x.extents(copy.ino, 0, 100)).unwrap();
        assert_eq!(ext[0].block, block, "the late write's bytes are kept");
        assert!(
            r.read(|x| x.extents(f.ino, 0, 100)).unwrap().is_empty(),
            "and not applied to the file"
        );
        let fenced = r.conflicts().iter().filter(|c| c.kind == "fenced").count();
        assert_eq!(fenced, 3, "{:?}", r.conflicts());
        check_tree(r);
        assert_consistent(r);
    }
    assert_eq!(namespace_dump(&rs[0]), namespace_dump(&rs[1]));
    // Region 1 has learnt: its changes go to region 2 now.
    let err = rs[0].run(mknod(root, "after", FileKind::File)).unwrap_err();
    assert!(matches!(err, NsError::ReadOnly(_)), "{err:?}");
}

/// Region 2's pull of region 1's records from `from` (answered within ten minutes),
/// gathering for `gather` when it finds some.
async fn pull_by_2(
    regions: &crate::regions::Regions,
    db: &redb::Database,
    watching: &mut tokio::sync::watch::Receiver<u64>,
    gather: Option<std::time::Duration>,
    from: u64,
) -> meridian_proto::pb::meta::PullChangesResponse {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    let (one, two) = (RegionId(1), RegionId(2));
    regions
        .answer_pull(
            db,
            watching,
            move |_| gather,
            one,
            two,
            one,
            from,
            1000,
            deadline,
        )
        .await
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// The sequences of `a`'s change log.
fn seqs(a: &Region) -> Vec<u64> {
    a.changes(1, usize::MAX).iter().map(|c| c.0).collect()
}

/// A peer's pull that waits for records reads each record of a volume that does not live
/// there once, not again at every change made after it (`Regions::answer_pull`: with
/// three regions, such rereads were a third of a leader's time during creates).
#[test]
fn a_waiting_pull_reads_each_record_its_peer_does_not_get_once() {
    let mut a = Region::new(1, &[RegionId(2)]);
    let here = make_volume(&mut a, "here", vec![RegionId(1)]);
    let both = make_volume(&mut a, "both", vec![RegionId(1), RegionId(2)]);
    let from = seqs(&a).last().unwrap() + 1;
    for i in 0..200 {
        a.run(mknod(here, &format!("before{i}"), FileKind::File))
            .unwrap();
    }
    let regions = crate::regions::Regions::default();
    let db = a.db.clone();
    let (applied, mut watching) = tokio::sync::watch::channel(0u64);
    let reply = runtime().block_on(async {
        let mut pull = std::pin::pin!(pull_by_2(&regions, &db, &mut watching, None, from));
        assert!(
            futures::poll!(pull.as_mut()).is_pending(),
            "nothing for region 2 yet: the pull waits"
        );
        for i in 0..300 {
            a.run(mknod(here, &format!("after{i}"), FileKind::File))
                .unwrap();
            applied.send_replace(i + 1);
            assert!(futures::poll!(pull.as_mut()).is_pending(), "change {i}");
        }
        a.run(mknod(both, "for-2", FileKind::File)).unwrap();
        applied.send_replace(1_000);
        pull.await
    });
    assert_eq!(reply.records.len(), 1, "{reply:?}");
    let written = seqs(&a).iter().filter(|s| **s >= from).count() as u64;
    assert!(written > 500, "{written}");
    assert_eq!(
        regions.records_read(2),
        written,
        "each record from the pull's start on read once"
    );
}

/// A pull that finds records while the log grows fast waits for more before it answers
/// (`gather`), and reads them all again: what came meanwhile goes in the same answer.
#[test]
fn a_pull_that_finds_records_gathers_more_when_told_to() {
    let mut a = Region::new(1, &[RegionId(2)]);
    let both = make_volume(&mut a, "both", vec![RegionId(1), RegionId(2)]);
    let from = seqs(&a).last().unwrap() + 1;
    a.run(mknod(both, "first", FileKind::File)).unwrap();
    let first = seqs(&a).iter().filter(|s| **s >= from).count();
    let regions = crate::regions::Regions::default();
    let db = a.db.clone();
    let (_applied, mut watching) = tokio::sync::watch::channel(0u64);
    let rt = runtime();
    // Not told to: the first change goes alone, at once.
    let alone = rt.block_on(pull_by_2(&regions, &db, &mut watching, None, from));
    assert_eq!(alone.records.len(), first, "{alone:?}");
    let gather = Some(std::time::Duration::from_millis(20));
    let gathered = rt.block_on(async {
        let mut p = std::pin::pin!(pull_by_2(&regions, &db, &mut watching, gather, from));
        assert!(futures::poll!(p.as_mut()).is_pending(), "it gathers");
        a.run(mknod(both, "second", FileKind::File)).unwrap();
        p.await
    });
    let all = seqs(&a).iter().filter(|s| **s >= from).count();
    assert!(all > first);
    assert_eq!(gathered.records.len(), all, "{gathered:?}");
}
