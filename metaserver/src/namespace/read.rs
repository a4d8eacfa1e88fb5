//! Reads of the namespace: lookups, attributes, directory listings, links, xattrs, extents,
//! volumes. Each works on a redb read transaction (a consistent snapshot).

use meridian_proto::{Hlc, InodeId};
use redb::{ReadTransaction, ReadableTable};

use super::access::{R, X, check_access, check_name};
use super::tables::*;
use super::types::*;
use meridian_proto::ns::{Query, QueryReply, STAGED_PAGE_MAX};

/// A consistent view of the namespace.
pub struct NsReader<'a> {
    pub(super) tx: &'a ReadTransaction,
}

/// One page of a directory listing.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DirPage {
    /// Entries in name order.
    pub entries: Vec<DirEntry>,
    /// Pass as `after` to continue; `None` when the listing is complete.
    pub next: Option<Vec<u8>>,
}

pub(super) fn missing_table(e: redb::TableError) -> Result<(), NsError> {
    match e {
        redb::TableError::TableDoesNotExist(_) => Ok(()),
        other => Err(store_err(other)),
    }
}

impl<'a> NsReader<'a> {
    /// A reader over `tx`.
    pub fn new(tx: &'a ReadTransaction) -> Self {
        NsReader { tx }
    }

    /// The inode `ino`.
    pub fn inode(&self, ino: InodeId) -> Result<Inode, NsError> {
        let t = match self.tx.open_table(INODES) {
            Ok(t) => t,
            Err(e) => {
                missing_table(e)?;
                return Err(NsError::NotFound(ino.to_string()));
            }
        };
        read_inode(&t, ino)?.ok_or_else(|| NsError::NotFound(ino.to_string()))
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: InodeId) -> Result<Attr, NsError> {
        Ok(self.inode(ino)?.attr)
    }

    /// The entry `name` in directory `parent`.
    pub fn lookup(&self, parent: InodeId, name: &[u8], creds: &Creds) -> Result<Attr, NsError> {
        if name.len() > NAME_MAX {
            return Err(NsError::NameTooLong(name.len()));
        }
        let dir = self.inode(parent)?;
        if dir.attr.kind != FileKind::Dir {
            return Err(NsError::NotDir(parent.to_string()));
        }
        check_access(&dir.attr, creds, X)?;
        if name == b"." {
            return Ok(dir.attr);
        }
        if name == b".." {
            return self.getattr(dir.parent);
        }
        check_name(name)?;
        let t = self.tx.open_table(DIRENTS).map_err(store_err)?;
        let entry = read_dirent(&t, parent, name)?
            .ok_or_else(|| NsError::NotFound(String::from_utf8_lossy(name).into_owned()))?;
        self.getattr(entry.ino)
    }

    /// Up to `limit` entries of directory `ino` whose names sort after `after`.
    pub fn readdir(
        &self,
        ino: InodeId,
        after: Option<&[u8]>,
        limit: usize,
        creds: &Creds,
    ) -> Result<DirPage, NsError> {
        let dir = self.inode(ino)?;
        if dir.attr.kind != FileKind::Dir {
            return Err(NsError::NotDir(ino.to_string()));
        }
        check_access(&dir.attr, creds, R)?;
        let t = self.tx.open_table(DIRENTS).map_err(store_err)?;
        let mut from = dirent_key(ino, after.unwrap_or_default());
        if after.is_some() {
            from.push(0); // strictly after
        }
        let to = dirent_end(ino);
        let mut entries = Vec::new();
        let mut more = false;
        for item in t.range(from.as_slice()..to.as_slice()).map_err(store_err)? {
            let (k, v) = item.map_err(store_err)?;
            if entries.len() == limit.max(1) {
                more = true;
                break;
            }
            entries.push(decode_dirent(k.value(), v.value())?);
        }
        let next = if more {
            entries.last().map(|e| e.name.clone())
        } else {
            None
        };
        Ok(DirPage { entries, next })
    }

