//! Records relayed through a region: three regions linked as a chain, 1 - 2 - 3, where 1
//! and 3 are not peers and get each other's records through region 2's relay table, as
//! the region code pulls them (`Regions::serve_pull_of`).

use meridian_proto::{Hlc, RegionId};
use redb::ReadableDatabase;

use super::test_regions::*;

/// Region `to` pulls `origin`'s records through `via` (which relays them), applies them.
fn relay(via: &Region, to: &mut Region, origin: RegionId) -> usize {
    let wm = to.watermark(origin);
    let tx = via.db.begin_read().unwrap();
    let reply = crate::regions::Regions::default()
        .serve_pull_of(&tx, via.id, to.id, origin, wm + 1, 1024)
        .unwrap();
    drop(tx);
    let n = reply.records.len();
    let batch = RemoteBatch {
        origin,
        records: reply
            .records
            .iter()
            .map(|c| (c.seq, serde_json::from_slice(&c.record).unwrap()))
            .collect(),
        frontier: Hlc::from_key(&reply.frontier),
        settled: Hlc::from_key(&reply.stable),
        scanned: reply.next,
        settled_by: Vec::new(),
    };
    let own = to.id;
    to.write(|t| apply_remote(t, own, &batch)).unwrap();
    n
}

fn chain() -> Vec<Region> {
    let (one, middle, three) = (RegionId(1), RegionId(2), RegionId(3));
    let a = Region::new(1, &[middle]);
    let b = Region::new(2, &[one, three]);
    let c = Region::new(3, &[middle]);
    a.write(|t| merge::set_relayed(t, &[(three, middle)]).unwrap());
    c.write(|t| merge::set_relayed(t, &[(one, middle)]).unwrap());
    vec![a, b, c]
}

/// One exchange along the chain: the middle pulls both ends; each end pulls the middle
/// and, through it, the other end.
fn exchange(rs: &mut [Region]) {
    let (one, three) = (RegionId(1), RegionId(3));
    for (from, to) in [(0, 1), (2, 1), (1, 0), (1, 2)] {
        let (f, t) = two(rs, from, to);
        deliver(f, t, usize::MAX, 0);
    }
    let (b, a) = two(rs, 1, 0);
    relay(b, a, three);
    let (b, c) = two(rs, 1, 2);
    relay(b, c, one);
}

#[test]
fn the_ends_of_a_chain_converge_through_the_middle_and_relayed_records_go_once_held() {
    let mut rs = chain();
    rs[0]
        .run(Op::CreateVolume {
            name: "main".into(),
            policy: VolumePolicy {
                regions: vec![RegionId(1), RegionId(2), RegionId(3)],
                ..VolumePolicy::default()
            },
        })
        .unwrap();
    for _ in 0..3 {
        exchange(&mut rs);
    }
    let root = rs[2].volume_root();
    attr_of(rs[0].run(mknod(root, "from-1", FileKind::File)));
    attr_of(rs[2].run(mknod(root, "from-3", FileKind::Dir)));
    attr_of(rs[2].run(mknod(root, "same", FileKind::File)));
    attr_of(rs[0].run(mknod(root, "same", FileKind::File)));
    for _ in 0..4 {
        exchange(&mut rs);
    }
    let want = namespace_dump(&rs[0]);
    for r in &rs {
        assert_eq!(namespace_dump(r), want, "region {} differs", r.id.0);
        check_tree(r);
        assert_consistent(r);
    }
    let names = rs[2].names(root);
    assert!(names.contains(&"from-1".to_string()), "{names:?}");
    assert_eq!(
        names.iter().filter(|n| n.starts_with("same")).count(),
        2,
        "{names:?}"
    );

    // Region 2 keeps region 3's records for region 1 until region 1 says it holds them.
    let kept = |r: &Region| -> usize {
        r.write(|t| {
            use redb::ReadableTableMetadata;
            t.relay.open().unwrap().len().unwrap() as usize
        })
    };
    assert!(kept(&rs[1]) > 0);
    let (one, three) = (RegionId(1), RegionId(3));
    let held_by_1 = rs[0].watermark(three);
    rs[1].write(|t| {
        super::links::note(
            t,
            &super::links::PeerNote {
                region: one,
                acked: None,
                event: None,
                have: vec![(three, held_by_1)],
            },
        )
        .unwrap()
    });
    rs[1].write(|t| {
        super::links::note(
            t,
            &super::links::PeerNote {
                region: RegionId(3),
                acked: None,
                event: None,
                have: vec![(one, rs[2].watermark(one))],
            },
        )
        .unwrap()
    });
    attr_of(rs[2].run(mknod(root, "later-3", FileKind::File)));
    attr_of(rs[0].run(mknod(root, "later-1", FileKind::File)));
    for _ in 0..2 {
        exchange(&mut rs);
    }
    // What both ends held went; asking the middle for it again is answered with the gap.
    let tx = rs[1].db.begin_read().unwrap();
    let err = crate::regions::Regions::default()
        .serve_pull_of(&tx, rs[1].id, one, three, 1, 1024)
        .unwrap_err();
    assert!(err.to_string().contains("backfill"), "{err}");
    drop(tx);
    assert!(rs[0].names(root).contains(&"later-3".to_string()));
}

