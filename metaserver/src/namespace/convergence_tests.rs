//! The convergence property, with an independent reference and a nothing-lost oracle.
//!
//! Two to four regions change two shared volumes concurrently (creates of every kind,
//! writes at overlapping offsets, appends, truncates, links, unlinks, rmdir, renames with
//! and without NOREPLACE and EXCHANGE, chmod and chown, xattrs in every mode, callers that
//! are not root, quotas, a volume deleted and created again) and exchange records through
//! partial, duplicated and reordered pulls, across partitions that come and go. Then:
//! - every region's namespace equals what a fresh region computes by applying every record
//!   of every region once, in HLC order (no rewinds: the merge's reordering is checked
//!   against plain in-order application);
//! - nothing is lost: the test keeps the bytes of every version a client made (each
//!   content change, as its origin had the file right after it) and every version that an
//!   operation saw and replaced or removed on purpose; every other version is present,
//!   byte for byte, as some file of the final tree;
//! - nothing is mixed: every file in the final tree holds a version some client made.
//!
//! Block contents are modelled here (each write's block holds bytes unique to it), so a
//! file's bytes are read from its extents as a client would.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use meridian_proto::{BlockId, Hlc, InodeId, RegionId};
use proptest::prelude::*;
use redb::ReadableDatabase;

use super::test_regions::*;

/// The region that computes the reference: it receives every record once, in HLC order.
const REFERENCE: u16 = 9;
/// Offsets of overlapping writes.
const OFFSETS: [u64; 4] = [0, 40, 100, 170];
/// Sizes truncates go to.
const SIZES: [u64; 4] = [0, 30, 120, 250];
const USER: u32 = 1000;

#[derive(Clone, Debug)]
enum Action {
    Create {
        dir: u8,
        name: u8,
        kind: u8,
        user: bool,
    },
    /// A write of fresh bytes, or (`shared`) of bytes other writes may have too (dedup:
    /// one block, many uses).
    Write {
        file: u8,
        at: u8,
        user: bool,
        shared: Option<u8>,
    },
    Append {
        file: u8,
    },
    Truncate {
        file: u8,
        to: u8,
    },
    /// fallocate PUNCH_HOLE.
    Punch {
        file: u8,
        at: u8,
    },
    /// copy_file_range, by sharing extents.
    Copy {
        src: u8,
        dst: u8,
        at: u8,
    },
    Link {
        file: u8,
        dir: u8,
        name: u8,
    },
    Unlink {
        entry: u8,
        user: bool,
    },
    Rmdir {
        dir: u8,
    },
    Rename {
        entry: u8,
        dir: u8,
        name: u8,
        flags: u8,
    },
    Chmod {
        entry: u8,
        perm: u16,
        user: bool,
    },
    Chown {
        entry: u8,
        user: bool,
    },
    Xattr {
        entry: u8,
        value: u8,
        mode: u8,
    },
    RemoveXattr {
        entry: u8,
    },
    /// Create a file in the second volume, or write to one there.
    Aux {
        file: u8,
        write: bool,
    },
    /// Empty the second volume and delete it.
    DeleteAux,
    /// Create the second volume if this region has none.
    CreateAux,
    Deliver {
        to: u8,
        limit: u8,
        rewind: u8,
    },
    /// Cut (or heal) the link between this region and another.
    Cut {
        other: u8,
    },
    Skew {
        by: u8,
    },
}

