//! Changing a directory's entries: creates, links, unlinks, removals and renames, each
//! answered alone in a directory leased here when it can be (`lease/entries.rs`), and
//! through the servers otherwise.

use meridian_proto::InodeId;
use meridian_proto::ns::{Attr, Creds, FileKind, Op, RenameFlags};

use super::{Errno, FileSystem, HIDDEN_PREFIX, attr_of, lease};

impl FileSystem {
    /// Creates a node of `kind` (not a symlink).
    pub async fn mknod(
        &self,
        parent: InodeId,
        name: &[u8],
        kind: FileKind,
        perm: u16,
        rdev: u32,
        creds: &Creds,
    ) -> Result<Attr, Errno> {
        if kind == FileKind::Dir
            && self.may_answer_alone()
            && let Some(answer) = self.leases.mkdir(
                &self.meta,
                &lease::Asked {
                    parent,
                    name,
                    creds,
                },
                perm,
            )
        {
            return answer;
        }
        attr_of(
            self.mutate(Op::Mknod {
                parent,
                name: name.to_vec(),
                kind,
                perm,
                rdev,
                exclusive: true,
                creds: creds.clone(),
            })
            .await?,
        )
    }

    /// Creates a symbolic link.
    pub async fn symlink(
        &self,
        parent: InodeId,
        name: &[u8],
        target: &[u8],
        creds: &Creds,
    ) -> Result<Attr, Errno> {
        if self.may_answer_alone() {
            let asked = lease::Asked {
                parent,
                name,
                creds,
            };
            if let Some(answer) = self.leases.symlink(&self.meta, &asked, target) {
                return answer;
            }
        }
        attr_of(
            self.mutate(Op::Symlink {
                parent,
                name: name.to_vec(),
                target: target.to_vec(),
                creds: creds.clone(),
            })
            .await?,
        )
    }

    /// Adds a hard link.
    pub async fn link(
        &self,
        ino: InodeId,
        new_parent: InodeId,
        new_name: &[u8],
        creds: &Creds,
    ) -> Result<Attr, Errno> {
        let buffered = self.buffered_end(ino).await;
        if self.may_answer_alone() {
            let asked = lease::Asked {
                parent: new_parent,
                name: new_name,
                creds,
            };
            if let Some(answer) = self.leases.link(&self.meta, &asked, ino) {
                return answer.map(|a| self.as_seen_here(a, buffered));
            }
        }
        let attr = attr_of(
            self.mutate(Op::Link {
                ino,
                new_parent,
                new_name: new_name.to_vec(),
                creds: creds.clone(),
            })
            .await?,
        )?;
        Ok(self.as_seen_here(attr, buffered))
    }

    /// Removes a file entry. The last link of a file this client still has open is
    /// renamed out of sight instead, and removed when the last handle closes, so the open
    /// descriptors keep working (as on a local disk, and as libfuse's hard_remove=false).
    pub async fn unlink(&self, parent: InodeId, name: &[u8], creds: &Creds) -> Result<(), Errno> {
        if let Some(answer) = self.unlink_alone(parent, name, creds).await {
            return answer;
        }
        // Only a file open here needs hiding: with nothing open, no lookup first. In a
        // directory leased here the rename is answered alone too (the kernel often sends
        // a close's release after the unlink that follows it).
        if !self.nothing_open()
            && let Ok(a) = self.lookup(parent, name, creds).await
            && a.kind == FileKind::File
            && a.nlink == 1
            && self.is_open(a.ino).await
        {
            let hidden = [HIDDEN_PREFIX, a.ino.0.to_string().as_bytes()].concat();
            self.rename(parent, name, parent, &hidden, RenameFlags::default(), creds)
                .await?;
            self.hidden
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(a.ino, (parent, hidden, creds.clone()));
            return Ok(());
        }
        self.mutate(Op::Unlink {
            parent,
            name: name.to_vec(),
            creds: creds.clone(),
        })
        .await
        .map(|_| ())
    }

    /// unlink answered alone, in a directory leased here, of an entry not open here.
    pub(super) async fn unlink_alone(
        &self,
        parent: InodeId,
        name: &[u8],
        creds: &Creds,
    ) -> Option<Result<(), Errno>> {
        if !self.may_answer_alone() {
            return None;
        }
        let (ino, kind) = self.leases.entry(parent, name)?;
        if kind != FileKind::Dir && self.is_open(ino).await {
            return None;
        }
        let asked = lease::Asked {
            parent,
            name,
            creds,
        };
        self.leases.unlink(&self.meta, &asked, Some(ino))
    }

    /// Removes an empty directory.
    pub async fn rmdir(&self, parent: InodeId, name: &[u8], creds: &Creds) -> Result<(), Errno> {
        if self.may_answer_alone()
            && let Some(answer) = self.leases.rmdir(
                &self.meta,
                &lease::Asked {
                    parent,
                    name,
                    creds,
                },
            )
        {
            return answer;
        }
        self.mutate(Op::Rmdir {
            parent,
            name: name.to_vec(),
            creds: creds.clone(),
        })
        .await
        .map(|_| ())
    }

    /// Renames an entry.
    pub async fn rename(
        &self,
        parent: InodeId,
        name: &[u8],
        new_parent: InodeId,
        new_name: &[u8],
        flags: RenameFlags,
        creds: &Creds,
    ) -> Result<(), Errno> {
        // Within a directory leased here (a file written under a temporary name, then
        // put in place, as rsync and editors do), or between two (a mail delivered from
        // tmp/ to new/): answered alone.
        if self.may_answer_alone() {
            let target_open = match self.leases.entry(new_parent, new_name) {
                Some((ino, FileKind::File)) => self.is_open(ino).await,
                _ => false,
            };
            let asked = lease::Asked {
                parent,
                name,
                creds,
            };
            if let Some(answer) =
                self.leases
                    .rename(&self.meta, &asked, new_parent, new_name, flags, target_open)
            {
                return answer;
            }
        }
        let op = Op::Rename {
            parent,
            name: name.to_vec(),
            new_parent,
            new_name: new_name.to_vec(),
            flags,
            creds: creds.clone(),
        };
        self.mutate(op).await.map(|_| ())
    }
}
