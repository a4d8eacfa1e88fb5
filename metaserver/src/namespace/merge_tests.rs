//! Convergence of regions: each conflict rule on its own, and a property test where several
//! regions change one volume concurrently and exchange records in random orders, with
//! duplicates and delays, and must end with identical namespaces.

use std::collections::{BTreeMap, BTreeSet};

use meridian_proto::{BlockId, Hlc, HlcClock, InodeId, RegionId};
use proptest::prelude::*;
use redb::backends::InMemoryBackend;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::tables::*;
use super::*;

/// One region: its own state database and clock.
struct Region {
    id: RegionId,
    db: Database,
    clock: HlcClock,
    phys: u64,
    /// Whether pulls from here carry the settled mark (which lets tombstones be purged).
    marks: bool,
}

fn root_creds() -> Creds {
    Creds::root()
}

impl Region {
    fn new(id: u16, peers: &[RegionId]) -> Self {
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .unwrap();
        let r = Region {
            id: RegionId(id),
            db,
            clock: HlcClock::new(RegionId(id)),
            phys: 1_000_000,
            marks: true,
        };
        r.write(|t| merge::set_peers(t, peers).unwrap());
        r
    }

    fn write<T>(&self, f: impl FnOnce(&mut WriteTables<'_>) -> T) -> T {
        let tx = self.db.begin_write().unwrap();
        let out = {
            let mut t = WriteTables::open(&tx).unwrap();
            f(&mut t)
        };
        tx.commit().unwrap();
        out
    }

    fn read<T>(&self, f: impl FnOnce(&NsReader<'_>) -> T) -> T {
        let tx = self.db.begin_read().unwrap();
        f(&NsReader::new(&tx))
    }

    /// Runs a local operation, stamped by this region's clock.
    fn run(&mut self, op: Op) -> Result<Reply, NsError> {
        self.phys += 1;
        let hlc = self.clock.now(self.phys);
        let cmd = Command {
            op,
            hlc,
            now: Timespec::from_nanos(self.phys * 1_000_000),
            request: None,
        };
        let out = self.write(|t| apply(t, &cmd));
        let head = self.write(|t| merge::head(&t.region_state).unwrap());
        if let Some(h) = head {
            self.clock.observe(h, self.phys);
        }
        out
    }

    /// This region's change log from `from` on.
    fn changes(&self, from: u64, limit: usize) -> Vec<(u64, Record)> {
        self.read(|r| r.changes(from, limit))
            .unwrap()
            .into_iter()
            .map(|(seq, bytes)| (seq, serde_json::from_slice(&bytes).unwrap()))
            .collect()
    }

    fn head(&self) -> Option<Hlc> {
        self.write(|t| merge::head(&t.region_state).unwrap())
    }

    fn stable(&self) -> Option<Hlc> {
        self.write(|t| merge::stable(&t.region_state).unwrap())
    }

    fn watermark(&self, origin: RegionId) -> u64 {
        self.write(|t| merge::watermark(&t.region_state, origin).unwrap())
    }

    fn lookup(&self, parent: InodeId, name: &str) -> Result<Attr, NsError> {
        self.read(|r| r.lookup(parent, name.as_bytes(), &root_creds()))
    }

    fn names(&self, dir: InodeId) -> Vec<String> {
        self.read(|r| r.readdir(dir, None, 10_000, &root_creds()))
            .unwrap()
            .entries
            .into_iter()
            .map(|e| String::from_utf8(e.name).unwrap())
            .collect()
    }

    fn conflicts(&self) -> Vec<Conflict> {
        self.read(|r| r.conflicts(None, 10_000)).unwrap()
    }

    fn volume_root(&self) -> InodeId {
        self.read(|r| r.volume("main")).unwrap().root
    }
}

/// Pulls up to `limit` records of `from`'s change log into `to`, starting `rewind` records
/// before what `to` has (duplicates), as a region's puller does.
fn deliver(from: &Region, to: &mut Region, limit: usize, rewind: u64) -> usize {
    let wm = to.watermark(from.id);
    let start = (wm + 1).saturating_sub(rewind).max(1);
    let records = from.changes(start, limit);
    let head_seq = from.changes(start, usize::MAX).last().map(|(s, _)| *s);
    let caught_up = records.last().map(|(s, _)| *s) == head_seq;
    let frontier = if caught_up {
        from.head()
    } else {
        records.last().map(|(_, r)| r.hlc)
    };
    let fresh = records.iter().filter(|(s, _)| *s > wm).count();
    let batch = RemoteBatch {
        origin: from.id,
        records: records.clone(),
        frontier,
        settled: if caught_up && from.marks {
            from.stable()
        } else {
            None
        },
    };
    let own = to.id;
    to.write(|t| apply_remote(t, own, &batch)).unwrap();
    for (_, r) in &records {
        to.phys += 1;
        to.clock.observe(r.hlc, to.phys);
    }
    fresh
}

/// One delivery from every region to every other; returns the new records delivered.
fn round(regions: &mut [Region]) -> usize {
    let mut moved = 0;
    for i in 0..regions.len() {
        for j in 0..regions.len() {
            if i != j {
                let (a, b) = two(regions, i, j);
                moved += deliver(a, b, usize::MAX, 0);
            }
        }
    }
    moved
}

/// Delivers everything between every pair until nothing is left.
fn settle(regions: &mut [Region]) {
    while round(regions) > 0 {}
    // Marks (frontiers, settled stamps) travel with every pull, records or not: a few
    // empty rounds bring every region to the same watermarks.
    for _ in 0..3 {
        round(regions);
    }
}

fn two(regions: &mut [Region], i: usize, j: usize) -> (&Region, &mut Region) {
    assert_ne!(i, j);
    if i < j {
        let (l, r) = regions.split_at_mut(j);
        (&l[i], &mut r[0])
    } else {
        let (l, r) = regions.split_at_mut(i);
        (&r[0], &mut l[j])
    }
}

/// `n` regions sharing volume "main", created in the first and delivered to the others.
fn regions(n: u16) -> Vec<Region> {
    let ids: Vec<RegionId> = (1..=n).map(RegionId).collect();
    let mut out: Vec<Region> = ids
        .iter()
        .map(|id| {
            let peers: Vec<RegionId> = ids.iter().copied().filter(|p| p != id).collect();
            Region::new(id.0, &peers)
        })
        .collect();
    out[0]
        .run(Op::CreateVolume {
            name: "main".into(),
            policy: VolumePolicy {
                regions: ids.clone(),
                ..VolumePolicy::default()
            },
        })
        .unwrap();
    settle(&mut out);
    out
}

fn mknod(parent: InodeId, name: &str, kind: FileKind) -> Op {
    Op::Mknod {
        parent,
        name: name.as_bytes().to_vec(),
        kind,
        perm: 0o644,
        rdev: 0,
        exclusive: true,
        creds: root_creds(),
    }
}

fn unlink(parent: InodeId, name: &str) -> Op {
    Op::Unlink {
        parent,
        name: name.as_bytes().to_vec(),
        creds: root_creds(),
    }
}

fn write_op(ino: InodeId, offset: u64, seed: &[u8]) -> (Op, BlockId) {
    let block = BlockId::of(seed);
    let op = Op::CommitExtents {
        ino,
        extents: vec![Extent {
            offset,
            len: 100,
            block,
            block_offset: 0,
            block_len: 100,
        }],
        size: 0,
        base_version: None,
        creds: root_creds(),
    };
    (op, block)
}

fn attr_of(reply: Result<Reply, NsError>) -> Attr {
    match reply.unwrap() {
        Reply::Attr(a) => a,
        other => panic!("expected attributes, got {other:?}"),
    }
}

type Rows = Vec<(Vec<u8>, Vec<u8>)>;

fn dump_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    tx: &redb::ReadTransaction,
    def: TableDefinition<'static, K, V>,
    key: impl Fn(K::SelfType<'_>) -> Vec<u8>,
    val: impl Fn(V::SelfType<'_>) -> Vec<u8>,
) -> Rows {
    let Ok(t) = tx.open_table(def) else {
        return Vec::new();
    };
    t.iter()
        .unwrap()
        .map(|item| {
            let (k, v) = item.unwrap();
            (key(k.value()), val(v.value()))
        })
        .collect()
}

/// Every table that makes up the namespace, as raw rows.
fn namespace_dump(r: &Region) -> BTreeMap<&'static str, Rows> {
    let tx = r.db.begin_read().unwrap();
    let b = |v: &[u8]| v.to_vec();
    let n = |v: u64| v.to_be_bytes().to_vec();
    let s = |v: &str| v.as_bytes().to_vec();
    BTreeMap::from([
        ("inodes", dump_table(&tx, INODES, n, b)),
        ("dirents", dump_table(&tx, DIRENTS, b, b)),
        ("extents", dump_table(&tx, EXTENTS, b, b)),
        ("xattrs", dump_table(&tx, XATTRS, b, b)),
        ("volumes", dump_table(&tx, VOLUMES, s, b)),
        ("block_refs", dump_table(&tx, BLOCK_REFS, b, n)),
        ("tombs", dump_table(&tx, TOMBS, n, b)),
        ("conflicts", dump_table(&tx, CONFLICTS, b, b)),
    ])
}

/// Checks the tree: every inode reachable from the root exactly as its link count says, no
/// directory inside itself, no entry pointing nowhere, no inode nobody reaches.
fn check_tree(r: &Region) {
    let root = r.volume_root();
    let tx = r.db.begin_read().unwrap();
    let inodes = tx.open_table(INODES).unwrap();
    let dirents = tx.open_table(DIRENTS).unwrap();
    let mut links: BTreeMap<u64, u32> = BTreeMap::new();
    let mut subdirs: BTreeMap<u64, u32> = BTreeMap::new();
    let mut seen_dirs = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        assert!(
            seen_dirs.insert(dir),
            "directory {dir} reached twice (a cycle?)"
        );
        let from = dirent_key(dir, b"");
        let to = dirent_key(InodeId(dir.0 + 1), b"");
        for item in dirents.range(from.as_slice()..to.as_slice()).unwrap() {
            let (k, v) = item.unwrap();
            let e = decode_dirent(k.value(), v.value()).unwrap();
            let node = read_inode(&inodes, e.ino)
                .unwrap()
                .unwrap_or_else(|| panic!("entry {:?} points at missing {}", e.name, e.ino));
            assert_eq!(node.attr.kind, e.kind);
            *links.entry(e.ino.0).or_default() += 1;
            if e.kind == FileKind::Dir {
                assert_eq!(node.parent, dir, "directory's parent");
                *subdirs.entry(dir.0).or_default() += 1;
                stack.push(e.ino);
            }
        }
    }
    for item in inodes.iter().unwrap() {
        let (k, v) = item.unwrap();
        let node: Inode = serde_json::from_slice(v.value()).unwrap();
        if k.value() == root.0 {
            continue;
        }
        let n = links.get(&k.value()).copied().unwrap_or(0);
        assert!(n > 0, "inode {} is an orphan", node.attr.ino);
        if node.attr.kind == FileKind::Dir {
            assert_eq!(n, 1);
            assert_eq!(
                node.attr.nlink,
                2 + subdirs.get(&k.value()).copied().unwrap_or(0)
            );
        } else {
            assert_eq!(node.attr.nlink, n, "link count of {}", node.attr.ino);
        }
    }
}

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
fn tombstones_are_purged_once_every_region_has_settled_past_them() {
    let mut rs = regions(3);
    let root = rs[0].volume_root();
    let f = attr_of(rs[0].run(mknod(root, "gone", FileKind::File)));
    let (w, block) = write_op(f.ino, 0, b"old content");
    rs[0].run(w).unwrap();
    settle(&mut rs);
    rs[1].run(unlink(root, "gone")).unwrap();
    // Only the region that removed it knows: its tombstone stays.
    let tombs = |r: &Region| r.write(|t| redb::ReadableTableMetadata::len(&t.tombs).unwrap());
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

/// How many extents, of live files and tombstones, use `block`: what its count must be.
fn extents_using(r: &Region, block: &BlockId) -> u64 {
    let tx = r.db.begin_read().unwrap();
    let t = tx.open_table(EXTENTS).unwrap();
    t.iter()
        .unwrap()
        .filter(|item| {
            let (k, v) = item.as_ref().unwrap();
            decode_extent(k.value(), v.value()).unwrap().block == *block
        })
        .count() as u64
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
    let tombs = |r: &Region| r.write(|t| redb::ReadableTableMetadata::len(&t.tombs).unwrap());
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
    let data = crate::raft::snapshot::dump(&rs[0].db.begin_read().unwrap()).unwrap();
    let tx = rs[1].db.begin_write().unwrap();
    crate::raft::snapshot::load(&tx, &data).unwrap();
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
        let kept = r.write(|t| redb::ReadableTableMetadata::len(&t.oplog).unwrap());
        assert!(
            kept < 5,
            "{kept} merged-log entries kept after everything is stable"
        );
    }
}

/// An action of the property test, run in one region.
#[derive(Clone, Debug)]
enum Action {
    Create {
        dir: u8,
        name: u8,
        dir_kind: bool,
    },
    Write {
        file: u8,
    },
    Unlink {
        file: u8,
    },
    Rmdir {
        dir: u8,
    },
    Rename {
        entry: u8,
        dir: u8,
        name: u8,
    },
    Chmod {
        entry: u8,
        perm: u16,
    },
    Xattr {
        entry: u8,
        value: u8,
    },
    Deliver {
        to: u8,
        limit: u8,
        rewind: u8,
    },
    /// A write of content some other write may also have (dedup: one block, many uses).
    WriteShared {
        file: u8,
        content: u8,
    },
    /// The region's physical clock jumps ahead (its later records sort after the others').
    Skew {
        by: u8,
    },
}

fn arb_action() -> impl Strategy<Value = (u8, Action)> {
    arb_action_weighted(1)
}

/// Actions, with removals and writes of shared content `churn` times as likely as usual
/// (more tombstones holding blocks that newer records use too).
fn arb_action_weighted(churn: u32) -> impl Strategy<Value = (u8, Action)> {
    let action = prop_oneof![
        3 => (any::<u8>(), 0..3u8, any::<bool>()).prop_map(|(dir, name, dir_kind)| Action::Create { dir, name, dir_kind }),
        3 => any::<u8>().prop_map(|file| Action::Write { file }),
        churn => any::<u8>().prop_map(|file| Action::Unlink { file }),
        1 => any::<u8>().prop_map(|dir| Action::Rmdir { dir }),
        2 => (any::<u8>(), any::<u8>(), 0..3u8).prop_map(|(entry, dir, name)| Action::Rename { entry, dir, name }),
        1 => (any::<u8>(), prop_oneof![Just(0o600u16), Just(0o644), Just(0o755)]).prop_map(|(entry, perm)| Action::Chmod { entry, perm }),
        1 => (any::<u8>(), 0..3u8).prop_map(|(entry, value)| Action::Xattr { entry, value }),
        3 => (any::<u8>(), 1..6u8, 0..3u8).prop_map(|(to, limit, rewind)| Action::Deliver { to, limit, rewind }),
        churn => (any::<u8>(), 0..3u8).prop_map(|(file, content)| Action::WriteShared { file, content }),
        1 => (0..3u8).prop_map(|by| Action::Skew { by }),
    ];
    (any::<u8>(), action)
}

/// Every (directory, name, inode, kind) reachable from the root, directories first.
fn entries(r: &Region) -> Vec<(InodeId, Vec<u8>, InodeId, FileKind)> {
    let root = r.volume_root();
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        let page = r
            .read(|x| x.readdir(dir, None, 10_000, &root_creds()))
            .unwrap();
        for e in page.entries {
            if e.kind == FileKind::Dir {
                stack.push(e.ino);
            }
            out.push((dir, e.name, e.ino, e.kind));
        }
    }
    out
}

