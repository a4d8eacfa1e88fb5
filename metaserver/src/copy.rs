//! Copies of volumes (snapshots and clones) made by the leader in steps, and the removal
//! of copies whose maker went away. What each step writes is `namespace::ops::copy`'s;
//! docs/adr/0014-volume-copies-in-steps.md says why.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use meridian_proto::ns::{Copying, NsError, Reply};
use redb::ReadableDatabase;
use tracing::{info, warn};

use crate::error::{MetaError, store};
use crate::namespace::ops::copy::{
    self, CopyAbort, CopyBegin, CopyDone, CopyRows, Numbering, Plan,
};
use crate::raft::{Request as RaftRequest, Response as RaftResponse};
use crate::service::MetaNode;

/// Most inodes in one step of a copy.
pub const STEP_ROWS: usize = 500;
/// Most entries, extents and xattrs in one step (a directory's entries go in one step,
/// however many).
pub const STEP_ITEMS: usize = 10_000;

/// The maker of copies in this process for member `id`: another member, or this member
/// after a restart, is another maker.
fn maker(id: u64) -> u64 {
    static STARTED: OnceLock<u64> = OnceLock::new();
    let started = *STARTED.get_or_init(meridian_proto::physical_ns);
    blake3::hash(&[id.to_le_bytes(), started.to_le_bytes()].concat())
        .as_bytes()
        .iter()
        .take(8)
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

/// Copies being made in this process: (maker, name).
fn making() -> &'static Mutex<HashSet<(u64, String)>> {
    static MAKING: OnceLock<Mutex<HashSet<(u64, String)>>> = OnceLock::new();
    MAKING.get_or_init(Default::default)
}

/// A copy this process is making, from before it begins until it ends either way.
struct Making((u64, String));

impl Making {
    fn start(maker: u64, name: &str) -> Self {
        let key = (maker, name.to_string());
        lock(making()).insert(key.clone());
        Making(key)
    }
}

impl Drop for Making {
    fn drop(&mut self) {
        lock(making()).remove(&self.0);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether `copying` has a maker at work: this member's, in this process.
fn has_maker(node: &MetaNode, name: &str, copying: &Copying) -> bool {
    let me = maker(node.id);
    copying.by == me && lock(making()).contains(&(me, name.to_string()))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NsError> + Send + 'static,
) -> Result<Result<T, NsError>, MetaError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| MetaError::Store(format!("copy worker: {e}")))
}

impl MetaNode {
    /// Copies volume `source` into a new volume `name` (a snapshot when `read_only`), as
    /// the source is at one point in time (the read this starts with), in steps of at
    /// most [`STEP_ROWS`] inodes. On the leader. The outer error is the servers' (this
    /// member stopped leading, the store failed); the inner one the namespace's answer.
    pub async fn copy_volume(
        &self,
        source: &str,
        name: &str,
        read_only: bool,
    ) -> Result<Result<Reply, NsError>, MetaError> {
        let me = maker(self.id);
        let _making = Making::start(me, name);
        let tx = Arc::new(self.db.begin_read().map_err(store)?);
        let region = self.shared.region;
        let plan = {
            let (tx, source) = (tx.clone(), source.to_string());
            match blocking(move || copy::plan(&tx, &source, region)).await? {
                Ok(p) => Arc::new(p),
                Err(e) => return Ok(Err(e)),
            }
        };
        let (hlc, now) = self.stamp_now();
        let begin = CopyBegin {
            source: source.to_string(),
            name: name.to_string(),
            read_only,
            inodes: plan.order.len() as u64,
            hlc,
            now,
            by: me,
        };
        let mut vol = self
            .propose_internal(RaftRequest::CopyBegin(begin.clone()))
            .await?;
        if let RaftResponse::Ns(Err(NsError::Exists(_))) = &vol
            && self.remove_orphan(name, source).await?
        {
            // The same copy asked again after its leader went away (a client retrying):
            // the unfinished one is removed, and this one begins afresh.
            vol = self.propose_internal(RaftRequest::CopyBegin(begin)).await?;
        }
        let vol = match vol {
            RaftResponse::Ns(Ok(Reply::Volume(v))) => v,
            RaftResponse::Ns(Err(e)) => return Ok(Err(e)),
            other => return Err(MetaError::Store(format!("a copy began oddly: {other:?}"))),
        };
        info!(
            source,
            copy = name,
            inodes = plan.order.len(),
            "copying a volume"
        );
        let made = self.copy_rows(tx, plan, &vol, now).await;
        if !matches!(made, Ok(Ok(_))) {
            let (hlc, now) = self.stamp_now();
            let abort = CopyAbort {
                volume: vol.id,
                hlc,
                now,
            };
            if let Err(e) = self.propose_internal(RaftRequest::CopyAbort(abort)).await {
                // The leader that follows removes it.
                warn!(copy = name, error = %e, "could not remove an unfinished copy");
            }
        }
        made
    }

