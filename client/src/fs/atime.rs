//! atime, as Linux's `relatime` decides it and its `lazytime` writes it: the reads of a
//! moment are gathered into one metadata write, instead of one Raft round per file read.
//! An atime not yet written when the client dies is lost, as `lazytime` loses it on a
//! crash; nothing else depends on it.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use meridian_proto::InodeId;
use meridian_proto::ns::{ACCESSED_BATCH_MAX, Op};
use tracing::debug;

use super::FileSystem;

/// How long reads gather before their atimes are written.
const GATHER: Duration = Duration::from_secs(1);

/// Files whose atime is due, and whether a write of them is on its way.
#[derive(Default)]
pub(super) struct Pending {
    inner: Mutex<(HashSet<InodeId>, bool)>,
}

impl FileSystem {
    /// A read of `ino` found its atime due: it is written with the others of the moment.
    pub(super) fn accessed(&self, ino: InodeId) {
        let start = {
            let mut p = self.atimes.inner.lock().unwrap_or_else(|p| p.into_inner());
            p.0.insert(ino);
            !std::mem::replace(&mut p.1, true)
        };
        if start && let Some(me) = self.me.upgrade() {
            tokio::spawn(async move {
                tokio::time::sleep(GATHER).await;
                me.write_atimes().await;
            });
        }
    }

    /// Writes the atimes gathered, in batches of at most [`ACCESSED_BATCH_MAX`]; the
    /// kernel's cached attributes of those files are dropped (this client's own change
    /// reaches it through no reply).
    async fn write_atimes(&self) {
        loop {
            let batch: Vec<InodeId> = {
                let mut p = self.atimes.inner.lock().unwrap_or_else(|p| p.into_inner());
                let batch: Vec<InodeId> = p.0.iter().copied().take(ACCESSED_BATCH_MAX).collect();
                for ino in &batch {
                    p.0.remove(ino);
                }
                if p.0.is_empty() {
                    // Reads from now on start another gathering.
                    p.1 = false;
                }
                batch
            };
            if batch.is_empty() {
                return;
            }
            let full = batch.len() == ACCESSED_BATCH_MAX;
            // Files made here under a lease it still holds: queued with its other changes,
            // and still known here (a lookup of them stays local).
            let rest = match self.may_answer_alone() {
                true => self.leases.accessed_alone(&self.meta, &batch),
                false => batch.clone(),
            };
            let sent = match rest.is_empty() {
                true => Ok(()),
                false => self
                    .mutate(Op::AccessedBatch { inos: rest })
                    .await
                    .map(|_| ()),
            };
            match sent {
                Ok(()) => {
                    for ino in batch {
                        self.kernel.drop_attrs(ino);
                    }
                }
                Err(e) => debug!(
                    errno = e,
                    "atime write failed; those atimes stay as they were"
                ),
            }
            if !full {
                return;
            }
        }
    }
}
