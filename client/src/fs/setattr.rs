//! Attribute changes (chmod, chown, utimes, truncate): answered here for what the mount
//! keeps under its leases (`lease/alone.rs`), otherwise by the servers after the file's
//! unsent writes.

use meridian_proto::InodeId;
use meridian_proto::ns::{Attr, Creds, Op, SetAttr};

use super::write::CommitFor;
use super::{Errno, FileSystem, attr_of};

impl FileSystem {
    /// Changes attributes (and truncates), after committing pending writes of the file: the
    /// data lands first, so a time set explicitly while the file is open (tar, cp -p, rsync)
    /// is not overwritten by the commit at close, and the reply carries the real size.
    pub async fn setattr(&self, ino: InodeId, set: SetAttr, creds: &Creds) -> Result<Attr, Errno> {
        if let Some(attr) = self.setattr_alone(ino, &set, creds).await? {
            return Ok(attr);
        }
        self.flush_inode(ino).await?;
        // Before and after: a read view taken while the change lands is stale too.
        self.changing(ino);
        let truncated = set.size.is_some();
        let buffered = self.buffered_end(ino).await;
        let reply = self
            .mutate(Op::SetAttr {
                ino,
                set,
                creds: creds.clone(),
            })
            .await;
        self.changing(ino);
        let attr = attr_of(reply?)?;
        // A truncate sets the size on purpose; writes buffered since still count.
        Ok(self.as_seen_here(attr, if truncated { 0 } else { buffered }))
    }

    /// A change of attributes of a file this mount made in a directory it holds leased,
    /// answered here and queued behind the commit of what was written before it
    /// (`fs/lease/alone.rs`); `None` when the servers must answer it.
    async fn setattr_alone(
        &self,
        ino: InodeId,
        set: &SetAttr,
        creds: &Creds,
    ) -> Result<Option<Attr>, Errno> {
        if !self.may_answer_alone()
            || self.volume.policy.quota_bytes.is_some()
            || !self.leases.may_set_alone(ino, set, creds)
        {
            return Ok(None);
        }
        self.flush_inode_for(ino, CommitFor::Change).await?;
        let Some(attr) = self.leases.set_alone(&self.meta, ino, set, creds) else {
            return Ok(None);
        };
        // As a mutation: what was kept for GETATTR, and read views, are stale.
        self.fresh.starting();
        self.fresh.ended();
        self.changing(ino);
        let buffered = self.buffered_end(ino).await;
        Ok(Some(self.as_seen_here(attr, buffered)))
    }
}