    /// Removes volume `name` if it is an unfinished copy of `source` with no maker at
    /// work; whether it did.
    async fn remove_orphan(&self, name: &str, source: &str) -> Result<bool, MetaError> {
        let tx = self.db.begin_read().map_err(store)?;
        let orphan = crate::namespace::NsReader::new(&tx)
            .volumes()
            .map_err(|e| MetaError::Store(e.to_string()))?
            .into_iter()
            .find(|v| {
                v.name == name
                    && v.copying
                        .as_ref()
                        .is_some_and(|c| c.source == source && !has_maker(self, name, c))
            });
        drop(tx);
        let Some(v) = orphan else {
            return Ok(false);
        };
        let (hlc, now) = self.stamp_now();
        let abort = CopyAbort {
            volume: v.id,
            hlc,
            now,
        };
        match self.propose_internal(RaftRequest::CopyAbort(abort)).await? {
            RaftResponse::Ns(Ok(_)) => {
                info!(
                    copy = name,
                    "removed a copy its maker left unfinished, to make it again"
                );
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn copy_rows(
        &self,
        tx: Arc<redb::ReadTransaction>,
        plan: Arc<Plan>,
        vol: &meridian_proto::ns::Volume,
        now: meridian_proto::ns::Timespec,
    ) -> Result<Result<Reply, NsError>, MetaError> {
        let Some(base) = vol.copying.as_ref().map(|c| c.base) else {
            return Err(MetaError::Store("a copy began without its numbers".into()));
        };
        let numbering = match Numbering::new(&plan, vol, base) {
            Ok(n) => Arc::new(n),
            Err(e) => return Ok(Err(e)),
        };
        let mut next = 0;
        loop {
            let (rows, after) = {
                let (tx, plan, numbering, vol) =
                    (tx.clone(), plan.clone(), numbering.clone(), vol.clone());
                match blocking(move || {
                    copy::read_rows(
                        &tx, &plan, &vol, &numbering, next, STEP_ROWS, STEP_ITEMS, now,
                    )
                })
                .await?
                {
                    Ok(r) => r,
                    Err(e) => return Ok(Err(e)),
                }
            };
            next = after;
            let done = (next >= plan.order.len()).then(|| CopyDone {
                used_bytes: plan.source.used_bytes,
                used_inodes: plan.source.used_inodes,
            });
            let last = done.is_some();
            let step = CopyRows {
                volume: vol.id,
                rows,
                done,
            };
            match self.propose_internal(RaftRequest::CopyRows(step)).await? {
                RaftResponse::Ns(Ok(reply)) if last => return Ok(Ok(reply)),
                RaftResponse::Ns(Ok(_)) => {
                    if !self.copy_pause.is_zero() {
                        tokio::time::sleep(self.copy_pause).await;
                    }
                }
                RaftResponse::Ns(Err(e)) => return Ok(Err(e)),
                other => return Err(MetaError::Store(format!("a copy step answered {other:?}"))),
            }
        }
    }
}

/// While this member leads, removes every copy with no maker at work (its leader changed,
/// or its process restarted): nothing could finish it.
pub async fn sweep_loop(node: Arc<MetaNode>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if !node.is_leader() {
            continue;
        }
        let orphans: Vec<(u32, String)> = node
            .db
            .begin_read()
            .ok()
            .and_then(|tx| crate::namespace::NsReader::new(&tx).volumes().ok())
            .unwrap_or_default()
            .into_iter()
            .filter(|v| {
                v.copying
                    .as_ref()
                    .is_some_and(|c| !has_maker(&node, &v.name, c))
            })
            .map(|v| (v.id, v.name))
            .collect();
        for (volume, name) in orphans {
            let (hlc, now) = node.stamp_now();
            let abort = CopyAbort { volume, hlc, now };
            match node.propose_internal(RaftRequest::CopyAbort(abort)).await {
                Ok(RaftResponse::Ns(Ok(_))) => {
                    info!(copy = %name, "removed a copy its maker left unfinished")
                }
                Ok(other) => warn!(copy = %name, ?other, "removing an unfinished copy"),
                Err(e) => warn!(copy = %name, error = %e, "removing an unfinished copy"),
            }
        }
    }
}
