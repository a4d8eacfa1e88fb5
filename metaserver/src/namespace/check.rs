//! Reads for the region's housekeeping: block reference counts for garbage collection, and
//! a page-by-page consistency check of the namespace for `meridian admin fsck`.

use std::collections::{BTreeMap, HashMap, HashSet};

use meridian_proto::ns::{CheckPage, CheckedBlock, LINKS_MAX, LinkCount};
use meridian_proto::{BlockId, Hlc, InodeId};
use redb::{ReadTransaction, ReadableTable};

use super::tables::*;
use super::types::*;

/// Most problems one page reports (the rest are counted in one line).
const MAX_PROBLEMS: usize = 1000;

/// Most files one page gives a link balance for (`CheckPage::links`): past them (a
/// directory of millions of names whose files are in other pages) the page gives none,
/// and fsck says the link counts were not checked, rather than send an answer larger than
/// a message carries.
const MAX_LINKS: usize = 1_000_000;

/// Reference counts of blocks and the region's marks, as garbage collection asks them.
#[derive(Debug)]
pub struct BlockRefs {
    /// Extents (of inodes and tombstones) referencing each block, in the order asked.
    pub refs: Vec<u64>,
    /// The oldest peer frontier's wall time (`u64::MAX` with no peers, 0 if a peer has
    /// never told how far it is).
    pub settled_ms: u64,
    /// The newest stamp of anything applied here.
    pub now: Option<Hlc>,
    /// The settled bound (`None` until every peer has sent its marks; with no peers, the
    /// horizon).
    pub settled: Option<Hlc>,
}

/// References to each of `blocks`, with the marks that say when an unreferenced block can
/// no longer be named by a record still on its way from another region.
pub fn block_refs(tx: &ReadTransaction, blocks: &[BlockId]) -> Result<BlockRefs, NsError> {
    let refs = match tx.open_table(BLOCK_REFS) {
        Ok(t) => blocks
            .iter()
            .map(|b| {
                Ok(t.get(b.as_bytes().as_slice())
                    .map_err(store_err)?
                    .map(|v| v.value())
                    .unwrap_or(0))
            })
            .collect::<Result<Vec<u64>, NsError>>()?,
        Err(redb::TableError::TableDoesNotExist(_)) => vec![0; blocks.len()],
        Err(e) => return Err(store_err(e)),
    };
    let mut out = BlockRefs {
        refs,
        settled_ms: u64::MAX,
        now: None,
        settled: None,
    };
    if let Some(state) = super::merge::state_table(tx)? {
        let mut now = super::merge::horizon(&state)?;
        for p in super::merge::origins(&state)? {
            let f = super::merge::frontier(&state, p)?;
            out.settled_ms = out.settled_ms.min(f.map_or(0, |h| h.wall_ms));
            now = now.max(f);
        }
        out.now = now;
        out.settled = super::merge::settled_bound(&state)?;
    }
    Ok(out)
}

/// Checks the inodes numbered from `from` on, at most `limit` of them, live ones and
/// removed ones kept as tombstones:
/// - every directory entry names an inode that exists, of the kind the entry says;
/// - a directory's link count is 2 plus its subdirectories, and its children point back;
/// - a file has at least one link, and as many as the names that lead to it: the page
///   counts the names in its directories against the link counts of its files
///   (`CheckPage::links`), and the caller sums the pages and asks [`link_counts`] about
///   the files that do not come to zero;
/// - every extent belongs to an inode or a tombstone, and its block is counted as
///   referenced (a block counted as unreferenced would be collected).
///
/// Returns the blocks the extents reference, with the most copies any of their volumes
/// wants, so the caller can check the copies on the chunkservers.
pub fn check(tx: &ReadTransaction, from: u64, limit: u32) -> Result<CheckPage, NsError> {
    check_within(tx, from, limit, MAX_LINKS)
}

