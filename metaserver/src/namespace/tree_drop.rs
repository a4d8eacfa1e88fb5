//! What a deleted snapshot held, removed in steps.
//!
//! A snapshot goes with everything in it: its entries, inodes, xattrs and extents (each
//! one reference fewer to its block). Removed in the deletion's own entry, a snapshot of
//! 100,000 files held every client's changes for about 0.6 s on this host, and a snapshot
//! may hold 250,000. A tree of more than [`trim::INLINE`] rows now leaves the volume at
//! once (its row, and so its name, go in the deletion) and its root stays, marked for the
//! leader's steps (the same mark and steps as a removed file's extents, `trim.rs`): each
//! removes at most [`trim::STEP`] rows from the tree's first branch down, and the last
//! takes the root. Between steps the tree is whole as far as it goes (every entry names an
//! inode, every directory counts its subdirectories, a file its links), so fsck finds
//! nothing wrong, and the references its extents hold keep their blocks.
//!
//! Until the last step the deleted snapshot's inodes can still be read by number, by a
//! mount that had it mounted; nothing reaches them by name.
//!
//! A copy not yet finished is not a whole tree yet (a directory's entries may name inodes
//! of a later batch, a file's count a link not yet written), and these steps count on a
//! whole tree: its maker gone (ADR 0014), or deleted while being made, it goes by its
//! range of inode numbers in steps of its own (`copy_drop.rs`).

use std::collections::HashSet;

use meridian_proto::InodeId;

use super::tables::{WriteTables, read_extents, read_inode};
use super::trim;
use super::types::*;

/// The first `n` entries of directory `dir`.
fn entries(t: &WriteTables<'_>, dir: InodeId, n: usize) -> Result<Vec<DirEntry>, NsError> {
    super::ops::volumes::first_entries(t.dirents()?, dir, n)
}

/// Removes what is below `root` in the deletion's entry if it is at most
/// [`trim::INLINE`] rows (entries and extents) and returns `true`; else marks `root` of
/// `volume` for the steps and returns `false` (the root stays until the last of them).
pub(crate) fn remove_or_mark(
    t: &mut WriteTables<'_>,
    root: InodeId,
    volume: u32,
) -> Result<bool, NsError> {
    let mut left = trim::INLINE;
    if !within(t, root, &mut left)? {
        trim::write_mark(t, root, volume)?;
        return Ok(false);
    }
    remove_tree(t, root)?;
    Ok(true)
}

/// Whether what is below `root` is at most `left` rows (taking them off `left`). A loop,
/// not a recursion: a tree may be deeper than a thread's stack.
fn within(t: &WriteTables<'_>, root: InodeId, left: &mut usize) -> Result<bool, NsError> {
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        for e in entries(t, dir, left.saturating_add(1))? {
            let extents = match e.kind {
                FileKind::Dir => {
                    dirs.push(e.ino);
                    0
                }
                FileKind::File => {
                    trim::extents_in(t, e.ino, (0, u64::MAX), left.saturating_add(1))?.len()
                }
                _ => 0,
            };
            match left.checked_sub(1 + extents) {
                Some(rows) => *left = rows,
                None => return Ok(false),
            }
        }
    }
    Ok(true)
}

/// Removes everything below directory `root` at once: entries, inodes, xattrs, and
/// extents (each one reference fewer to its block). An inode goes at its first entry;
/// an entry naming none goes alone.
pub(crate) fn remove_tree(t: &mut WriteTables<'_>, root: InodeId) -> Result<(), NsError> {
    let mut dirs = vec![root];
    let mut seen = HashSet::new();
    while let Some(dir) = dirs.pop() {
        for e in super::ops::volumes::list_dir(t, dir)? {
            t.del_dirent(dir, &e.name)?;
            if !seen.insert(e.ino) {
                continue; // another link of an inode already removed
            }
            if e.kind == FileKind::Dir {
                dirs.push(e.ino);
            } else if e.kind == FileKind::File {
                for x in read_extents(t.extents()?, e.ino, 0, u64::MAX)? {
                    t.remove_extent(e.ino, &x)?;
                }
            }
            t.del_xattrs(e.ino)?;
            t.del_inode(e.ino)?;
        }
    }
    Ok(())
}

/// One step of marked tree `root`: removes up to `budget` rows below it (entries and
/// extents), and the root with the last. Returns whether the tree is gone. Depth first
/// from each directory's first entry, in a loop (a tree may be deeper than a thread's
/// stack): every pass either goes down into a directory or removes something. Outside
/// any record (the caller takes the undo away): directories' rows are written as they
/// are.
pub(crate) fn step(t: &mut WriteTables<'_>, root: InodeId, budget: usize) -> Result<bool, NsError> {
    let mut left = budget;
    // The directories gone down into, each with its entry in the one above.
    let mut path: Vec<(InodeId, Vec<u8>)> = Vec::new();
    let mut on_path = HashSet::from([root]);
    loop {
        let dir = path.last().map_or(root, |p| p.0);
        let next = entries(t, dir, 1)?.pop();
        if left == 0 && (next.is_some() || !path.is_empty()) {
            return Ok(false);
        }
        let Some(e) = next else {
            // Empty: the directory goes, one link off its parent; the root with the last.
            let Some((_, name)) = path.pop() else {
                t.del_xattrs(root)?;
                t.del_inode(root)?;
                return Ok(true);
            };
            on_path.remove(&dir);
            let parent = path.last().map_or(root, |p| p.0);
            t.del_xattrs(dir)?;
            t.del_inode(dir)?;
            if let Some(mut node) = read_inode(t.inodes()?, parent)? {
                node.attr.nlink = node.attr.nlink.saturating_sub(1);
                t.put_inode(&node)?;
            }
            t.del_dirent(parent, &name)?;
            left -= 1;
            continue;
        };
        match read_inode(t.inodes()?, e.ino)? {
            Some(node) if node.attr.kind == FileKind::Dir && on_path.insert(e.ino) => {
                path.push((e.ino, e.name));
                continue;
            }
            // An entry naming nothing, or a directory it is in (a damaged tree, which
            // would send the walk round for ever), goes alone.
            None => {}
            Some(node) if node.attr.kind == FileKind::Dir => {}
            // Another entry still names it: one link fewer.
            Some(mut node) if node.attr.nlink > 1 => {
                node.attr.nlink -= 1;
                t.put_inode(&node)?;
            }
            Some(node) => {
                if node.attr.kind == FileKind::File {
                    let extents = trim::extents_in(t, e.ino, (0, u64::MAX), left + 1)?;
                    let now = extents.len().min(left);
                    for x in &extents[..now] {
                        t.remove_extent(e.ino, x)?;
                    }
                    left -= now;
                    if now < extents.len() {
                        return Ok(false);
                    }
                }
                t.del_xattrs(e.ino)?;
                t.del_inode(e.ino)?;
            }
        }
        t.del_dirent(dir, &e.name)?;
        // (A file's last extents may have taken the last of the budget.)
        left = left.saturating_sub(1);
    }
}
