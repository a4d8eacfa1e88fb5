//! Records from a peer region that is broken or hostile: made-up operations on made-up or
//! real inodes, effects that lie, names and extents out of bounds, other regions' volumes.
//! The state machine never stops on them (only a failing store may stop it), refuses a
//! batch whole or skips a record the same way on every member, and the namespace stays
//! consistent (fsck clean, reference counts exact).

use meridian_proto::{BlockId, Hlc, InodeId, RegionId};
use proptest::prelude::*;

use super::test_regions::*;

/// Region 1's state, the same on every call (so two calls are two members of the region).
fn member() -> (Region, Vec<InodeId>, Vec<u32>) {
    let mut rs = regions(2);
    let root = rs[0].volume_root();
    let mut inos = vec![root, InodeId(0), InodeId(u64::MAX)];
    for (i, name) in ["f", "g", "d"].iter().enumerate() {
        let kind = if i == 2 {
            FileKind::Dir
        } else {
            FileKind::File
        };
        inos.push(attr_of(rs[0].run(mknod(root, name, kind))).ino);
    }
    let (w, _) = write_op(inos[3], 0, b"content");
    rs[0].run(w).unwrap();
    rs[1].run(mknod(root, "h", FileKind::File)).unwrap();
    settle(&mut rs);
    inos.push(rs[0].lookup(root, "h").unwrap().ino);
    let main = rs[0].read(|x| x.volume("main")).unwrap().id;
    let vols = vec![main, 0, (2 << 16) | 7, u32::MAX];
    let mut rs = rs.into_iter();
    (rs.next().unwrap(), inos, vols)
}

fn arb_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => (0..4u8).prop_map(|k| vec![b'a' + k]),
        1 => Just(Vec::new()),
        1 => Just(b"..".to_vec()),
        1 => Just(b"a/b".to_vec()),
        1 => Just(vec![b'x'; 300]),
        1 => proptest::collection::vec(any::<u8>(), 0..8),
    ]
}

fn arb_hlc() -> impl Strategy<Value = Hlc> {
    (
        0..2_000_000u64,
        0..3u32,
        prop_oneof![Just(0u16), Just(1), Just(2), Just(u16::MAX)],
    )
        .prop_map(|(wall_ms, counter, region)| Hlc {
            wall_ms,
            counter,
            region: RegionId(region),
        })
}

/// An inode: one of the member's (by index) or made up.
fn arb_ino(pool: usize) -> impl Strategy<Value = Result<usize, u64>> {
    prop_oneof![
        3 => (0..pool).prop_map(Ok),
        1 => any::<u64>().prop_map(Err),
        1 => (1..50u64).prop_map(|l| Err((2 << 48) | l)),
    ]
}

#[derive(Clone, Debug)]
struct Hostile {
    op: u8,
    a: Result<usize, u64>,
    b: Result<usize, u64>,
    name: Vec<u8>,
    name2: Vec<u8>,
    num: u64,
    seen: Option<Hlc>,
    created: Option<Result<usize, u64>>,
    target: Option<Result<usize, u64>>,
    volume: usize,
    regions: u8,
    stamp: u64,
}

fn arb_hostile() -> impl Strategy<Value = Hostile> {
    (
        (0..15u8, arb_ino(8), arb_ino(8), arb_name(), arb_name()),
        (
            any::<u64>(),
            proptest::option::of(arb_hlc()),
            proptest::option::of(arb_ino(8)),
            proptest::option::of(arb_ino(8)),
            0..4usize,
            0..4u8,
            1..500u64,
        ),
    )
        .prop_map(
            |((op, a, b, name, name2), (num, seen, created, target, volume, regions, stamp))| {
                Hostile {
                    op,
                    a,
                    b,
                    name,
                    name2,
                    num,
                    seen,
                    created,
                    target,
                    volume,
                    regions,
                    stamp,
                }
            },
        )
}