/// [`check`], giving link balances for at most `max_links` files.
pub(crate) fn check_within(
    tx: &ReadTransaction,
    from: u64,
    limit: u32,
    max_links: usize,
) -> Result<CheckPage, NsError> {
    let mut page = CheckPage::default();
    let inodes = match tx.open_table(INODES) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(page),
        Err(e) => return Err(store_err(e)),
    };
    let dirents = tx.open_table(DIRENTS).map_err(store_err)?;
    let extents = tx.open_table(EXTENTS).map_err(store_err)?;
    let refs = tx.open_table(BLOCK_REFS).map_err(store_err)?;
    let tombs = tx.open_table(TOMBS).map_err(store_err)?;
    let volumes = super::read::NsReader::new(tx).volumes_all()?;
    let replicas: HashMap<u32, u32> = volumes.iter().map(|v| (v.id, v.policy.replicas)).collect();
    let roots: HashSet<InodeId> = volumes.iter().map(|v| v.root).collect();
    let state = super::merge::state_table(tx)?;
    let in_copy = in_copy(&volumes, state.as_ref())?;
    // Per file: its link count less its names in this page's directories.
    let mut links: BTreeMap<u64, i64> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut problem = |p: String| problems.push(p);

    // Live inodes of this page, then the tombstones in the same number range.
    let mut owners: BTreeMap<u64, u32> = BTreeMap::new(); // inode -> volume
    let mut cuts: BTreeMap<u64, Vec<Cut>> = BTreeMap::new(); // file -> its cuts
    let mut end = u64::MAX;
    for item in inodes.range(from..).map_err(store_err)? {
        let (k, v) = item.map_err(store_err)?;
        if page.inodes >= u64::from(limit.max(1)) {
            end = k.value();
            page.next = Some(end);
            break;
        }
        page.inodes += 1;
        let node: Inode = match serde_json::from_slice(v.value()) {
            Ok(n) => n,
            Err(e) => {
                problem(format!("inode {}: undecodable record: {e}", k.value()));
                continue;
            }
        };
        let ino = node.attr.ino;
        if ino.0 != k.value() {
            problem(format!("inode {}: the record says it is {ino}", k.value()));
        }
        owners.insert(ino.0, node.attr.volume);
        match node.attr.kind {
            _ if in_copy(ino) => {}
            FileKind::Dir => {
                let lo = dirent_key(ino, b"");
                let hi = dirent_end(ino);
                let mut subdirs = 0u32;
                for item in dirents
                    .range(lo.as_slice()..hi.as_slice())
                    .map_err(store_err)?
                {
                    let (dk, dv) = item.map_err(store_err)?;
                    page.dirents += 1;
                    let entry = decode_dirent(dk.value(), dv.value())?;
                    let shown = String::from_utf8_lossy(&entry.name).into_owned();
                    let child = read_inode(&inodes, entry.ino)?;
                    if child.as_ref().is_some_and(|c| c.attr.kind != FileKind::Dir) {
                        *links.entry(entry.ino.0).or_default() -= 1;
                    }
                    match child {
                        None => problem(format!(
                            "directory {ino}: entry {shown:?} names inode {} which does not exist",
                            entry.ino
                        )),
                        Some(child) if child.attr.kind != entry.kind => problem(format!(
                            "directory {ino}: entry {shown:?} says {:?}, inode {} is {:?}",
                            entry.kind, entry.ino, child.attr.kind
                        )),
                        Some(child) if child.attr.kind == FileKind::Dir => {
                            subdirs += 1;
                            if child.parent != ino {
                                problem(format!(
                                    "directory {ino}: subdirectory {shown:?} ({}) points back to {}",
                                    entry.ino, child.parent
                                ));
                            }
                        }
                        Some(_) => {}
                    }
                }
                if node.attr.nlink != 2 + subdirs {
                    problem(format!(
                        "directory {ino}: {} links, expected {} (2 + {subdirs} subdirectories)",
                        node.attr.nlink,
                        2 + subdirs
                    ));
                }
                if !roots.contains(&ino) && read_inode(&inodes, node.parent)?.is_none() {
                    problem(format!(
                        "directory {ino}: its parent {} does not exist",
                        node.parent
                    ));
                }
            }
            _ => {
                if node.attr.nlink == 0 {
                    problem(format!("inode {ino}: live with no links"));
                }
                *links.entry(ino.0).or_default() += i64::from(node.attr.nlink);
            }
        }
        if !node.cuts.is_empty() {
            let apart = node.cuts.windows(2).all(|w| w[0].to < w[1].from);
            if !apart || node.cuts.iter().any(|c| c.from >= c.to) {
                problem(format!("file {ino}: cuts out of order: {:?}", node.cuts));
            }
            cuts.insert(ino.0, node.cuts.clone());
        }
    }
    for item in tombs.range(from..end).map_err(store_err)? {
        let (k, v) = item.map_err(store_err)?;
        page.inodes += 1;
        match serde_json::from_slice::<Tomb>(v.value()) {
            Ok(t) => {
                if owners.insert(k.value(), t.inode.attr.volume).is_some() {
                    problem(format!("inode {}: both live and a tombstone", k.value()));
                }
                // A file removed with cuts keeps them, and its mark, until its purge.
                if !t.inode.cuts.is_empty() {
                    cuts.insert(k.value(), t.inode.cuts);
                }
            }
            Err(e) => problem(format!("tombstone {}: undecodable: {e}", k.value())),
        }
    }

    // Files whose extents are dropped in steps (`trim.rs`), in the same range: a removed
    // file's mark owns its extents; a live file's or a tombstone's is for its cuts (or for
    // none, when a write took the last away and the next step has not removed the mark).
    if let Some(state) = &state {
        for m in super::trim::pending(state)? {
            cuts.remove(&m.ino.0);
            if (from..end).contains(&m.ino.0) {
                owners.entry(m.ino.0).or_insert(m.volume);
            }
        }
    }
    // What is left in `cuts` has no mark: its cuts must hold nothing (a rewind of the
    // merged log can bring back a cut the steps had emptied), or nothing would drop it.

    // Every extent in the page's number range.
    let lo = pair_key(from, 0);
    let hi = pair_key(end, 0);
    let mut blocks: BTreeMap<BlockId, CheckedBlock> = BTreeMap::new();
    let range = if end == u64::MAX {
        extents.range(lo.as_slice()..).map_err(store_err)?
    } else {
        extents
            .range(lo.as_slice()..hi.as_slice())
            .map_err(store_err)?
    };
    for item in range {
        let (k, v) = item.map_err(store_err)?;
        page.extents += 1;
        // Decoded first: it checks the key's length.
        let e = decode_extent(k.value(), v.value())?;
        let owner = u64::from_be_bytes(k.value()[..8].try_into().expect("a 16-byte key"));
        let Some(volume) = owners.get(&owner) else {
            problem(format!(
                "extent of inode {owner} at {}: no such inode or tombstone",
                e.offset
            ));
            continue;
        };
        if cuts
            .get(&owner)
            .is_some_and(|c| c.iter().any(|c| c.holds(e.offset)))
        {
            problem(format!(
                "extent of file {owner} at {}: in a cut, with no mark for the steps that drop it",
                e.offset
            ));
        }
        let r = replicas.get(volume).copied().unwrap_or(1);
        let b = blocks.entry(e.block).or_insert(CheckedBlock {
            block: e.block,
            replicas: r,
            inode: InodeId(owner),
            staged: false,
        });
        b.replicas = b.replicas.max(r);
        let counted = refs
            .get(e.block.as_bytes().as_slice())
            .map_err(store_err)?
            .map(|v| v.value())
            .unwrap_or(0);
        if counted == 0 {
            problem(format!(
                "inode {owner} at {}: block {} is counted as unreferenced (it would be collected)",
                e.offset, e.block
            ));
        }
    }
    for b in blocks.values_mut() {
        b.staged = super::staging::read(tx, &b.block)?.is_some();
    }
    page.blocks = blocks.into_values().collect();
    let links: Vec<(u64, i64)> = links.into_iter().filter(|(_, d)| *d != 0).collect();
    page.links = (links.len() <= max_links).then_some(links);
    if problems.len() > MAX_PROBLEMS {
        let more = problems.len() - MAX_PROBLEMS;
        problems.truncate(MAX_PROBLEMS);
        problems.push(format!("... and {more} more in this page"));
    }
    page.problems = problems;
    Ok(page)
}