    /// The target of symlink `ino`.
    pub fn readlink(&self, ino: InodeId) -> Result<Vec<u8>, NsError> {
        let node = self.inode(ino)?;
        node.target
            .ok_or_else(|| NsError::Invalid(format!("{ino} is not a symlink")))
    }

    /// The value of xattr `name` of `ino`.
    pub fn getxattr(&self, ino: InodeId, name: &[u8], creds: &Creds) -> Result<Vec<u8>, NsError> {
        let node = self.inode(ino)?;
        if name.starts_with(b"user.") {
            check_access(&node.attr, creds, R)?;
        }
        if name.starts_with(b"trusted.") && creds.uid != 0 {
            return Err(NsError::NoData(String::from_utf8_lossy(name).into_owned()));
        }
        let t = self.tx.open_table(XATTRS).map_err(store_err)?;
        let v = t.get(dirent_key(ino, name).as_slice()).map_err(store_err)?;
        v.map(|v| v.value().to_vec())
            .ok_or_else(|| NsError::NoData(String::from_utf8_lossy(name).into_owned()))
    }

    /// A client's change as it is proposed: a copy of a range bounded in the rows it takes
    /// (`ops::content::copy_len`), an xattr refused past the inode's room for names
    /// (`ops::xattrs::room_for`). Decided here, on what this member holds, and carried in
    /// the command, so that every member applies the same whatever its version.
    pub fn bounded(&self, mut op: Op) -> Result<Op, NsError> {
        match &mut op {
            Op::CopyRange {
                src,
                src_offset,
                dst,
                dst_offset,
                len,
                ..
            } => {
                let extents = self.tx.open_table(EXTENTS).map_err(store_err)?;
                *len = super::ops::content::copy_len(
                    &extents,
                    (*src, *src_offset),
                    (*dst, *dst_offset),
                    *len,
                )?;
            }
            Op::SetXattr { ino, name, .. } => {
                let xattrs = self.tx.open_table(XATTRS).map_err(store_err)?;
                super::ops::xattrs::room_for(&xattrs, *ino, name)?;
            }
            _ => {}
        }
        Ok(op)
    }

