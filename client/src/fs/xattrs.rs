//! Extended attributes. A file made here is known to have no `security.capability`,
//! which every write asks for (`new_files.rs`).

use meridian_proto::InodeId;
use meridian_proto::ns::{Creds, Op, Query, QueryReply, XattrMode, libc_errno};

use super::{Errno, FileSystem};

/// The extended attribute holding a file's capabilities, which a write drops.
const CAPABILITY: &[u8] = b"security.capability";

impl FileSystem {
    /// Sets an extended attribute.
    pub async fn setxattr(
        &self,
        ino: InodeId,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
        creds: &Creds,
    ) -> Result<(), Errno> {
        self.mutate(Op::SetXattr {
            ino,
            name: name.to_vec(),
            value: value.to_vec(),
            mode,
            creds: creds.clone(),
        })
        .await
        .map(|_| ())
    }

    /// An extended attribute's value.
    pub async fn getxattr(
        &self,
        ino: InodeId,
        name: &[u8],
        creds: &Creds,
    ) -> Result<Vec<u8>, Errno> {
        let capability = name == CAPABILITY;
        let (epoch, asked) = (self.cache_epoch(), self.new_files.asking());
        if capability
            && self.feed_sees_everything()
            && self.new_files.without_capabilities(ino, epoch)
        {
            return Err(libc_errno::ENODATA);
        }
        match self
            .query(Query::GetXattr {
                ino,
                name: name.to_vec(),
                creds: creds.clone(),
            })
            .await
        {
            Ok(QueryReply::Bytes(b)) => Ok(b),
            Ok(_) => Err(libc_errno::EIO),
            Err(e) => {
                if capability && e == libc_errno::ENODATA {
                    self.new_files
                        .told_none(ino, asked, epoch, self.cache_epoch());
                }
                Err(e)
            }
        }
    }

    /// Before a write: drops the file's `security.capability`, as Linux does at every
    /// write. The kernel asks for it only at the first write after it learns the file's
    /// attributes (the mount handles killing privileges, `FUSE_HANDLE_KILLPRIV_V2`), so a
    /// capability another client gave since is found here; a file known to have none
    /// costs a lookup. As in the kernel, a capability that cannot be read is taken as
    /// none.
    pub(super) async fn drop_capability(&self, ino: InodeId, creds: &Creds) -> Result<(), Errno> {
        match self.getxattr(ino, CAPABILITY, creds).await {
            Ok(value) if !value.is_empty() => {
                match self.removexattr(ino, CAPABILITY, creds).await {
                    Err(e) if e != libc_errno::ENODATA => Err(e),
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// Extended attribute names.
    pub async fn listxattr(&self, ino: InodeId, creds: &Creds) -> Result<Vec<Vec<u8>>, Errno> {
        match self
            .query(Query::ListXattr {
                ino,
                creds: creds.clone(),
            })
            .await?
        {
            QueryReply::Names(n) => Ok(n),
            _ => Err(libc_errno::EIO),
        }
    }

    /// Removes an extended attribute.
    pub async fn removexattr(&self, ino: InodeId, name: &[u8], creds: &Creds) -> Result<(), Errno> {
        self.mutate(Op::RemoveXattr {
            ino,
            name: name.to_vec(),
            creds: creds.clone(),
        })
        .await
        .map(|_| ())
    }
}
