//! Following the volume's feed of changes, so the kernel may cache entries and attributes
//! for longer than it could without knowing when another client changed them.
//!
//! The kernel gets a long time-to-live ([`TTL_FED`]) only while the feed answers; without
//! it, the short one ([`TTL_ALONE`]) bounds how stale a stat or a lookup can be, as before.
//! Close-to-open does not depend on any of this: an open always asks the servers.
//!
//! A reply races the feed: the servers may read an entry, another client change it, and
//! the feed drop it from the kernel before the reply puts the old one in. So a reply takes
//! the count of changes dropped before it asked the servers, and if it moved by the time
//! the reply is sent, the reply gets the short time; the count moves, and the reply is
//! sent, under a lock, so a reply is either sent before a drop or knows about it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use meridian_proto::ns::Touch;
use tracing::{debug, warn};

use super::FileSystem;

/// How long the kernel may cache entries and attributes while the feed answers, unless
/// the mount says otherwise ([`super::FsOptions::cache_ttl`]).
pub const TTL_FED: Duration = Duration::from_secs(10);
/// How long without the feed.
pub const TTL_ALONE: Duration = Duration::from_secs(1);
/// How long one poll of the feed waits for changes.
const FEED_WAIT: Duration = Duration::from_secs(5);
/// The feed counts as answering for this long after its last answer.
const FEED_FRESH: Duration = Duration::from_secs(8);

/// The feed's state, as replies need it.
#[derive(Default)]
pub(super) struct FeedState {
    /// Drops done because of the feed (a reply compares it before and after).
    drops: std::sync::atomic::AtomicU64,
    /// Held to move `drops`, and by a reply to check it and send itself.
    gate: RwLock<()>,
    /// When the feed last answered.
    answered: std::sync::Mutex<Option<Instant>>,
}

impl FeedState {
    pub(super) fn live(&self) -> bool {
        self.answered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() < FEED_FRESH)
    }
}

impl FileSystem {
    /// The count of feed drops so far: take it before asking the servers for what a reply
    /// will carry, and give it to [`FileSystem::reply_cached`].
    pub fn cache_epoch(&self) -> u64 {
        self.feed.drops.load(Ordering::Acquire)
    }

    /// Sends a reply the kernel caches, with the time to live it may have: `send` gets it.
    pub fn reply_cached<R>(&self, epoch: u64, send: impl FnOnce(Duration) -> R) -> R {
        let _gate = self.feed.gate.read().unwrap_or_else(|p| p.into_inner());
        let ttl = if self.options.linearizable {
            // Nothing cached: every read asks.
            Duration::ZERO
        } else if self.feed.live() && self.feed.drops.load(Ordering::Acquire) == epoch {
            self.options.cache_ttl.max(TTL_ALONE)
        } else {
            TTL_ALONE
        };
        send(ttl)
    }

    /// Follows the volume's feed of changes until the file system is dropped: what other
    /// clients change is dropped from the kernel's caches.
    pub async fn follow_changes(self: Arc<Self>) {
        let me = Arc::downgrade(&self);
        drop(self);
        let mut from = 0;
        loop {
            let Some(fs) = me.upgrade() else { return };
            match fs.meta.watch(fs.volume.id, from, FEED_WAIT).await {
                Ok((touched, next, gap, recall)) => {
                    if !recall.is_empty() {
                        debug!(?recall, "leases recalled");
                        // Another client waits for these: what was answered here goes
                        // first, then the leases.
                        fs.known.forget(&fs.leases.give_back(&recall));
                    }
                    if gap {
                        warn!(
                            "changes were trimmed before this mount saw them: entries cached \
                             now may be stale for up to {TTL_FED:?}"
                        );
                    }
                    let own = fs.meta.client_id();
                    let touches: Vec<Touch> = touched
                        .changes
                        .into_iter()
                        .filter(|(client, _)| *client != Some(own))
                        .flat_map(|(_, t)| t)
                        .collect();
                    // A gap, or the first answer (which starts from "now"), may hide
                    // changes: what the mount answers alone from what it knew is void, as
                    // after any drop.
                    if !touches.is_empty() || gap || from == 0 {
                        let _gate = fs.feed.gate.write().unwrap_or_else(|p| p.into_inner());
                        fs.feed.drops.fetch_add(1, Ordering::AcqRel);
                    }
                    // Another client changed a directory leased here: the lease is gone
                    // (expired while this mount did not hear the recall).
                    let lost: Vec<_> = touches
                        .iter()
                        .filter_map(|t| match t {
                            Touch::Entry { parent, .. } => Some(*parent),
                            _ => None,
                        })
                        .collect();
                    if !lost.is_empty() {
                        fs.known.forget(&fs.leases.lost(&lost));
                    }
                    // The same for a file whose attributes or extents are kept here.
                    let files: Vec<_> = touches
                        .iter()
                        .filter_map(|t| match t {
                            Touch::Attrs(ino) | Touch::Content(ino) => Some(*ino),
                            Touch::Entry { .. } => None,
                        })
                        .collect();
                    if gap {
                        fs.leases.changed_elsewhere(None);
                    } else if !files.is_empty() {
                        fs.leases.changed_elsewhere(Some(&files));
                    }
                    if !touches.is_empty() {
                        fs.kernel.drop_touched(touches).await;
                    }
                    *fs.feed.answered.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(Instant::now());
                    from = next;
                }
                Err(e) => {
                    *fs.feed.answered.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    // Recalls cannot reach this mount: it answers nothing alone until the
                    // feed is back.
                    fs.known.forget(&fs.leases.give_up());
                    debug!(error = %e, "change feed unavailable; retrying");
                    drop(fs);
                    // A pause before retrying a failed poll (the call itself already
                    // tried every member).
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}
