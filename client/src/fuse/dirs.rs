//! Directory listings as the kernel reads them: taken whole at opendir (or again for a
//! handle of a previous serving process), kept under the handle, answered by offset.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use fuser::{FileType, INodeNo, ReplyDirectory, Request};
use meridian_proto::InodeId;

use super::FuseFs;
use super::convert::{creds, kind};
use crate::fs::FileSystem;

/// One directory entry as the kernel sees it.
pub(super) type DirItem = (INodeNo, FileType, Vec<u8>);

/// Listings taken at opendir, so readdir offsets stay stable while the directory changes.
#[derive(Default)]
pub(super) struct OpenDirs {
    pub(super) next: std::sync::atomic::AtomicU64,
    pub(super) listings: std::sync::Mutex<std::collections::HashMap<u64, Arc<Vec<DirItem>>>>,
}

/// A directory's entries as the kernel lists them ("." and ".." first).
pub(super) async fn list_dir(
    fs: &FileSystem,
    dir: InodeId,
    ino: INodeNo,
    c: &meridian_proto::ns::Creds,
    root: InodeId,
) -> Result<Vec<DirItem>, crate::fs::Errno> {
    let entries = fs.readdir(dir, c).await?;
    let mut all: Vec<DirItem> = vec![
        (ino, FileType::Directory, b".".to_vec()),
        (ino, FileType::Directory, b"..".to_vec()),
    ];
    all.extend(entries.into_iter().map(|e| {
        let k = if e.ino == root {
            INodeNo::ROOT
        } else {
            INodeNo(e.ino.0)
        };
        (k, kind(e.kind), e.name)
    }));
    Ok(all)
}

/// Answers a readdir from a listing, from `offset` on.
pub(super) fn reply_listing(listing: &[DirItem], offset: u64, mut reply: ReplyDirectory) {
    for (i, (k, t, name)) in listing.iter().enumerate().skip(offset as usize) {
        // The offset of an entry is where the next readdir continues.
        if reply.add(*k, (i + 1) as u64, *t, OsStr::from_bytes(name)) {
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
        then: impl FnOnce(Result<(u64, Arc<Vec<DirItem>>), crate::fs::Errno>) + Send + 'static,
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