    /// The xattr names of `ino` (trusted.* only for root).
    pub fn listxattr(&self, ino: InodeId, creds: &Creds) -> Result<Vec<Vec<u8>>, NsError> {
        self.inode(ino)?;
        let t = self.tx.open_table(XATTRS).map_err(store_err)?;
        let from = dirent_key(ino, b"");
        let to = dirent_end(ino);
        let mut names = Vec::new();
        for item in t.range(from.as_slice()..to.as_slice()).map_err(store_err)? {
            let (k, _) = item.map_err(store_err)?;
            let name = k.value().get(8..).unwrap_or_default().to_vec();
            if creds.uid == 0 || !name.starts_with(b"trusted.") {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Extents of `ino` overlapping `[offset, offset + len)`.
    pub fn extents(&self, ino: InodeId, offset: u64, len: u64) -> Result<Vec<Extent>, NsError> {
        self.extents_page(ino, offset, len, usize::MAX)
    }

    /// The first `limit` extents of `ino` overlapping `[offset, offset + len)` (a file of
    /// a million extents would not fit one answer).
    pub fn extents_page(
        &self,
        ino: InodeId,
        offset: u64,
        len: u64,
        limit: usize,
    ) -> Result<Vec<Extent>, NsError> {
        let node = self.inode(ino)?;
        // A deleted snapshot's files wait for the steps that remove them (`tree_drop`),
        // a file's extents maybe over several: none is read meanwhile, whole or not.
        let volumes = self.tx.open_table(VOLUMES).map_err(store_err)?;
        if super::volume_ids::volume_row_by_id(&volumes, node.attr.volume, Some(false))?.is_none() {
            return Err(NsError::NotFound(format!("{ino}: its volume was deleted")));
        }
        let t = self.tx.open_table(EXTENTS).map_err(store_err)?;
        // What a truncate or a punched hole cut off, and the steps have not dropped yet,
        // is nobody's.
        let range = (offset, offset.saturating_add(len));
        Ok(super::trim::live_page(&t, ino, &node.cuts, range, limit)?.0)
    }

    /// References to `block` from extents (0 if none).
    pub fn block_refs(&self, block: &meridian_proto::BlockId) -> Result<u64, NsError> {
        let t = self.tx.open_table(BLOCK_REFS).map_err(store_err)?;
        Ok(t.get(block.as_bytes().as_slice())
            .map_err(store_err)?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    /// The volume `name`.
    pub fn volume(&self, name: &str) -> Result<Volume, NsError> {
        let t = match self.tx.open_table(VOLUMES) {
            Ok(t) => t,
            Err(e) => {
                missing_table(e)?;
                return Err(NsError::NotFound(format!("volume {name}")));
            }
        };
        read_volume(&t, name)?.ok_or_else(|| NsError::NotFound(format!("volume {name}")))
    }

    /// The live volume `id`, if there is one.
    pub fn volume_by_id(&self, id: u32) -> Result<Option<Volume>, NsError> {
        match self.tx.open_table(VOLUMES) {
            Ok(t) => super::volume_ids::volume_row_by_id(&t, id, Some(false)),
            Err(e) => {
                missing_table(e)?;
                Ok(None)
            }
        }
    }

    /// Every volume, by name.
    pub fn volumes(&self) -> Result<Vec<Volume>, NsError> {
        Ok(self
            .volumes_all()?
            .into_iter()
            .filter(|v| v.deleted.is_none())
            .collect())
    }

    /// Every volume row, deleted ones' tombstones included.
    pub(super) fn volumes_all(&self) -> Result<Vec<Volume>, NsError> {
        let t = match self.tx.open_table(VOLUMES) {
            Ok(t) => t,
            Err(e) => {
                missing_table(e)?;
                return Ok(Vec::new());
            }
        };
        let mut out = Vec::new();
        for item in t.iter().map_err(store_err)? {
            let (_, v) = item.map_err(store_err)?;
            let vol: Volume =
                serde_json::from_slice(v.value()).map_err(|e| NsError::Store(e.to_string()))?;
            out.push(vol);
        }
        Ok(out)
    }

    /// Committed operations with sequence numbers from `from`, at most `limit`.
    pub fn changes(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, NsError> {
        let t = match self.tx.open_table(CHANGELOG) {
            Ok(t) => t,
            Err(e) => {
                missing_table(e)?;
                return Ok(Vec::new());
            }
        };
        let mut out = Vec::new();
        for item in t.range(from..).map_err(store_err)?.take(limit) {
            let (k, v) = item.map_err(store_err)?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Conflicts met while merging regions, oldest first, after `after`.
    pub fn conflicts(&self, after: Option<Hlc>, limit: usize) -> Result<Vec<Conflict>, NsError> {
        let t = match self.tx.open_table(CONFLICTS) {
            Ok(t) => t,
            Err(e) => {
                missing_table(e)?;
                return Ok(Vec::new());
            }
        };
        // Keys are stamp ++ index: start after every index of `after`.
        let from = after.map(|h| {
            let mut k = h.to_key().to_vec();
            k.extend_from_slice(&[0xff, 0xff, 0xff]);
            k
        });
        let mut out = Vec::new();
        let range = match &from {
            Some(k) => t.range(k.as_slice()..).map_err(store_err)?,
            None => t.range::<&[u8]>(..).map_err(store_err)?,
        };
        for item in range.take(limit) {
            let (_, v) = item.map_err(store_err)?;
            out.push(serde_json::from_slice(v.value()).map_err(|e| NsError::Store(e.to_string()))?);
        }
        Ok(out)
    }

    /// Answers a [`Query`].
    pub fn query(&self, q: &Query) -> Result<QueryReply, NsError> {
        Ok(match q {
            Query::Lookup {
                parent,
                name,
                creds,
            } => QueryReply::Attr(self.lookup(*parent, name, creds)?),
            Query::GetAttr { ino } => QueryReply::Attr(self.getattr(*ino)?),
            Query::ReadDir {
                ino,
                after,
                limit,
                creds,
            } => {
                let page = self.readdir(
                    *ino,
                    after.as_deref(),
                    (*limit).clamp(1, 10_000) as usize,
                    creds,
                )?;
                QueryReply::Dir {
                    entries: page.entries,
                    next: page.next,
                }
            }
            Query::ReadLink { ino } => QueryReply::Bytes(self.readlink(*ino)?),
            Query::GetXattr { ino, name, creds } => {
                QueryReply::Bytes(self.getxattr(*ino, name, creds)?)
            }
            Query::ListXattr { ino, creds } => QueryReply::Names(self.listxattr(*ino, creds)?),
            Query::View { ino, offset, len } => {
                let attr = self.getattr(*ino)?;
                let len = (*len).min(attr.size.saturating_sub(*offset));
                let extents = if len == 0 {
                    Vec::new()
                } else {
                    self.extents(*ino, *offset, len)?
                };
                QueryReply::View { attr, extents }
            }
            Query::Extents {
                ino,
                offset,
                len,
                limit,
            } => {
                let limit = limit.map_or(usize::MAX, |l| l.max(1) as usize);
                QueryReply::Extents(self.extents_page(*ino, *offset, *len, limit)?)
            }
            Query::Volume { name } => QueryReply::Volume(self.volume(name)?),
            Query::Volumes => QueryReply::Volumes(self.volumes()?),
            Query::Conflicts { after, limit } => {
                QueryReply::Conflicts(self.conflicts(*after, (*limit).clamp(1, 10_000) as usize)?)
            }
            Query::Changes { from, limit } => {
                QueryReply::Changes(self.changes(*from, (*limit).clamp(1, 10_000) as usize)?)
            }
            Query::BlockRefs { blocks } => {
                if blocks.len() > 10_000 {
                    return Err(NsError::Invalid(format!(
                        "{} blocks in one reference query, at most 10000",
                        blocks.len()
                    )));
                }
                let mut r = super::check::block_refs(self.tx, blocks)?;
                // A copy being made reads its source at a point in time: a block the
                // source let go of since may be named by a step still to come. Nothing is
                // collected while a copy is made.
                if self.volumes_all()?.iter().any(|v| v.copying.is_some()) {
                    for n in r.refs.iter_mut() {
                        *n = (*n).max(1);
                    }
                }
                QueryReply::BlockRefs {
                    refs: r.refs,
                    settled_ms: r.settled_ms,
                    now: r.now,
                    settled: r.settled,
                }
            }
            Query::Staged { ino, offset, block } => {
                let named = self
                    .extents(*ino, *offset, 1)?
                    .iter()
                    .any(|e| e.offset == *offset && e.block == *block);
                match named
                    .then(|| super::staging::read(self.tx, block))
                    .transpose()?
                {
                    Some(Some(data)) => QueryReply::Bytes(data),
                    _ => {
                        return Err(NsError::NotFound(format!(
                            "block {block} of {ino} at {offset} is not staged"
                        )));
                    }
                }
            }
            Query::StagedBlocks { after, limit } => QueryReply::StagedBlocks(super::staging::page(
                self,
                after.as_ref(),
                (*limit).clamp(1, STAGED_PAGE_MAX),
            )?),
            Query::Leases { after, limit } => QueryReply::Leases(super::lease::page(
                self.tx,
                *after,
                (*limit).clamp(1, 10_000) as usize,
            )?),
            Query::Check { from, limit } => QueryReply::Check(super::check::check(
                self.tx,
                *from,
                (*limit).clamp(1, 10_000),
            )?),
            Query::Links { inodes } => {
                QueryReply::Links(super::check::link_counts(self.tx, inodes)?)
            }
        })
    }
}