fn arb_action() -> impl Strategy<Value = (u8, Action)> {
    let name = 0..4u8;
    let action = prop_oneof![
        4 => (any::<u8>(), name.clone(), 0..4u8, any::<bool>())
            .prop_map(|(dir, name, kind, user)| Action::Create { dir, name, kind, user }),
        5 => (any::<u8>(), 0..4u8, any::<bool>(), proptest::option::weighted(0.2, 0..3u8))
            .prop_map(|(file, at, user, shared)| Action::Write { file, at, user, shared }),
        2 => any::<u8>().prop_map(|file| Action::Append { file }),
        2 => (any::<u8>(), 0..4u8).prop_map(|(file, to)| Action::Truncate { file, to }),
        1 => (any::<u8>(), 0..4u8).prop_map(|(file, at)| Action::Punch { file, at }),
        1 => (any::<u8>(), any::<u8>(), 0..4u8).prop_map(|(src, dst, at)| Action::Copy { src, dst, at }),
        1 => (any::<u8>(), any::<u8>(), name.clone()).prop_map(|(file, dir, name)| Action::Link { file, dir, name }),
        2 => (any::<u8>(), any::<bool>()).prop_map(|(entry, user)| Action::Unlink { entry, user }),
        1 => any::<u8>().prop_map(|dir| Action::Rmdir { dir }),
        3 => (any::<u8>(), any::<u8>(), name, 0..3u8)
            .prop_map(|(entry, dir, name, flags)| Action::Rename { entry, dir, name, flags }),
        1 => (any::<u8>(), prop_oneof![Just(0o600u16), Just(0o644), Just(0o666), Just(0o755)], any::<bool>())
            .prop_map(|(entry, perm, user)| Action::Chmod { entry, perm, user }),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(entry, user)| Action::Chown { entry, user }),
        1 => (any::<u8>(), 0..3u8, 0..3u8).prop_map(|(entry, value, mode)| Action::Xattr { entry, value, mode }),
        1 => any::<u8>().prop_map(|entry| Action::RemoveXattr { entry }),
        2 => (any::<u8>(), any::<bool>()).prop_map(|(file, write)| Action::Aux { file, write }),
        1 => Just(Action::DeleteAux),
        1 => Just(Action::CreateAux),
        5 => (any::<u8>(), 1..6u8, 0..3u8).prop_map(|(to, limit, rewind)| Action::Deliver { to, limit, rewind }),
        1 => any::<u8>().prop_map(|other| Action::Cut { other }),
        1 => (0..3u8).prop_map(|by| Action::Skew { by }),
    ];
    (any::<u8>(), action)
}

/// What the test knows beyond the regions themselves.
#[derive(Default)]
struct Model {
    /// Every block written, with its bytes.
    blocks: HashMap<BlockId, Vec<u8>>,
    /// Every version a client made: the stamp of the change -> the file's bytes after it
    /// where it ran.
    versions: BTreeMap<Hlc, Vec<u8>>,
    /// Versions an operation saw and replaced or removed on purpose.
    replaced: BTreeSet<Hlc>,
    /// Pairs of regions whose link is cut.
    cut: BTreeSet<(usize, usize)>,
    writes: u64,
    /// The regions "aux" lives in when it is made again (empty: every region and the
    /// reference).
    aux_regions: Vec<RegionId>,
}

fn creds(user: bool) -> Creds {
    if user {
        Creds {
            uid: USER,
            gid: USER,
            groups: Vec::new(),
        }
    } else {
        Creds::root()
    }
}

fn policy(ids: &[RegionId]) -> VolumePolicy {
    VolumePolicy {
        regions: ids.to_vec(),
        quota_inodes: Some(40),
        quota_bytes: Some(4000),
        ..VolumePolicy::default()
    }
}

/// `n` regions sharing "main" and "aux", plus the reference region (which hears nothing
/// yet, and is nobody's peer).
fn setup(n: u16) -> (Vec<Region>, Region) {
    setup_with_aux_in(n, &[])
}

/// As [`setup`], with "aux" living in `aux_regions` only (empty: everywhere).
fn setup_with_aux_in(n: u16, aux_regions: &[RegionId]) -> (Vec<Region>, Region) {
    let ids: Vec<RegionId> = (1..=n).map(RegionId).collect();
    let mut members = ids.clone();
    members.push(RegionId(REFERENCE));
    let mut rs: Vec<Region> = ids
        .iter()
        .map(|id| {
            let peers: Vec<RegionId> = ids.iter().copied().filter(|p| p != id).collect();
            Region::new(id.0, &peers)
        })
        .collect();
    for name in ["main", "aux"] {
        let regions = match name {
            "aux" if !aux_regions.is_empty() => aux_regions,
            _ => &members,
        };
        rs[0]
            .run(Op::CreateVolume {
                name: name.into(),
                policy: policy(regions),
            })
            .unwrap();
    }
    // Anybody may create in the volumes' roots (the test's other user included).
    for name in ["main", "aux"] {
        let root = rs[0].read(|x| x.volume(name)).unwrap().root;
        rs[0]
            .run(Op::SetAttr {
                ino: root,
                set: SetAttr {
                    perm: Some(0o777),
                    ..SetAttr::default()
                },
                creds: root_creds(),
            })
            .unwrap();
    }
    settle(&mut rs);
    for r in rs.iter_mut() {
        r.marks = false;
    }
    (rs, Region::new(REFERENCE, &ids))
}

