//! Regions for tests of the merge: each its own in-memory state database and clock,
//! exchanging change-log records as the region code does, and the checks every test of
//! convergence makes (identical namespaces, a consistent tree, exact reference counts).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use meridian_proto::{BlockId, Hlc, HlcClock, InodeId, RegionId};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

pub(super) use super::tables::*;
pub(super) use super::*;

/// One region: its own state database and clock.
pub(super) struct Region {
    pub(super) id: RegionId,
    /// Shared, so that a test can read it while it runs operations.
    pub(super) db: Arc<Database>,
    pub(super) clock: HlcClock,
    pub(super) phys: u64,
    /// Whether pulls from here carry the settled mark (which lets tombstones be purged).
    pub(super) marks: bool,
}

pub(super) fn root_creds() -> Creds {
    Creds::root()
}

impl Region {
    pub(super) fn new(id: u16, peers: &[RegionId]) -> Self {
        let db = Arc::new(super::memory_db());
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

    pub(super) fn write<T>(&self, f: impl FnOnce(&mut WriteTables<'_>) -> T) -> T {
        let tx = self.db.begin_write().unwrap();
        let out = {
            let mut t = WriteTables::open(&tx);
            f(&mut t)
        };
        tx.commit().unwrap();
        out
    }

    pub(super) fn read<T>(&self, f: impl FnOnce(&NsReader<'_>) -> T) -> T {
        let tx = self.db.begin_read().unwrap();
        f(&NsReader::new(&tx))
    }

    /// Runs a local operation, stamped by this region's clock.
    pub(super) fn run(&mut self, op: Op) -> Result<Reply, NsError> {
        self.phys += 1;
        let hlc = self.clock.now(self.phys);
        let cmd = Command {
            op,
            hlc,
            now: Timespec::from_nanos(self.phys * 1_000_000),
            request: None,
            ino: None,
            lease: false,
        };
        let out = self.write(|t| apply(t, &cmd));
        let head = self.write(|t| merge::head(t.region_state.open().unwrap()).unwrap());
        if let Some(h) = head {
            self.clock.observe(h, self.phys);
        }
        out
    }

    /// This region's change log from `from` on.
    pub(super) fn changes(&self, from: u64, limit: usize) -> Vec<(u64, Record)> {
        self.read(|r| r.changes(from, limit))
            .unwrap()
            .into_iter()
            .map(|(seq, bytes)| (seq, serde_json::from_slice(&bytes).unwrap()))
            .collect()
    }

    pub(super) fn head(&self) -> Option<Hlc> {
        self.write(|t| merge::head(t.region_state.open().unwrap()).unwrap())
    }

    pub(super) fn stable(&self) -> Option<Hlc> {
        self.write(|t| merge::stable(t.region_state.open().unwrap()).unwrap())
    }

    pub(super) fn watermark(&self, origin: RegionId) -> u64 {
        self.write(|t| merge::watermark(t.region_state.open().unwrap(), origin).unwrap())
    }

    pub(super) fn lookup(&self, parent: InodeId, name: &str) -> Result<Attr, NsError> {
        self.read(|r| r.lookup(parent, name.as_bytes(), &root_creds()))
    }

    pub(super) fn names(&self, dir: InodeId) -> Vec<String> {
        self.read(|r| r.readdir(dir, None, 10_000, &root_creds()))
            .unwrap()
            .entries
            .into_iter()
            .map(|e| String::from_utf8(e.name).unwrap())
            .collect()
    }

    pub(super) fn conflicts(&self) -> Vec<Conflict> {
        self.read(|r| r.conflicts(None, 10_000)).unwrap()
    }

    pub(super) fn volume_root(&self) -> InodeId {
        self.read(|r| r.volume("main")).unwrap().root
    }
}

/// Pulls up to `limit` records of `from`'s change log into `to`, starting `rewind` records
/// before what `to` has (duplicates), as a region's puller does.
pub(super) fn deliver(from: &Region, to: &mut Region, limit: usize, rewind: u64) -> usize {
    let wm = to.watermark(from.id);
    let start = (wm + 1).saturating_sub(rewind).max(1);
    let records = from.changes(start, limit);
    let head_seq = from.changes(start, usize::MAX).last().map(|(s, _)| *s);
    let caught_up = records.last().map(|(s, _)| *s) == head_seq;
    let frontier = if caught_up {
        from.write(|t| merge::horizon(t.region_state.open().unwrap()).unwrap())
    } else {
        records.last().map(|(_, r)| r.hlc)
    };
    let scanned = records.last().map_or(0, |(s, _)| s + 1);
    // Only what the receiver may hold, as the serving region sends.
    let records: Vec<(u64, Record)> = records
        .into_iter()
        .filter(|(_, r)| r.allowed_in(to.id))
        .collect();
    let fresh = records.iter().filter(|(s, _)| *s > wm).count();
    let batch = RemoteBatch {
        origin: from.id,
        scanned,
        records: records.clone(),
        frontier,
        settled: if caught_up && from.marks {
            from.stable()
        } else {
            None
        },
        settled_by: if caught_up && from.marks {
            from.write(|t| merge::stable_by(t.region_state.open().unwrap(), from.id).unwrap())
        } else {
            Vec::new()
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
pub(super) fn round(regions: &mut [Region]) -> usize {
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

/// Every region's leader promises later stamps, as an idle region's does.
pub(super) fn promise_all(rs: &mut [Region]) {
    for r in rs.iter_mut() {
        r.phys += 1000;
        let phys = r.phys;
        let stamp = r.clock.now(phys);
        r.write(|t| merge::promise(t, stamp).unwrap());
    }
}

/// Delivers everything between every pair until nothing is left.
pub(super) fn settle(regions: &mut [Region]) {
    while round(regions) > 0 {}
    // Marks (frontiers, settled stamps) travel with every pull, records or not: a few
    // empty rounds bring every region to the same watermarks.
    for _ in 0..3 {
        round(regions);
    }
}

pub(super) fn two(regions: &mut [Region], i: usize, j: usize) -> (&Region, &mut Region) {
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
pub(super) fn regions(n: u16) -> Vec<Region> {
    let ids: Vec<RegionId> = (1..=n).map(RegionId).collect();
    regions_with_volume_in(n, &ids)
}

/// `n` regions, each a peer of the others, and volume "main" living in `volume_regions`,
/// created in the first and delivered.
pub(super) fn regions_with_volume_in(n: u16, volume_regions: &[RegionId]) -> Vec<Region> {
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
                regions: volume_regions.to_vec(),
                ..VolumePolicy::default()
            },
        })
        .unwrap();
    settle(&mut out);
    out
}

/// Creates volume `name` living in `regions` in region `r`; returns its root.
pub(super) fn make_volume(r: &mut Region, name: &str, regions: Vec<RegionId>) -> InodeId {
    r.run(Op::CreateVolume {
        name: name.into(),
        policy: VolumePolicy {
            regions,
            ..VolumePolicy::default()
        },
    })
    .unwrap();
    r.read(|x| x.volume(name)).unwrap().root
}

pub(super) fn mknod(parent: InodeId, name: &str, kind: FileKind) -> Op {
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

pub(super) fn unlink(parent: InodeId, name: &str) -> Op {
    Op::Unlink {
        parent,
        name: name.as_bytes().to_vec(),
        creds: root_creds(),
    }
}

pub(super) fn write_op(ino: InodeId, offset: u64, seed: &[u8]) -> (Op, BlockId) {
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
        staged: Vec::new(),
    };
    (op, block)
}

/// A new file `name` in the volume's root of `r`.
pub(super) fn file(r: &mut Region, name: &str) -> InodeId {
    let root = r.volume_root();
    attr_of(r.run(mknod(root, name, FileKind::File))).ino
}

pub(super) fn attr_of(reply: Result<Reply, NsError>) -> Attr {
    match reply.unwrap() {
        Reply::Attr(a) => a,
        other => panic!("expected attributes, got {other:?}"),
    }
}

pub(super) type Rows = Vec<(Vec<u8>, Vec<u8>)>;

pub(super) fn dump_table<K: redb::Key + 'static, V: redb::Value + 'static>(
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
pub(super) fn namespace_dump(r: &Region) -> BTreeMap<&'static str, Rows> {
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
pub(super) fn check_tree(r: &Region) {
    let roots: Vec<InodeId> =
        r.read(|x| x.volumes().unwrap().into_iter().map(|v| v.root).collect());
    let tx = r.db.begin_read().unwrap();
    let inodes = tx.open_table(INODES).unwrap();
    let dirents = tx.open_table(DIRENTS).unwrap();
    let mut links: BTreeMap<u64, u32> = BTreeMap::new();
    let mut subdirs: BTreeMap<u64, u32> = BTreeMap::new();
    let mut seen_dirs = BTreeSet::new();
    let mut stack = roots.clone();
    while let Some(dir) = stack.pop() {
        assert!(
            seen_dirs.insert(dir),
            "directory {dir} reached twice (a cycle?)"
        );
        let from = dirent_key(dir, b"");
        let to = dirent_end(dir);
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
        if roots.contains(&InodeId(k.value())) {
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

/// The fsck check finds nothing wrong.
pub(super) fn assert_consistent(r: &Region) {
    let tx = r.db.begin_read().unwrap();
    let page = super::check::check(&tx, 0, 10_000).unwrap();
    assert!(page.problems.is_empty(), "{:?}", page.problems);
    // One page holding every file and name: each file's links and names balance in it.
    if page.next.is_none() {
        assert_eq!(page.links, Some(vec![]), "link counts unlike the names");
    }
    // The tombstones' index by age names exactly the tombstones, each at its stamp.
    let tombs = dump_table(&tx, TOMBS, |k| k.to_be_bytes().to_vec(), |v| v.to_vec());
    let expected: Rows = tombs
        .iter()
        .map(|(k, v)| {
            let tomb = serde_json::from_slice::<Tomb>(v).unwrap();
            let ino = u64::from_be_bytes(k.as_slice().try_into().unwrap());
            (tomb_time_key(&tomb, ino), Vec::new())
        })
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .collect();
    assert_eq!(
        dump_table(&tx, TOMB_TIMES, |k| k.to_vec(), |_| Vec::new()),
        expected,
        "the tombstone index is out of step"
    );
    // Every directory with a register of times has the newest of them.
    let inodes = tx.open_table(INODES).unwrap();
    let registers = tx.open_table(super::dir_times::DIR_TIMES).unwrap();
    for (dir, times) in super::dir_times::newest_all(&registers).unwrap() {
        if let Some(node) = read_inode(&inodes, InodeId(dir)).unwrap() {
            assert_eq!(
                (node.attr.mtime, node.attr.ctime),
                times,
                "directory {dir}'s times are not its register's newest"
            );
        }
    }
    drop((inodes, registers));
    // The footprints and their index are what a rebuild from the merged log makes.
    drop(tx);
    let footprints = |db: &Database| {
        let tx = db.begin_read().unwrap();
        (
            dump_table(&tx, FOOTPRINTS, |k| k.to_vec(), |v| v.to_vec()),
            dump_table(&tx, FOOTPRINT_INDEX, |k| k.to_vec(), |_| Vec::new()),
        )
    };
    let kept = footprints(&r.db);
    let tx = r.db.begin_write().unwrap();
    super::footprint::index_footprints(&tx, true).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        footprints(&r.db),
        kept,
        "the footprint index is out of step"
    );
    let tx = r.db.begin_read().unwrap();
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

/// How many extents, of live files and tombstones, use `block`: what its count must be.
pub(super) fn extents_using(r: &Region, block: &BlockId) -> u64 {
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

/// How many references the region counts for `block`.
pub(super) fn refs(r: &Region, block: &BlockId) -> u64 {
    r.read(|x| x.block_refs(block)).unwrap()
}

/// A file's size and every extent it has.
pub(super) fn file_extents(r: &Region, ino: InodeId) -> (u64, Vec<Extent>) {
    let size = r.read(|x| x.getattr(ino)).unwrap().size;
    (size, r.read(|x| x.extents(ino, 0, u64::MAX / 2)).unwrap())
}

/// Commits `n` extents of `len` bytes to `ino`, 4 KiB apart (none merge), naming `blocks`
/// in turn, in pieces of 1,000.
pub(super) fn commit_spaced(r: &mut Region, ino: InodeId, n: usize, len: u32, blocks: &[BlockId]) {
    let extents: Vec<Extent> = (0..n)
        .map(|i| Extent {
            offset: i as u64 * 4096,
            len: u64::from(len),
            block: blocks[i % blocks.len()],
            block_offset: 0,
            block_len: len,
        })
        .collect();
    for piece in extents.chunks(1000) {
        r.run(Op::CommitExtents {
            ino,
            extents: piece.to_vec(),
            size: 0,
            base_version: None,
            creds: root_creds(),
            staged: Vec::new(),
        })
        .unwrap();
    }
}

/// Every trim mark (`trim.rs`) in `r`.
pub(super) fn trim_marks(r: &Region) -> Vec<super::trim::Trim> {
    let tx = r.db.begin_read().unwrap();
    let state = super::merge::state_table(&tx).unwrap().unwrap();
    super::trim::pending(&state).unwrap()
}

/// Every record regions 1 and 2 have for each other, both ways (the others cut off).
pub(super) fn exchange(rs: &mut [Region]) {
    for _ in 0..3 {
        let (a, b) = two(rs, 0, 1);
        deliver(a, b, usize::MAX, 0);
        let (a, b) = two(rs, 1, 0);
        deliver(a, b, usize::MAX, 0);
    }
}