fn record(h: &Hostile, inos: &[InodeId], vols: &[u32], base: u64) -> Record {
    let ino = |x: &Result<usize, u64>| match x {
        Ok(i) => inos[i % inos.len()],
        Err(raw) => InodeId(*raw),
    };
    let (a, b) = (ino(&h.a), ino(&h.b));
    let creds = Creds::root();
    let extent = Extent {
        offset: h.num % 1_000_000,
        len: h.num % 7,
        block: BlockId::of(&h.num.to_be_bytes()),
        block_offset: (h.num % 5) as u32,
        block_len: (h.num % 11) as u32,
    };
    let op = match h.op {
        0 => Op::Mknod {
            parent: a,
            name: h.name.clone(),
            kind: [FileKind::File, FileKind::Dir, FileKind::Symlink][(h.num % 3) as usize],
            perm: 0o644,
            rdev: 0,
            exclusive: true,
            creds,
        },
        1 => Op::Symlink {
            parent: a,
            name: h.name.clone(),
            target: h.name2.clone(),
            creds,
        },
        2 => Op::Link {
            ino: a,
            new_parent: b,
            new_name: h.name.clone(),
            creds,
        },
        3 => Op::Unlink {
            parent: a,
            name: h.name.clone(),
            creds,
        },
        4 => Op::Rmdir {
            parent: a,
            name: h.name.clone(),
            creds,
        },
        5 => Op::Rename {
            parent: a,
            name: h.name.clone(),
            new_parent: b,
            new_name: h.name2.clone(),
            flags: RenameFlags {
                noreplace: h.num & 1 == 1,
                exchange: h.num & 2 == 2,
            },
            creds,
        },
        6 => Op::SetAttr {
            ino: a,
            set: SetAttr {
                size: Some(h.num % 5_000_000_000),
                perm: Some(0o7777),
                uid: Some(h.num as u32),
                ..SetAttr::default()
            },
            creds,
        },
        7 => Op::SetXattr {
            ino: a,
            name: h.name.clone(),
            value: h.name2.clone(),
            mode: XattrMode::Create,
            creds,
        },
        8 => Op::RemoveXattr {
            ino: a,
            name: h.name.clone(),
            creds,
        },
        9 | 10 => Op::CommitExtents {
            ino: a,
            extents: vec![extent],
            size: h.num,
            base_version: None,
            creds,
            staged: Vec::new(),
        },
        11 => Op::Compact {
            ino: a,
            offset: h.num,
            len: u64::MAX,
            expected: Vec::new(),
            replacement: vec![extent],
        },
        12 => Op::CreateVolume {
            name: String::from_utf8_lossy(&h.name).into_owned(),
            policy: VolumePolicy {
                regions: vec![RegionId(1), RegionId(2)],
                replicas: (h.num % 20) as u32,
                ..VolumePolicy::default()
            },
        },
        13 => Op::DeleteVolume {
            name: "main".into(),
        },
        _ => Op::Accessed { ino: a },
    };
    let volume = vols[h.volume % vols.len()];
    Record {
        hlc: Hlc {
            wall_ms: base + h.stamp,
            counter: 0,
            region: RegionId(2),
        },
        now: Timespec::from_nanos(h.num),
        op,
        effects: Effects {
            created: h.created.as_ref().map(ino),
            created_volume: Some(volume),
            replaced: h.target.as_ref().map(ino),
            seen: h.seen,
            target: h.target.as_ref().map(ino),
            replaced_seen: h.seen,
            copy_of: h.created.as_ref().map(ino),
            links: Some((h.num % 4) as u32),
            copied: None,
            copy_base: None,
        },
        volume,
        regions: match h.regions {
            0 => vec![RegionId(2)],
            _ => vec![RegionId(1), RegionId(2)],
        },
        deps: if h.regions == 3 {
            vec![(RegionId(3), 5)]
        } else {
            Vec::new()
        },
        client: Some(h.num % 7).filter(|n| *n > 0),
        epoch: h.num % 3,
    }
}