/// An inode as stored (its content stamp included).
fn inode(r: &Region, ino: InodeId) -> Option<Inode> {
    let tx = r.db.begin_read().unwrap();
    let t = tx.open_table(INODES).unwrap();
    read_inode(&t, ino).unwrap()
}

/// A file's bytes, read from its extents and the modelled blocks (holes read as zeros).
fn file_bytes(r: &Region, model: &Model, ino: InodeId) -> Vec<u8> {
    let attr = r.read(|x| x.getattr(ino)).unwrap();
    let mut out = vec![0u8; attr.size as usize];
    for e in r.read(|x| x.extents(ino, 0, attr.size.max(1))).unwrap() {
        let block = &model.blocks[&e.block];
        let from = e.block_offset as usize;
        let len = (e.len as usize).min(out.len().saturating_sub(e.offset as usize));
        out[e.offset as usize..e.offset as usize + len].copy_from_slice(&block[from..from + len]);
    }
    out
}

/// Every (directory, name, inode, kind) of volume `vol` reachable from its root.
fn entries_of(r: &Region, vol: &str) -> Vec<(InodeId, Vec<u8>, InodeId, FileKind)> {
    let Ok(v) = r.read(|x| x.volume(vol)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut stack = vec![v.root];
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

fn pick<T: Clone>(items: &[T], k: u8) -> Option<T> {
    (!items.is_empty()).then(|| items[k as usize % items.len()].clone())
}

fn name_of(k: u8) -> Vec<u8> {
    ["a", "b", "c", "d"][k as usize % 4].as_bytes().to_vec()
}

/// A write of `len` fresh bytes at `offset`.
fn fresh_write(model: &mut Model, ino: InodeId, offset: u64, len: u32, user: bool) -> Op {
    model.writes += 1;
    let tag = format!("<{:05}>", model.writes);
    let bytes: Vec<u8> = tag.bytes().cycle().take(len as usize).collect();
    write_bytes(model, ino, offset, bytes, user)
}

/// A write of `bytes` at `offset`, as one block.
fn write_bytes(model: &mut Model, ino: InodeId, offset: u64, bytes: Vec<u8>, user: bool) -> Op {
    let len = bytes.len() as u32;
    let block = BlockId::of(&bytes);
    model.blocks.insert(block, bytes);
    Op::CommitExtents {
        ino,
        extents: vec![Extent {
            offset,
            len: u64::from(len),
            block,
            block_offset: 0,
            block_len: len,
        }],
        size: 0,
        base_version: None,
        creds: creds(user),
        staged: Vec::new(),
    }
}

/// Runs a content change of `ino` in `r` and keeps the version it made (and the one it
/// replaced).
fn change_content(r: &mut Region, model: &mut Model, ino: InodeId, op: Op) {
    let before = inode(r, ino).map(|n| n.content);
    let out = r.run(op);
    if trace() {
        eprintln!("    -> {out:?}");
    }
    if out.is_ok() {
        let after = inode(r, ino).unwrap().content;
        if let Some(b) = before
            && b != after
        {
            model.replaced.insert(b);
        }
        let bytes = file_bytes(r, model, ino);
        if trace() {
            eprintln!(
                "    version {after} of {ino} replaces {before:?}: {:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
        model.versions.insert(after, bytes);
    }
}

/// Notes that the file `ino` (about to lose an entry) is removed on purpose if that entry
/// is its last link.
fn removing(r: &Region, ino: InodeId) -> Option<Hlc> {
    let node = inode(r, ino)?;
    (node.attr.kind == FileKind::File && node.attr.nlink <= 1).then_some(node.content)
}

fn deliverable(model: &Model, a: usize, b: usize) -> bool {
    !model.cut.contains(&(a.min(b), a.max(b)))
}

fn trace() -> bool {
    std::env::var("CONVERGENCE_TRACE").is_ok()
}

fn run_action(rs: &mut [Region], model: &mut Model, who: u8, action: &Action) {
    if trace() {
        eprintln!("region {}: {action:?}", who as usize % rs.len() + 1);
    }
    let n = rs.len();
    let i = who as usize % n;
    let all = entries_of(&rs[i], "main");
    let Ok(main) = rs[i].read(|x| x.volume("main")) else {
        return;
    };
    let mut dirs = vec![main.root];
    dirs.extend(all.iter().filter(|e| e.3 == FileKind::Dir).map(|e| e.2));
    let files: Vec<_> = all
        .iter()
        .filter(|e| e.3 == FileKind::File)
        .cloned()
        .collect();
    let r = &mut rs[i];
    let op = match action {
        Action::Create {
            dir,
            name,
            kind,
            user,
        } => {
            let parent = dirs[*dir as usize % dirs.len()];
            match kind % 4 {
                3 => Op::Symlink {
                    parent,
                    name: name_of(*name),
                    target: b"../elsewhere".to_vec(),
                    creds: creds(*user),
                },
                k => Op::Mknod {
                    parent,
                    name: name_of(*name),
                    kind: if k == 2 {
                        FileKind::Dir
                    } else {
                        FileKind::File
                    },
                    perm: 0o755,
                    rdev: 0,
                    exclusive: true,
                    creds: creds(*user),
                },
            }
        }
        Action::Write {
            file,
            at,
            user,
            shared,
        } => {
            let Some(f) = pick(&files, *file) else { return };
            let offset = OFFSETS[*at as usize % 4];
            let op = match shared {
                Some(k) => write_bytes(
                    model,
                    f.2,
                    offset,
                    format!("[shared {k}]").repeat(10).into_bytes(),
                    *user,
                ),
                None => fresh_write(model, f.2, offset, 100, *user),
            };
            return change_content(r, model, f.2, op);
        }
        Action::Append { file } => {
            let Some(f) = pick(&files, *file) else { return };
            let size = r.read(|x| x.getattr(f.2)).unwrap().size;
            let op = fresh_write(model, f.2, size, 20, false);
            return change_content(r, model, f.2, op);
        }
        Action::Truncate { file, to } => {
            let Some(f) = pick(&files, *file) else { return };
            let op = Op::SetAttr {
                ino: f.2,
                set: SetAttr {
                    size: Some(SIZES[*to as usize % 4]),
                    via_handle: true,
                    ..SetAttr::default()
                },
                creds: root_creds(),
            };
            return change_content(r, model, f.2, op);
        }
        Action::Punch { file, at } => {
            let Some(f) = pick(&files, *file) else { return };
            let op = Op::PunchHole {
                ino: f.2,
                offset: OFFSETS[*at as usize % 4],
                len: 60,
                creds: root_creds(),
            };
            return change_content(r, model, f.2, op);
        }
        Action::Copy { src, dst, at } => {
            let (Some(s), Some(d)) = (pick(&files, *src), pick(&files, *dst)) else {
                return;
            };
            let op = Op::CopyRange {
                src: s.2,
                src_offset: 0,
                dst: d.2,
                dst_offset: OFFSETS[*at as usize % 4],
                len: 120,
                creds: root_creds(),
            };
            return change_content(r, model, d.2, op);
        }
        Action::Link { file, dir, name } => {
            let Some(f) = pick(&files, *file) else { return };
            Op::Link {
                ino: f.2,
                new_parent: dirs[*dir as usize % dirs.len()],
                new_name: name_of(*name),
                creds: root_creds(),
            }
        }
        Action::Unlink { entry, user } => {
            let others: Vec<_> = all
                .iter()
                .filter(|e| e.3 != FileKind::Dir)
                .cloned()
                .collect();
            let Some(e) = pick(&others, *entry) else {
                return;
            };
            let gone = removing(r, e.2);
            let op = Op::Unlink {
                parent: e.0,
                name: e.1.clone(),
                creds: creds(*user),
            };
            if trace() {
                eprintln!(
                    "    unlink {:?} in {} ({}), removing {gone:?}",
                    String::from_utf8_lossy(&e.1),
                    e.0,
                    e.2
                );
            }
            if r.run(op).is_ok()
                && let Some(v) = gone
            {
                model.replaced.insert(v);
            }
            return;
        }
        Action::Rmdir { dir } => {
            let subdirs: Vec<_> = all
                .iter()
                .filter(|e| e.3 == FileKind::Dir)
                .cloned()
                .collect();
            let Some(d) = pick(&subdirs, *dir) else {
                return;
            };
            Op::Rmdir {
                parent: d.0,
                name: d.1.clone(),
                creds: root_creds(),
            }
        }
        Action::Rename {
            entry,
            dir,
            name,
            flags,
        } => {
            let Some(e) = pick(&all, *entry) else { return };
            let new_parent = dirs[*dir as usize % dirs.len()];
            let new_name = name_of(*name);
            let flags = RenameFlags {
                noreplace: flags % 3 == 1,
                exchange: flags % 3 == 2,
            };
            let over = r
                .read(|x| x.lookup(new_parent, &new_name, &root_creds()))
                .ok()
                .filter(|a| a.ino != e.2 && !flags.exchange)
                .and_then(|a| removing(r, a.ino));
            let op = Op::Rename {
                parent: e.0,
                name: e.1.clone(),
                new_parent,
                new_name,
                flags,
                creds: root_creds(),
            };
            if trace() {
                eprintln!("    {op:?} over {over:?}");
            }
            if r.run(op).is_ok()
                && let Some(v) = over
            {
                model.replaced.insert(v);
            }
            return;
        }
        Action::Chmod { entry, perm, user } => {
            let Some(e) = pick(&all, *entry) else { return };
            Op::SetAttr {
                ino: e.2,
                set: SetAttr {
                    perm: Some(*perm),
                    ..SetAttr::default()
                },
                creds: creds(*user),
            }
        }
        Action::Chown { entry, user } => {
            let Some(e) = pick(&all, *entry) else { return };
            Op::SetAttr {
                ino: e.2,
                set: SetAttr {
                    uid: Some(if *user { USER } else { 0 }),
                    gid: Some(if *user { USER } else { 0 }),
                    ..SetAttr::default()
                },
                creds: root_creds(),
            }
        }
        Action::Xattr { entry, value, mode } => {
            let Some(e) = pick(&all, *entry) else { return };
            Op::SetXattr {
                ino: e.2,
                name: b"user.tag".to_vec(),
                value: vec![b'0' + value],
                mode: [XattrMode::Any, XattrMode::Create, XattrMode::Replace][*mode as usize % 3],
                creds: root_creds(),
            }
        }
        Action::RemoveXattr { entry } => {
            let Some(e) = pick(&all, *entry) else { return };
            Op::RemoveXattr {
                ino: e.2,
                name: b"user.tag".to_vec(),
                creds: root_creds(),
            }
        }
        Action::Aux { file, write } => {
            let Ok(aux) = r.read(|x| x.volume("aux")) else {
                return;
            };
            let aux_files: Vec<_> = entries_of(r, "aux")
                .into_iter()
                .filter(|e| e.3 == FileKind::File)
                .collect();
            match pick(&aux_files, *file) {
                Some(f) if *write => {
                    let op = fresh_write(model, f.2, OFFSETS[*file as usize % 4], 60, false);
                    return change_content(r, model, f.2, op);
                }
                _ => Op::Mknod {
                    parent: aux.root,
                    name: name_of(*file),
                    kind: FileKind::File,
                    perm: 0o644,
                    rdev: 0,
                    exclusive: true,
                    creds: root_creds(),
                },
            }
        }
        Action::DeleteAux => {
            for e in entries_of(r, "aux") {
                let gone = removing(r, e.2);
                let op = Op::Unlink {
                    parent: e.0,
                    name: e.1,
                    creds: root_creds(),
                };
                if r.run(op).is_ok()
                    && let Some(v) = gone
                {
                    model.replaced.insert(v);
                }
            }
            Op::DeleteVolume { name: "aux".into() }
        }
        Action::CreateAux => {
            let mut ids: Vec<RegionId> = (1..=n as u16)
                .map(RegionId)
                .chain([RegionId(REFERENCE)])
                .collect();
            if !model.aux_regions.is_empty() {
                ids = model.aux_regions.clone();
            }
            Op::CreateVolume {
                name: "aux".into(),
                policy: policy(&ids),
            }
        }
        Action::Deliver { to, limit, rewind } => {
            let j = *to as usize % n;
            if j != i && deliverable(model, i, j) {
                let (a, b) = two(rs, i, j);
                deliver(a, b, *limit as usize, u64::from(*rewind));
            }
            return;
        }
        Action::Cut { other } => {
            let j = *other as usize % n;
            if j != i {
                let pair = (i.min(j), i.max(j));
                if !model.cut.remove(&pair) {
                    model.cut.insert(pair);
                }
            }
            return;
        }
        Action::Skew { by } => {
            r.phys += [1_000, 100_000, 1_000_000][*by as usize % 3];
            return;
        }
    };
    // Local refusals (EEXIST, EACCES, EDQUOT, ENOTEMPTY, a move into itself...) are part
    // of the game.
    let out = r.run(op);
    if trace() {
        eprintln!("    -> {out:?}");
    }
}

/// Every record of every region once, in HLC order, applied by a fresh region.
fn reference(rs: &[Region], fresh: &mut Region) {
    let mut all: Vec<(u64, Record)> = rs.iter().flat_map(|r| r.changes(1, usize::MAX)).collect();
    all.sort_by_key(|(_, r)| r.hlc);
    for (seq, record) in all {
        let batch = RemoteBatch {
            origin: record.hlc.region,
            records: vec![(seq, record)],
            frontier: None,
            settled: None,
            scanned: 0,
            settled_by: Vec::new(),
        };
        let outcome = fresh
            .write(|t| apply_remote(t, RegionId(REFERENCE), &batch))
            .unwrap();
        assert_eq!(outcome.redone, 0, "records in HLC order never rewind");
    }
}

/// The bytes of every regular file of every volume.
fn final_files(r: &Region, model: &Model) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for vol in r.read(|x| x.volumes()).unwrap() {
        for e in entries_of(r, &vol.name) {
            if e.3 == FileKind::File {
                let path = format!("{}:{}/{}", vol.name, e.0, String::from_utf8_lossy(&e.1));
                out.push((path, file_bytes(r, model, e.2)));
            }
        }
    }
    out
}

fn check_nothing_lost(r: &Region, model: &Model) {
    if trace() {
        for c in r.conflicts() {
            eprintln!("conflict {} {} {:?}: {}", c.hlc, c.kind, c.ino, c.detail);
        }
        for e in entries_of(r, "main") {
            eprintln!(
                "entry {} {:?} -> {} {:?}",
                e.0,
                String::from_utf8_lossy(&e.1),
                e.2,
                e.3
            );
        }
    }
    let files = final_files(r, model);
    let present: BTreeSet<&[u8]> = files.iter().map(|(_, b)| b.as_slice()).collect();
    for (stamp, bytes) in &model.versions {
        if bytes.is_empty() || model.replaced.contains(stamp) {
            continue;
        }
        assert!(
            present.contains(bytes.as_slice()),
            "region {}: the version made at {stamp} ({} bytes: {:?}) is lost; files: {:?}",
            r.id.0,
            bytes.len(),
            String::from_utf8_lossy(bytes),
            files
                .iter()
                .map(|(p, b)| (p, String::from_utf8_lossy(b)))
                .collect::<Vec<_>>()
        );
    }
    let made: BTreeSet<&[u8]> = model.versions.values().map(Vec::as_slice).collect();
    for (path, bytes) in &files {
        assert!(
            bytes.is_empty() || made.contains(bytes.as_slice()),
            "region {}: {path} holds {:?}, a mix no client wrote",
            r.id.0,
            String::from_utf8_lossy(bytes)
        );
    }
}

fn converge(n: u16, actions: &[(u8, Action)]) {
    let (mut rs, mut fresh) = setup(n);
    let mut model = Model::default();
    for (who, action) in actions {
        run_action(&mut rs, &mut model, *who, action);
    }
    model.cut.clear();
    settle(&mut rs);
    reference(&rs, &mut fresh);
    let expected = namespace_dump(&fresh);
    check_tree(&fresh);
    for r in &rs {
        check_tree(r);
        assert_eq!(
            namespace_dump(r),
            expected,
            "region {} differs from the reference (every record in HLC order)",
            r.id.0
        );
        check_nothing_lost(r, &model);
        assert_consistent(r);
    }
    // Then the marks travel: every region purges the same tombstones, and still holds
    // every version nobody removed.
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
        check_nothing_lost(r, &model);
        assert_consistent(r);
    }
}

/// Like [`converge`], but settled marks travel from the start, so tombstones are purged
/// and the merged log pruned while records are still being reordered around them.
fn converge_purging(n: u16, actions: &[(u8, Action)]) {
    let (mut rs, _) = setup(n);
    for r in rs.iter_mut() {
        r.marks = true;
    }
    let mut model = Model::default();
    for (who, action) in actions {
        run_action(&mut rs, &mut model, *who, action);
    }
    model.cut.clear();
    settle(&mut rs);
    let first = namespace_dump(&rs[0]);
    for r in &rs {
        check_tree(r);
        if trace() && namespace_dump(r) != first {
            for (k, rows) in namespace_dump(r) {
                if first[k] != rows {
                    eprintln!(
                        "table {k} differs:\n  {:?}\n  {:?}",
                        first[k]
                            .iter()
                            .map(|(a, b)| (
                                String::from_utf8_lossy(a).into_owned(),
                                String::from_utf8_lossy(b).into_owned()
                            ))
                            .collect::<Vec<_>>(),
                        rows.iter()
                            .map(|(a, b)| (
                                String::from_utf8_lossy(a).into_owned(),
                                String::from_utf8_lossy(b).into_owned()
                            ))
                            .collect::<Vec<_>>()
                    );
                }
            }
        }
        assert_eq!(namespace_dump(r), first, "region {} differs", r.id.0);
        check_nothing_lost(r, &model);
        assert_consistent(r);
    }
}

/// Three regions purging as they go, with "aux" living in the first two only: "aux"
/// settles on its own regions' marks while the third lags (ADR 0010). The two holders of
/// "aux" end identical, and the third holds "main" as they do.
fn converge_with_aux_in_two(actions: &[(u8, Action)]) {
    let aux_in = [RegionId(1), RegionId(2)];
    let (mut rs, _) = setup_with_aux_in(3, &aux_in);
    for r in rs.iter_mut() {
        r.marks = true;
    }
    let mut model = Model {
        aux_regions: aux_in.to_vec(),
        ..Model::default()
    };
    for (who, action) in actions {
        run_action(&mut rs, &mut model, *who, action);
    }
    model.cut.clear();
    settle(&mut rs);
    assert_eq!(
        namespace_dump(&rs[0]),
        namespace_dump(&rs[1]),
        "the holders of aux differ"
    );
    let main_of = |r: &Region| {
        let mut files = final_files(r, &model);
        files.retain(|(path, _)| path.starts_with("main:"));
        (entries_of(r, "main"), files)
    };
    assert_eq!(
        main_of(&rs[2]),
        main_of(&rs[0]),
        "region 3 holds another main"
    );
    assert!(
        rs[2].read(|x| x.volume("aux")).is_err(),
        "aux reached region 3"
    );
    for r in &rs {
        check_tree(r);
        assert_consistent(r);
    }
    for r in &rs[..2] {
        check_nothing_lost(r, &model);
    }
}

/// Cases per property: 256 unless PROPTEST_CASES says otherwise (a long run by hand).
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn regions_converge_to_the_reference_and_lose_nothing(
        n in 2..=4u16,
        actions in proptest::collection::vec(arb_action(), 1..70),
    ) {
        converge(n, &actions);
    }

    #[test]
    fn a_volume_in_some_regions_settles_with_them_and_loses_nothing(
        actions in proptest::collection::vec(arb_action(), 1..70),
    ) {
        converge_with_aux_in_two(&actions);
    }

    #[test]
    fn regions_purging_as_they_go_converge_and_lose_nothing(
        n in 2..=4u16,
        actions in proptest::collection::vec(arb_action(), 1..70),
    ) {
        converge_purging(n, &actions);
    }
}