/// A pull of relayed records that waits reads each of them once, not again from where it
/// asked at every entry applied meanwhile (`Regions::answer_pull`): region 2 keeps region
/// 3's records for region 1, nearly all of them of a volume region 1 does not hold.
#[test]
fn a_waiting_pull_of_relayed_records_reads_each_of_them_once() {
    use meridian_proto::InodeId;
    use redb::ReadableTable;
    let mut rs = chain();
    let (one, middle, three) = (RegionId(1), RegionId(2), RegionId(3));
    let main = make_volume(&mut rs[2], "main", vec![one, middle, three]);
    let far = make_volume(&mut rs[2], "far", vec![middle, three]);
    for _ in 0..3 {
        exchange(&mut rs);
    }
    // Region 3 makes a change; region 2 merges it (and keeps it to relay).
    let change = |rs: &mut [Region], parent: InodeId, name: &str| {
        attr_of(rs[2].run(mknod(parent, name, FileKind::File)));
        let (c, b) = two(rs, 2, 1);
        deliver(c, b, usize::MAX, 0);
    };
    let from = rs[0].watermark(three) + 1;
    for i in 0..200 {
        change(&mut rs, far, &format!("before{i}"));
    }
    let regions = crate::regions::Regions::default();
    let db = rs[1].db.clone();
    let (applied, mut watching) = tokio::sync::watch::channel(0u64);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let reply = rt
        .block_on(async {
            let mut pull = std::pin::pin!(regions.answer_pull(
                &db,
                &mut watching,
                |_| None,
                middle,
                one,
                three,
                from,
                1000,
                deadline,
            ));
            assert!(
                futures::poll!(pull.as_mut()).is_pending(),
                "nothing of region 3 for region 1 yet: the pull waits"
            );
            for i in 0..300 {
                change(&mut rs, far, &format!("after{i}"));
                applied.send_replace(i + 1);
                assert!(futures::poll!(pull.as_mut()).is_pending(), "change {i}");
            }
            change(&mut rs, main, "for-1");
            applied.send_replace(1_000);
            pull.await
        })
        .unwrap();
    assert_eq!(reply.records.len(), 1, "{reply:?}");
    let kept = rs[1].write(|t| {
        let lo = super::relay::relay_key(three, from);
        let hi = super::relay::relay_key(three, u64::MAX);
        t.relay
            .open()
            .unwrap()
            .range(lo.as_slice()..=hi.as_slice())
            .unwrap()
            .count() as u64
    });
    assert!(kept > 500, "{kept}");
    assert_eq!(
        regions.relayed_records_read(1),
        kept,
        "each relayed record from the pull's start on read once"
    );
}
