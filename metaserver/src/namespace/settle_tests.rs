//! Volumes settle with their own regions: a region that is cut off holds back the merged
//! log and the tombstones of the volumes it shares, and nothing of the others.

use meridian_proto::RegionId;
use redb::ReadableDatabase;

use super::test_regions::*;

/// Records of `volume` in the merged log, and tombstones of it.
fn history_of(r: &Region, volume: u32) -> (usize, usize) {
    let tx = r.db.begin_read().unwrap();
    let records = dump_table(&tx, OPLOG, |k| k.to_vec(), |v| v.to_vec())
        .into_iter()
        .filter(|(_, v)| serde_json::from_slice::<Record>(v).unwrap().volume == volume)
        .count();
    let tombs = dump_table(&tx, TOMBS, |k| k.to_be_bytes().to_vec(), |v| v.to_vec())
        .into_iter()
        .filter(|(_, v)| serde_json::from_slice::<Tomb>(v).unwrap().inode.attr.volume == volume)
        .count();
    (records, tombs)
}

#[test]
fn a_cut_region_holds_back_only_the_volumes_it_shares() {
    // "main" lives in regions 1, 2 and 3; "pair" in 1 and 2 only.
    let mut rs = regions(3);
    make_volume(&mut rs[0], "pair", vec![RegionId(1), RegionId(2)]);
    // Every region, region 3 included, settles past the volumes' creations.
    settle(&mut rs);
    promise_all(&mut rs);
    settle(&mut rs);
    let main = rs[0].read(|x| x.volume("main")).unwrap();
    let pair = rs[0].read(|x| x.volume("pair")).unwrap();

    // Region 3 is cut off: regions 1 and 2 create and remove files in both volumes.
    for i in 0..20 {
        for r in &mut rs[..2] {
            for root in [main.root, pair.root] {
                let name = format!("f{}-{i}", r.id.0);
                r.run(mknod(root, &name, FileKind::File)).unwrap();
                r.run(unlink(root, &name)).unwrap();
            }
        }
        exchange(&mut rs);
    }
    // (Their leaders promise later stamps, so the last records settle too.)
    promise_all(&mut rs[..2]);
    exchange(&mut rs);
    for r in &rs[..2] {
        // "pair" settled: its records left the merged log, its tombstones were purged.
        assert_eq!(history_of(r, pair.id), (0, 0), "region {}", r.id.0);
        // "main" waits for region 3, which has seen none of it.
        let (records, tombs) = history_of(r, main.id);
        assert!(
            records >= 80,
            "region {}: {records} records of main",
            r.id.0
        );
        assert_eq!(tombs, 40, "region {}", r.id.0);
        assert_consistent(r);
    }
    assert_eq!(history_of(&rs[2], main.id), (0, 0));

    // Healed: "main" settles too, and every region holds the same.
    settle(&mut rs);
    promise_all(&mut rs);
    settle(&mut rs);
    for r in &rs {
        assert_eq!(history_of(r, main.id), (0, 0), "region {}", r.id.0);
        assert_consistent(r);
    }
    assert_eq!(namespace_dump(&rs[0]), namespace_dump(&rs[1]));
    for r in &rs {
        assert!(r.names(main.root).is_empty(), "region {}", r.id.0);
    }
}

#[test]
fn a_volume_level_change_waits_for_every_region() {
    // A volume made while region 3 is cut off settles only once region 3 has its
    // creation too: a late change of another region may still reorder that.
    let mut rs = regions(3);
    make_volume(&mut rs[0], "pair", vec![RegionId(1), RegionId(2)]);
    exchange(&mut rs);
    let pair = rs[0].read(|x| x.volume("pair")).unwrap();
    rs[1].run(mknod(pair.root, "a", FileKind::File)).unwrap();
    rs[1].run(unlink(pair.root, "a")).unwrap();
    exchange(&mut rs);
    for r in &rs[..2] {
        // The creation, the create and the unlink; the tombstone.
        assert_eq!(history_of(r, pair.id), (3, 1), "region {}", r.id.0);
    }
    settle(&mut rs);
    promise_all(&mut rs);
    settle(&mut rs);
    for r in &rs[..2] {
        assert_eq!(history_of(r, pair.id), (0, 0), "region {}", r.id.0);
        assert_consistent(r);
    }
}

