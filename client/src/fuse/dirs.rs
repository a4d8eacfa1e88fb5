//! Directory listings as the kernel reads them: taken whole at opendir (or again for a
//! handle of a previous serving process), kept under the handle, answered by offset.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use fuser::{FileType, INodeNo, ReplyDirectory, Request};
use meridian_proto::InodeId;

use super::FuseFs;
use super::convert::{creds, kind};
use crate::fs::{FileSystem, Listing};

/// A directory's listing as the kernel reads it: "." and ".." (both `ino`, the
/// directory's number for the kernel), then the entries.
pub(super) struct Listed {
    ino: INodeNo,
    /// The volume's root inode, which the kernel knows as [`INodeNo::ROOT`].
    root: InodeId,
    entries: Listing,
}

/// Listings taken at opendir, so readdir offsets stay stable while the directory changes.
#[derive(Default)]
pub(super) struct OpenDirs {
    pub(super) next: std::sync::atomic::AtomicU64,
    pub(super) listings: std::sync::Mutex<std::collections::HashMap<u64, Arc<Listed>>>,
}

/// A directory's entries as the kernel lists them.
pub(super) async fn list_dir(
    fs: &FileSystem,
    dir: InodeId,
    ino: INodeNo,
    c: &meridian_proto::ns::Creds,
    root: InodeId,
) -> Result<Listed, crate::fs::Errno> {
    let entries = fs.readdir(dir, c).await?;
    Ok(Listed { ino, root, entries })
}

/// Answers a readdir from a listing, from offset `from` on (the offset of an entry is
/// where the next readdir continues: its place in the listing, plus one).
pub(super) fn reply_listing(listing: &Listed, from: u64, mut reply: ReplyDirectory) {
    let offset = usize::try_from(from).unwrap_or(usize::MAX);
    let dots = [&b"."[..], &b".."[..]]
        .into_iter()
        .map(|name| (name, listing.ino, FileType::Directory));
    let entries = listing
        .entries
        .starting_at(offset.saturating_sub(2))
        .map(|(name, ino, k)| {
            let ino = match ino == listing.root {
                true => INodeNo::ROOT,
                false => INodeNo(ino.0),
            };
            (name, ino, kind(k))
        });
    let all = dots.skip(offset).chain(entries);
    for (j, (name, ino, t)) in all.enumerate() {
        let at = from.saturating_add(1 + j as u64);
        if reply.add(ino, at, t, OsStr::from_bytes(name)) {
            break;
        }
    }
    reply.ok();
}

impl FuseFs {
    /// Lists directory `ino` for `req` in a task and keeps the listing under handle `fh`
    /// (a new one when none; an adopted handle keeps a listing already there), then hands
    /// the handle and listing to `then`.
    pub(super) fn keep_listing(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: Option<u64>,
        then: impl FnOnce(Result<(u64, Arc<Listed>), crate::fs::Errno>) + Send + 'static,
    ) {
        let (fs, dir, c, root, dirs) = (
            self.fs.clone(),
            self.ino(ino),
            creds(req),
            self.root,
            self.dirs.clone(),
        );
        self.spawn(req, async move {
            let all = match list_dir(&fs, dir, ino, &c, root).await {
                Ok(all) => Arc::new(all),
                Err(e) => return then(Err(e)),
            };
            let fh = fh.unwrap_or_else(|| {
                dirs.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
            });
            let kept = dirs
                .listings
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(fh)
                .or_insert(all)
                .clone();
            then(Ok((fh, kept)));
        });
    }
}