/// The link count of each of `inodes` and the names that lead to it, counted over every
/// directory entry in this one read (see [`check`]). An inode that is not a live file
/// (gone, a directory, or in a copy being made or removed, whose tree is not whole) has no
/// link count here.
pub fn link_counts(tx: &ReadTransaction, inodes: &[u64]) -> Result<Vec<LinkCount>, NsError> {
    if inodes.len() > LINKS_MAX {
        return Err(NsError::Invalid(format!(
            "at most {LINKS_MAX} inodes in one count of links, not {}",
            inodes.len()
        )));
    }
    let mut names: HashMap<u64, u32> = inodes.iter().map(|&i| (i, 0)).collect();
    let table = match tx.open_table(INODES) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => {
            return Ok(inodes
                .iter()
                .map(|&ino| LinkCount {
                    ino,
                    nlink: None,
                    names: 0,
                })
                .collect());
        }
        Err(e) => return Err(store_err(e)),
    };
    let volumes = super::read::NsReader::new(tx).volumes_all()?;
    let in_copy = in_copy(&volumes, super::merge::state_table(tx)?.as_ref())?;
    // As the pages count them: entries of live directories, not in a copy.
    let mut dirs: HashMap<u64, bool> = HashMap::new();
    for item in tx
        .open_table(DIRENTS)
        .map_err(store_err)?
        .iter()
        .map_err(store_err)?
    {
        let (k, v) = item.map_err(store_err)?;
        // The inode an entry names, read before the whole entry is (most name none asked).
        let named = v
            .value()
            .get(..8)
            .map(|b| u64::from_be_bytes(b.try_into().expect("8")));
        if named.is_some_and(|i| !names.contains_key(&i)) {
            continue;
        }
        let entry = decode_dirent(k.value(), v.value())?;
        let Some(n) = names.get_mut(&entry.ino.0) else {
            continue;
        };
        let parent = u64::from_be_bytes(k.value()[..8].try_into().expect("checked length"));
        let counted = match dirs.get(&parent) {
            Some(&c) => c,
            None => {
                let c = !in_copy(InodeId(parent))
                    && read_inode(&table, InodeId(parent))?
                        .is_some_and(|d| d.attr.kind == FileKind::Dir);
                dirs.insert(parent, c);
                c
            }
        };
        if counted {
            *n += 1;
        }
    }
    inodes
        .iter()
        .map(|&ino| {
            let nlink = read_inode(&table, InodeId(ino))?
                .filter(|n| n.attr.kind != FileKind::Dir && !in_copy(n.attr.ino))
                .map(|n| n.attr.nlink);
            Ok(LinkCount {
                ino,
                nlink,
                names: names[&ino],
            })
        })
        .collect()
}

/// Whether an inode is in a copy being made or removed: such a copy is not a whole tree
/// (`copy_drop.rs`), so its rows are counted and its tree is not checked.
fn in_copy<S: super::merge::StateTable>(
    volumes: &[Volume],
    state: Option<&S>,
) -> Result<impl Fn(InodeId) -> bool + use<S>, NsError> {
    let copies = super::copy_drop::unchecked(volumes, state)?;
    Ok(move |ino: InodeId| {
        copies
            .iter()
            .any(|(root, range)| *root == ino || range.contains(&ino.0))
    })
}