fn run_action(rs: &mut [Region], who: u8, action: &Action, writes: &mut Vec<BlockId>) {
    let n = rs.len();
    let i = who as usize % n;
    let root = rs[i].volume_root();
    let all = entries(&rs[i]);
    let mut dirs: Vec<InodeId> = vec![root];
    dirs.extend(all.iter().filter(|e| e.3 == FileKind::Dir).map(|e| e.2));
    let files: Vec<_> = all.iter().filter(|e| e.3 == FileKind::File).collect();
    let pick_dir = |k: u8| dirs[k as usize % dirs.len()];
    let name = |k: u8| ["a", "b", "c"][k as usize % 3].as_bytes().to_vec();
    let r = &mut rs[i];
    let op = match action {
        Action::Create {
            dir,
            name: nm,
            dir_kind,
        } => Op::Mknod {
            parent: pick_dir(*dir),
            name: name(*nm),
            kind: if *dir_kind {
                FileKind::Dir
            } else {
                FileKind::File
            },
            perm: 0o755,
            rdev: 0,
            exclusive: true,
            creds: root_creds(),
        },
        Action::Write { file } => {
            if files.is_empty() {
                return;
            }
            let f = files[*file as usize % files.len()];
            // Writes never overlap, so every written block must stay referenced.
            let seq = writes.len() as u64;
            let (op, block) = write_op(f.2, seq * 4096, &seq.to_be_bytes());
            if r.run(op).is_ok() {
                writes.push(block);
            }
            return;
        }
        Action::Unlink { file } => {
            if files.is_empty() {
                return;
            }
            let f = files[*file as usize % files.len()];
            Op::Unlink {
                parent: f.0,
                name: f.1.clone(),
                creds: root_creds(),
            }
        }
        Action::Rmdir { dir } => {
            let subdirs: Vec<_> = all.iter().filter(|e| e.3 == FileKind::Dir).collect();
            if subdirs.is_empty() {
                return;
            }
            let d = subdirs[*dir as usize % subdirs.len()];
            Op::Rmdir {
                parent: d.0,
                name: d.1.clone(),
                creds: root_creds(),
            }
        }
        Action::Rename {
            entry,
            dir,
            name: nm,
        } => {
            if all.is_empty() {
                return;
            }
            let e = &all[*entry as usize % all.len()];
            Op::Rename {
                parent: e.0,
                name: e.1.clone(),
                new_parent: pick_dir(*dir),
                new_name: name(*nm),
                flags: RenameFlags::default(),
                creds: root_creds(),
            }
        }
        Action::Chmod { entry, perm } => {
            if all.is_empty() {
                return;
            }
            Op::SetAttr {
                ino: all[*entry as usize % all.len()].2,
                set: SetAttr {
                    perm: Some(*perm),
                    ..SetAttr::default()
                },
                creds: root_creds(),
            }
        }
        Action::Xattr { entry, value } => {
            if all.is_empty() {
                return;
            }
            Op::SetXattr {
                ino: all[*entry as usize % all.len()].2,
                name: b"user.tag".to_vec(),
                value: vec![b'0' + value],
                mode: XattrMode::Any,
                creds: root_creds(),
            }
        }
        Action::WriteShared { file, content } => {
            if files.is_empty() {
                return;
            }
            let f = files[*file as usize % files.len()];
            // Past the unique writes' offsets; it may overwrite an earlier shared write.
            let seq = writes.len() as u64;
            let (op, _) = write_op(f.2, (1 << 30) + seq % 4 * 4096, &[b's', *content]);
            let _ = r.run(op);
            return;
        }
        Action::Skew { by } => {
            r.phys += [1_000, 100_000, 1_000_000][*by as usize % 3];
            return;
        }
        Action::Deliver { to, limit, rewind } => {
            let j = *to as usize % n;
            if j != i {
                let (a, b) = two(rs, i, j);
                deliver(a, b, *limit as usize, *rewind as u64);
            }
            return;
        }
    };
    // Local failures (EEXIST, ENOTEMPTY, a move into itself...) are part of the game.
    let _ = r.run(op);
}

