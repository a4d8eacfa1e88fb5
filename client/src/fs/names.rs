//! Reading the namespace: lookups, attributes, listings and symlink targets, each answered
//! from what the mount holds (a leased directory, names kept, attributes just sent) when
//! that is current, and from the servers otherwise.

use meridian_proto::InodeId;
use meridian_proto::ns::{Attr, Creds, FileKind, Query, QueryReply, libc_errno};

use super::{Errno, FileSystem, HIDDEN_PREFIX, Listing};

impl FileSystem {
    /// The entry `name` in `parent`.
    pub async fn lookup(&self, parent: InodeId, name: &[u8], creds: &Creds) -> Result<Attr, Errno> {
        // Search permission on `parent` is the kernel's to check (default_permissions).
        // A leased directory is known here whole.
        if let Some(answer) = self.leases.lookup(parent, name) {
            return match answer {
                // Open here, its size must count this client's unflushed writes.
                Ok(a) if a.kind == FileKind::File && self.is_open(a.ino).await => {
                    self.getattr(a.ino).await
                }
                Ok(a) => {
                    self.kernel.observed(&a);
                    Ok(self.as_seen_here(a, 0))
                }
                Err(e) => Err(e),
            };
        }
        // A name the servers would refuse gets their error, not ENOENT. A leased
        // directory's names are the lease's to answer (the names it answered alone never
        // reach the known directories).
        if self.leases.attr(parent).is_none()
            && name.len() <= meridian_proto::ns::NAME_MAX
            && !name.is_empty()
            && name != b"."
            && name != b".."
            && !name.contains(&b'/')
            && self.feed_sees_everything()
            && self.known.absent(parent, name, self.cache_epoch())
        {
            return Err(libc_errno::ENOENT);
        }
        // A name kept from an earlier answer, of an inode whose attributes are known here
        // (a directory leased here): as the kernel's entry cache would have answered. Not
        // in a directory leased here: its changes answered alone do not reach the names
        // kept, and its own entries are the answer.
        let sees_everything = self.feed_sees_everything();
        let epoch = self.cache_epoch();
        if sees_everything
            && self.leases.attr(parent).is_none()
            && let Some(ino) = self.known.entry(parent, name, epoch)
            && let Some(a) = self.leases.attr(ino)
        {
            if a.kind == FileKind::File && self.is_open(a.ino).await {
                return self.getattr(a.ino).await;
            }
            self.kernel.observed(&a);
            return Ok(self.as_seen_here(a, 0));
        }
        let asked = self.known.asking();
        match self
            .query(Query::Lookup {
                parent,
                name: name.to_vec(),
                creds: creds.clone(),
            })
            .await?
        {
            QueryReply::Attr(a) => {
                if sees_everything {
                    self.known
                        .found(asked, parent, name, a.ino, epoch, self.cache_epoch());
                }
                if self.is_open(a.ino).await {
                    // Open here, its size must count this client's unflushed writes, read
                    // in the order `getattr` reads them (one more round trip, only for
                    // files open here).
                    return self.getattr(a.ino).await;
                }
                self.kernel.observed(&a);
                Ok(self.as_seen_here(a, 0))
            }
            _ => Err(libc_errno::EIO),
        }
    }

    /// Attributes, with the size this client's unflushed writes would give the file.
    ///
    /// The handles' buffered ends are read before the committed attributes: a commit
    /// takes a handle's buffer and holds its lock until the servers have the data, so
    /// data is always in one of the two as seen here, and a reply never lowers the size
    /// below what this client wrote.
    pub async fn getattr(&self, ino: InodeId) -> Result<Attr, Errno> {
        // A directory this client just changed, a file it just opened: the servers sent
        // the attributes with the answer. Nothing of this client's was committed since
        // (that starts a mutation, which drops them), so its unflushed writes are all
        // still in its handles.
        // Buffered ends first, as below: a commit under way holds its handle until its
        // mutation has started, which drops what is kept.
        if let Some(attr) = self.leases.attr(ino) {
            return Ok(attr);
        }
        let buffered = self.buffered_end(ino).await;
        // A file kept under a lease: nobody else reaches it without a recall, and its
        // commits and changes update what is kept when they are queued or answered (a
        // commit under way holds its handle, so `buffered` was read after it).
        if let Some(attr) = self.leases.kept_file(ino) {
            self.kernel.observed(&attr);
            return Ok(self.as_seen_here(attr, buffered));
        }
        if !self.options.linearizable
            && let Some(attr) = self.fresh.take(ino, self.cache_epoch())
        {
            self.kernel.observed(&attr);
            return Ok(self.as_seen_here(attr, buffered));
        }
        let buffered = self.buffered_end(ino).await;
        let attr = self.committed_attr(ino).await?;
        self.kernel.observed(&attr);
        Ok(self.as_seen_here(attr, buffered))
    }

    /// A symlink's target.
    pub async fn readlink(&self, ino: InodeId) -> Result<Vec<u8>, Errno> {
        if let Some(target) = self.leases.target(ino) {
            return Ok(target);
        }
        match self.query(Query::ReadLink { ino }).await? {
            QueryReply::Bytes(b) => Ok(b),
            _ => Err(libc_errno::EIO),
        }
    }

    /// Every entry of a directory, in name order.
    pub async fn readdir(&self, ino: InodeId, creds: &Creds) -> Result<Listing, Errno> {
        let shown = |name: &[u8]| !name.starts_with(HIDDEN_PREFIX);
        if let Some(listing) = self.leases.listing(ino, shown) {
            return Ok(listing);
        }
        self.settle_namespace().await;
        let mut out = Listing::default();
        let mut after = None;
        loop {
            let q = Query::ReadDir {
                ino,
                after: after.clone(),
                limit: 5000,
                creds: creds.clone(),
            };
            match self.query(q).await? {
                QueryReply::Dir { entries, next } => {
                    for e in entries.iter().filter(|e| shown(&e.name)) {
                        out.push(&e.name, e.ino, e.kind);
                    }
                    match next {
                        Some(n) => after = Some(n),
                        None => return Ok(out),
                    }
                }
                _ => return Err(libc_errno::EIO),
            }
        }
    }
}