/// Feeds `hostile` to one member in batches of `per` records; returns each outcome.
fn feed(m: &Region, records: &[Record], per: usize) -> Vec<Result<MergeOutcome, NsError>> {
    let mut seq = m.watermark(RegionId(2));
    let mut out = Vec::new();
    for chunk in records.chunks(per.max(1)) {
        let batch = RemoteBatch {
            origin: RegionId(2),
            records: chunk
                .iter()
                .map(|r| {
                    seq += 1;
                    (seq, r.clone())
                })
                .collect(),
            frontier: None,
            settled: None,
            scanned: 0,
            settled_by: Vec::new(),
        };
        let before = namespace_dump(m);
        let outcome = m.write(|t| apply_remote(t, RegionId(1), &batch));
        match &outcome {
            Err(NsError::Store(e)) => panic!("a hostile batch stopped the state machine: {e}"),
            Err(_) => {
                assert_eq!(
                    namespace_dump(m),
                    before,
                    "a refused batch changed something"
                );
                seq -= chunk.len() as u64;
            }
            Ok(_) => {}
        }
        out.push(outcome);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn hostile_records_never_stop_a_region_and_every_member_ends_identical(
        hostile in proptest::collection::vec(arb_hostile(), 1..30),
        per in 1..6usize,
    ) {
        let (a, inos, vols) = member();
        let (b, _, _) = member();
        let base = a.head().map_or(0, |h| h.wall_ms);
        let records: Vec<Record> = hostile.iter().map(|h| record(h, &inos, &vols, base)).collect();
        let out_a = feed(&a, &records, per);
        let out_b = feed(&b, &records, per);
        prop_assert_eq!(out_a, out_b);
        prop_assert_eq!(namespace_dump(&a), namespace_dump(&b));
        check_tree(&a);
        assert_consistent(&a);
        // The member still takes local operations.
        let root = a.volume_root();
        let mut a = a;
        a.run(mknod(root, "still-works", FileKind::File)).unwrap();
    }
}

/// The last inode number, named as a directory, a target and a created inode by every kind
/// of record: the key range of its entries has no next inode to end at (the proptest above
/// found one path that overflowed; its seed is kept in proptest-regressions).
#[test]
fn records_naming_the_last_inode_number_change_nothing_and_panic_nowhere() {
    let (m, inos, vols) = member();
    let last: Result<usize, u64> = Ok(2); // InodeId(u64::MAX) in the pool
    let records: Vec<Record> = (0..15u8)
        .flat_map(|op| {
            [Ok(0), last].into_iter().map(move |other| Hostile {
                op,
                a: last,
                b: other,
                name: b"a".to_vec(),
                name2: b"b".to_vec(),
                num: 3,
                seen: None,
                created: Some(last),
                target: Some(last),
                volume: 0,
                regions: 1,
                stamp: 10 + u64::from(op),
            })
        })
        .map(|h| record(&h, &inos, &vols, 2_000_000))
        .collect();
    for outcome in feed(&m, &records, 1) {
        assert!(!matches!(outcome, Err(NsError::Store(_))), "{outcome:?}");
    }
    assert_consistent(&m);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Every decoder of a row the state reads back from disk (a damaged file, a hostile
    /// snapshot) answers arbitrary bytes with a value or an error, never a panic; a value
    /// it gives back encodes to what it read.
    #[test]
    fn row_decoders_take_any_bytes(
        key in proptest::collection::vec(any::<u8>(), 0..40),
        value in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        use super::tables::{decode_dirent, decode_extent, i64_of};
        if let Ok(e) = decode_dirent(&key, &value) {
            prop_assert_eq!(e.name.as_slice(), &key[8..]);
        }
        if let Ok(e) = decode_extent(&key, &value) {
            prop_assert_eq!(e.offset.to_be_bytes().to_vec(), key[8..16].to_vec());
        }
        let _ = i64_of(Some(&value));
        let _ = super::dir_times::decode(&value);
        let _ = super::footprint::Footprint::decode(&value);
        let _ = Hlc::from_key(&value);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: meridian_proto::mutate::cases(128), ..ProptestConfig::default() })]

    /// A fuzz target for the cross-region record decoder: a record's bytes as a peer region
    /// sends them, damaged (edits of a valid encoding reach its field names, numbers, names
    /// and nesting), either fail to decode, which the pull loop reports and skips, or decode
    /// to a record that the region takes or refuses like any hostile record: no panic, both
    /// members identical, the tree whole.
    #[test]
    fn damaged_record_bytes_decode_to_an_error_or_a_record_the_region_survives(
        hostile in proptest::collection::vec(arb_hostile(), 1..8),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
    ) {
        let (a, inos, vols) = member();
        let (b, _, _) = member();
        let base = a.head().map_or(0, |h| h.wall_ms);
        let records: Vec<Record> = hostile
            .iter()
            .map(|h| {
                let bytes = serde_json::to_vec(&record(h, &inos, &vols, base)).unwrap();
                serde_json::from_slice(&meridian_proto::mutate::mutate(&bytes, &edits))
            })
            .filter_map(Result::ok)
            .collect();
        prop_assert_eq!(feed(&a, &records, 3), feed(&b, &records, 3));
        prop_assert_eq!(namespace_dump(&a), namespace_dump(&b));
        check_tree(&a);
        assert_consistent(&a);
    }
}
