//! The file layer's requests to the metaservers: every mutation and query goes through
//! here, after what the mount answered alone under its leases (`lease.rs`), and updates
//! what the mount keeps from the answers (leases, known directories, kept attributes).

use meridian_proto::InodeId;
use meridian_proto::ns::{Attr, Extent, FileKind, Op, Query, QueryReply, Reply, libc_errno};

use super::{Errno, FileSystem, errno};
use crate::meta::MetaError;

impl FileSystem {
    pub(super) async fn mutate(&self, op: Op) -> Result<Reply, Errno> {
        // After what this mount answered alone: the servers see its changes in order. A
        // lease this change would make stale here is given back first.
        let in_the_way = self.leases.in_the_way(&op);
        if !in_the_way.is_empty() {
            tracing::debug!(?op, "a change gives leases back first");
            self.known.forget(&self.leases.give_back(&in_the_way));
        }
        self.settle_namespace().await;
        self.leases.committing(&op);
        let lease = matches!(
            op,
            Op::Mknod {
                kind: FileKind::Dir,
                ..
            }
        ) && self.leases.wanted();
        let epoch = self.cache_epoch();
        let generation = self.fresh.starting();
        let absent = match &op {
            Op::Mknod { parent, name, .. } => self.known.absent(*parent, name, epoch),
            _ => false,
        };
        let started = self.known.starting(epoch);
        self.new_files.starting(&op);
        let result = self.meta.mutate_leased(&op, lease).await;
        match &result {
            Ok((reply, dirs)) => {
                self.leases.applied(&op, reply, dirs, lease);
                if self.may_answer_alone() {
                    self.leases.count_change(&op);
                }
            }
            // Applied or not, nobody knows: what the mount knows of the directories
            // changed is void.
            Err(e) if !matches!(e, MetaError::Ns(_)) => {
                self.known.forget(&self.leases.lost(&op.dirs_changed()));
            }
            Err(_) => {}
        }
        self.leases
            .observed(&op, result.as_ref().ok().map(|(reply, _)| reply));
        let reply = result.as_ref().ok().map(|(reply, _)| reply);
        let now = self.cache_epoch();
        let alone = self.known.ended(started, &op, reply, now);
        self.new_files
            .ended(&op, reply, absent && alone, epoch, now);
        if let Ok((_, dirs)) = &result {
            self.fresh.answered(generation, epoch, dirs.clone());
        }
        self.fresh.ended();
        result.map(|(reply, _)| reply).map_err(errno)
    }

    /// A mutation of a file's content or attributes (no directory's entries): sent with
    /// the changes this mount answered alone when some are waiting, in the same batch
    /// (a file created alone and its first commit go as one Raft entry).
    pub(super) async fn mutate_after_queue(&self, op: Op) -> Result<Reply, Errno> {
        debug_assert!(op.dirs_changed().is_empty());
        let Some(outcome) = self.leases.submit(&self.meta, op.clone()) else {
            return self.mutate(op).await;
        };
        // Before its outcome is observed below (`mutate` counts its own).
        self.leases.committing(&op);
        // As `mutate`: attributes kept for GETATTR are void while it runs.
        self.fresh.starting();
        // Sent from here if no batch is out (else after the one out).
        match self.send_queue() {
            Some(send) => self.leases.send_here(send).await,
            None => self.leases.settle().await,
        }
        let outcome = outcome.await;
        self.fresh.ended();
        self.leases
            .observed(&op, outcome.as_ref().ok().and_then(|o| o.as_ref().ok()));
        match outcome {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(e.errno()),
            Err(_) => Err(libc_errno::EIO),
        }
    }

    pub(super) async fn query(&self, q: Query) -> Result<QueryReply, Errno> {
        // What this mount answered alone goes first, so the servers' answer includes it;
        // except a lookup in a directory still leased here of an entry whose create the
        // servers already have (the rest of such lookups is answered here, see `lookup`).
        let leased_lookup = matches!(&q, Query::Lookup { parent, name, .. }
            if self.leases.lookup_is_current(*parent, name));
        // Nor a read of an inode's attributes that nothing queued changes (a database's
        // fstat while its journal's unlink is queued).
        let untouched = matches!(&q, Query::GetAttr { ino } if !self.leases.touches(*ino));
        if !leased_lookup && !untouched {
            self.settle_namespace().await;
        }
        self.meta.query(&q, false).await.map_err(errno)
    }

    /// Committed attributes of `ino` (linearizable).
    pub(super) async fn committed_attr(&self, ino: InodeId) -> Result<Attr, Errno> {
        match self.query(Query::GetAttr { ino }).await? {
            QueryReply::Attr(a) => Ok(a),
            _ => Err(libc_errno::EIO),
        }
    }

    /// Committed extents of `ino` overlapping `[offset, offset + len)`: the first `limit`
    /// (all: `None`).
    pub(super) async fn committed_extents(
        &self,
        ino: InodeId,
        offset: u64,
        len: u64,
        limit: Option<u32>,
    ) -> Result<Vec<Extent>, Errno> {
        let asked = Query::Extents {
            ino,
            offset,
            len,
            limit,
        };
        match self.query(asked).await? {
            QueryReply::Extents(e) => Ok(e),
            _ => Err(libc_errno::EIO),
        }
    }
}