#[test]
fn a_peer_that_is_behind_holds_back_only_the_change_records_it_needs() {
    let mut a = Region::new(1, &[RegionId(2)]);
    let here = make_volume(&mut a, "here", Vec::new());
    // Region 2 applied the first record, then was cut off.
    a.write(|t| {
        super::links::note(
            t,
            &super::links::PeerNote {
                region: RegionId(2),
                acked: Some(1),
                event: None,
                have: Vec::new(),
            },
        )
        .unwrap()
    });
    let shared = make_volume(&mut a, "shared", vec![RegionId(1), RegionId(2)]);
    for i in 0..30 {
        a.run(mknod(shared, &format!("s{i}"), FileKind::File))
            .unwrap();
        a.run(mknod(here, &format!("h{i}"), FileKind::File))
            .unwrap();
    }
    let old = a.changes(1, usize::MAX).last().unwrap().0;
    // Past the retention: the records region 2 lacks stay, those of the volume it does
    // not share go, behind the held ones too.
    a.phys += super::history::CHANGELOG_RETENTION_MS + 60_000;
    for i in 0..200 {
        a.run(mknod(here, &format!("late{i}"), FileKind::File))
            .unwrap();
    }
    let kept: Vec<(u64, Record)> = a
        .changes(1, usize::MAX)
        .into_iter()
        .filter(|(s, _)| *s <= old)
        .collect();
    assert_eq!(
        kept.len(),
        31,
        "{:?}",
        kept.iter().map(|k| k.0).collect::<Vec<_>>()
    );
    assert!(kept.iter().all(|(_, r)| r.allowed_in(RegionId(2))));

    // Region 2, back, is served every record it lacks, past the holes.
    let tx = a.db.begin_read().unwrap();
    let regions = crate::regions::Regions::default();
    let served = regions
        .serve_pull(&tx, RegionId(1), RegionId(2), 2, 1000)
        .unwrap();
    let seqs: Vec<u64> = served.records.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, kept.iter().map(|k| k.0).collect::<Vec<_>>());
    // One that asks again for what it had applied lost its state: it is told so.
    let err = regions
        .serve_pull(&tx, RegionId(1), RegionId(2), 1, 1000)
        .unwrap_err();
    assert!(err.to_string().contains("backfill"), "{err}");
}

/// A region with no peer keeps no merged log: its records would leave it with the next
/// one anyway. Its directories' times are written as they are, with no register, and the
/// head still moves. Once it has a peer, its records enter the log again.
#[test]
fn a_region_without_peers_keeps_no_merged_log_until_it_has_one() {
    let mut r = Region::new(1, &[]);
    let root = make_volume(&mut r, "solo", vec![RegionId(1)]);
    r.run(mknod(root, "d", FileKind::Dir)).unwrap();
    let d = r.lookup(root, "d").unwrap().ino;
    for i in 0..5 {
        r.run(mknod(d, &format!("f{i}"), FileKind::File)).unwrap();
    }
    r.run(mknod(d, "sub", FileKind::Dir)).unwrap();
    r.run(unlink(d, "f0")).unwrap();
    let kept = |r: &Region| {
        let tx = r.db.begin_read().unwrap();
        let log = dump_table(&tx, OPLOG, |k| k.to_vec(), |v| v.to_vec()).len();
        let times = dump_table(
            &tx,
            super::dir_times::DIR_TIMES,
            |k| k.to_vec(),
            |v| v.to_vec(),
        )
        .len();
        (log, times)
    };
    assert_eq!(
        kept(&r),
        (0, 0),
        "no merged log and no register without peers"
    );
    assert_eq!(r.names(d), ["f1", "f2", "f3", "f4", "sub"]);
    let dir = r.lookup(root, "d").unwrap();
    assert_eq!(dir.nlink, 3);
    let last = r.changes(1, usize::MAX).last().unwrap().1.hlc;
    assert_eq!(r.head(), Some(last), "the head moves past unlogged records");
    assert_eq!(dir.mtime, r.changes(1, usize::MAX).last().unwrap().1.now);
    assert_consistent(&r);

    // With a peer, records enter the merged log (and a late record can be ordered).
    r.write(|t| merge::set_peers(t, &[RegionId(2)]).unwrap());
    r.run(mknod(d, "g", FileKind::File)).unwrap();
    assert_eq!(kept(&r).0, 1);
    assert_consistent(&r);
}