fn converge(n: u16, actions: &[(u8, Action)]) {
    let mut rs = regions(n);
    // No tombstone is purged while the property below is checked: it follows every
    // written version, including ones later deleted on purpose.
    for r in rs.iter_mut() {
        r.marks = false;
    }
    let mut writes = Vec::new();
    for (who, action) in actions {
        run_action(&mut rs, *who, action, &mut writes);
    }
    settle(&mut rs);
    let first = namespace_dump(&rs[0]);
    for r in &rs {
        check_tree(r);
        assert_eq!(
            namespace_dump(r),
            first,
            "region {} differs from region 1",
            r.id.0
        );
        for b in &writes {
            let refs = r.read(|x| x.block_refs(b)).unwrap();
            assert!(refs > 0, "a written version ({b}) was lost");
        }
    }
    // Then the regions settle: each purges the same tombstones, and stays consistent.
    for r in rs.iter_mut() {
        r.marks = true;
    }
    settle(&mut rs);
    let first = namespace_dump(&rs[0]);
    for r in &rs {
        check_tree(r);
        assert_eq!(
            namespace_dump(r),
            first,
            "region {} differs after purging",
            r.id.0
        );
        assert_consistent(r);
    }
}

/// The fsck check finds nothing wrong.
fn assert_consistent(r: &Region) {
    let tx = r.db.begin_read().unwrap();
    let page = super::check::check(&tx, 0, 10_000).unwrap();
    assert!(page.problems.is_empty(), "{:?}", page.problems);
    // The tombstones' index by age names exactly the tombstones, each at its stamp.
    let tombs = dump_table(&tx, TOMBS, |k| k.to_be_bytes().to_vec(), |v| v.to_vec());
    let expected: Rows = tombs
        .iter()
        .map(|(k, v)| {
            let at = serde_json::from_slice::<Tomb>(v).unwrap().at;
            let ino = u64::from_be_bytes(k.as_slice().try_into().unwrap());
            (tomb_time_key(at, ino), Vec::new())
        })
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .collect();
    assert_eq!(
        dump_table(&tx, TOMB_TIMES, |k| k.to_vec(), |_| Vec::new()),
        expected,
        "the tombstone index is out of step"
    );
    // Every block is counted exactly once per extent (of a file or a tombstone) using it:
    // a count too low would let GC take a live block, one too high would leak it.
    let mut used: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for (k, v) in dump_table(&tx, EXTENTS, |k| k.to_vec(), |v| v.to_vec()) {
        let block = decode_extent(&k, &v).unwrap().block;
        let n = used.entry(block.as_bytes().to_vec()).or_insert(vec![0; 8]);
        let count = u64::from_be_bytes(n.as_slice().try_into().unwrap()) + 1;
        *n = count.to_be_bytes().to_vec();
    }
    assert_eq!(
        dump_table(
            &tx,
            BLOCK_REFS,
            |k| k.to_vec(),
            |v| v.to_be_bytes().to_vec()
        ),
        used.into_iter().collect::<Rows>(),
        "block reference counts differ from the extents"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn two_regions_converge(actions in proptest::collection::vec(arb_action(), 1..60)) {
        converge(2, &actions);
    }

    #[test]
    fn three_regions_converge(actions in proptest::collection::vec(arb_action(), 1..60)) {
        converge(3, &actions);
    }

    #[test]
    fn three_regions_purging_as_they_go_converge(
        actions in proptest::collection::vec(arb_action_weighted(4), 1..80),
    ) {
        converge_purging(3, &actions);
    }
}

/// Like [`converge`], but settled marks travel from the start, so tombstones are purged
/// while records are still being reordered around them.
fn converge_purging(n: u16, actions: &[(u8, Action)]) {
    let mut rs = regions(n);
    let mut writes = Vec::new();
    for (who, action) in actions {
        run_action(&mut rs, *who, action, &mut writes);
    }
    settle(&mut rs);
    let first = namespace_dump(&rs[0]);
    for r in &rs {
        check_tree(r);
        assert_eq!(namespace_dump(r), first, "region {} differs", r.id.0);
        assert_consistent(r);
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
