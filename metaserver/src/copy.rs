//! Copies of volumes (snapshots and clones) made by the leader in steps, and the removal
//! of copies whose maker went away. What each step writes is `namespace::ops::copy`'s;
//! docs/adr/0014-volume-copies-in-steps.md says why.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use meridian_proto::ns::{Copying, NsError, Reply, Volume};
use redb::ReadableDatabase;
use tracing::{info, warn};

use crate::error::{MetaError, store};
use crate::namespace::ops::copy::{
    self, Batch, CopyAbort, CopyBegin, CopyDone, CopyRows, Cursor, Numbering,
};
use crate::raft::{Request as RaftRequest, Response as RaftResponse};
use crate::service::MetaNode;

/// Most inodes in one step of a copy.
pub const STEP_ROWS: usize = 500;
/// Most entries, extents and xattrs in one step (a directory's entries, and a file's
/// extents, are cut across steps).
pub const STEP_ITEMS: usize = 10_000;

/// The maker of copies in this process for member `id`: another member, or this member
/// after a restart, is another maker.
fn maker(id: u64) -> u64 {
    static STARTED: OnceLock<u64> = OnceLock::new();
    let started = *STARTED.get_or_init(meridian_proto::physical_ns);
    let h = blake3::hash(&[id.to_le_bytes(), started.to_le_bytes()].concat());
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// What a copy came to: the namespace's answer, or the servers' failure (whether the
/// member stopped leading, and why).
type Outcome = Result<Result<Reply, NsError>, (bool, String)>;

/// A copy being made in this process, by (maker, name): what it copies, and its outcome
/// for every request waiting on it.
struct Making {
    source: String,
    read_only: bool,
    outcome: Shared<BoxFuture<'static, Outcome>>,
}

/// A task's place in [`making`], given up when the task ends (or panics).
struct Entry((u64, String));

impl Drop for Entry {
    fn drop(&mut self) {
        lock(making()).remove(&self.0);
    }
}

fn making() -> &'static Mutex<HashMap<(u64, String), Making>> {
    static MAKING: OnceLock<Mutex<HashMap<(u64, String), Making>>> = OnceLock::new();
    MAKING.get_or_init(Default::default)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether `copying` has a maker at work: this member's, in this process.
fn has_maker(node: &MetaNode, name: &str, copying: &Copying) -> bool {
    let me = maker(node.id);
    copying.by == me && lock(making()).contains_key(&(me, name.to_string()))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NsError> + Send + 'static,
) -> Result<Result<T, NsError>, MetaError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| MetaError::Store(format!("copy worker: {e}")))
}

/// Copies volume `source` into a new volume `name` (a snapshot when `read_only`), as the
/// source is at one point in time, in steps ([`STEP_ROWS`]). On the leader. The copy runs
/// on its own: a request that goes away (a client's deadline) leaves it going, and a
/// request for the same copy meanwhile waits for the same outcome. The outer error is
/// the servers' (this member stopped leading, the store failed); the inner one the
/// namespace's answer.
pub async fn copy_volume(
    node: Arc<MetaNode>,
    source: &str,
    name: &str,
    read_only: bool,
) -> Result<Result<Reply, NsError>, MetaError> {
    let key = (maker(node.id), name.to_string());
    let outcome = {
        let mut all = lock(making());
        match all.get(&key) {
            Some(m) if m.source == source && m.read_only == read_only => m.outcome.clone(),
            Some(_) => return Ok(Err(NsError::Exists(format!("volume {name}")))),
            None => {
                let (task_node, task_source, task_key) =
                    (node.clone(), source.to_string(), key.clone());
                let task = tokio::spawn(async move {
                    // Gone with the task, however it ends.
                    let _entry = Entry(task_key.clone());
                    task_node
                        .make_copy(&task_source, &task_key.1, read_only)
                        .await
                        .map_err(|e| match e {
                            MetaError::Unavailable(why) => (true, why),
                            other => (false, other.to_string()),
                        })
                });
                let outcome = async move {
                    task.await
                        .unwrap_or_else(|e| Err((false, format!("copy task: {e}"))))
                }
                .boxed()
                .shared();
                all.insert(
                    key,
                    Making {
                        source: source.to_string(),
                        read_only,
                        outcome: outcome.clone(),
                    },
                );
                outcome
            }
        }
    };
    outcome.await.map_err(|(unavailable, why)| {
        if unavailable {
            MetaError::Unavailable(why)
        } else {
            MetaError::Store(why)
        }
    })
}

/// Deletes volume `name` if it is a copy still being made, in steps (`copy_drop.rs`), as a
/// copy whose maker went away is removed: its maker's next step finds it gone and stops.
/// On the leader. `None` when it is no such copy (or it finished meanwhile), or the group
/// does not read the steps' requests: the deletion then goes as any other, in one entry.
/// A retry of `request` (the client's, when it has one) is answered as the first time
/// was: it finds no copy, and the deletion's path finds the outcome kept.
/// The outer error is the servers', the inner one the namespace's answer.
pub async fn delete_unfinished(
    node: &MetaNode,
    name: &str,
    request: Option<(u64, u64)>,
) -> Result<Option<Result<Reply, NsError>>, MetaError> {
    let copy = {
        let tx = node.db.begin_read().map_err(store)?;
        crate::namespace::NsReader::new(&tx).volume(name).ok()
    };
    let Some(copy) = copy.filter(|v| v.copying.is_some()) else {
        return Ok(None);
    };
    if !node.group_reads(1).await {
        return Ok(None);
    }
    let abort = CopyAbort {
        request,
        ..node.abort_now(copy.id)
    };
    match node
        .propose_internal(RaftRequest::CopyRemove(abort))
        .await?
    {
        RaftResponse::Ns(Ok(reply)) => {
            info!(copy = name, "deleted a copy still being made");
            Ok(Some(Ok(reply)))
        }
        // Finished meanwhile: deleted as any volume.
        RaftResponse::Ns(Err(NsError::Invalid(_))) => Ok(None),
        RaftResponse::Ns(Err(e)) => Ok(Some(Err(e))),
        other => Err(MetaError::Store(format!(
            "a copy's removal answered oddly: {other:?}"
        ))),
    }
}

impl MetaNode {
    /// The removal of copy `volume`, stamped now, for no client's request.
    pub(crate) fn abort_now(&self, volume: u32) -> CopyAbort {
        let (hlc, now) = self.stamp_now();
        CopyAbort {
            volume,
            hlc,
            now,
            request: None,
        }
    }

    async fn make_copy(
        &self,
        source: &str,
        name: &str,
        read_only: bool,
    ) -> Result<Result<Reply, NsError>, MetaError> {
        let me = maker(self.id);
        let (hlc, now) = self.stamp_now();
        let begin = CopyBegin {
            source: source.to_string(),
            name: name.to_string(),
            read_only,
            hlc,
            now,
            by: me,
        };
        let mut began = self
            .propose_internal(RaftRequest::CopyBegin(begin.clone()))
            .await?;
        if let RaftResponse::Ns(Err(NsError::Exists(_))) = &began
            && self.remove_orphan(name, source).await?
        {
            // The same copy asked again after its leader went away (a client retrying):
            // the unfinished one is removed, and this one begins afresh.
            began = self.propose_internal(RaftRequest::CopyBegin(begin)).await?;
        }
        let vol = match began {
            RaftResponse::Ns(Ok(Reply::Volume(v))) => v,
            RaftResponse::Ns(Err(e)) => return Ok(Err(e)),
            other => return Err(MetaError::Store(format!("a copy began oddly: {other:?}"))),
        };
        info!(source, copy = name, "copying a volume");
        let made = self.copy_rows(source, &vol, now).await;
        if !matches!(made, Ok(Ok(_))) {
            let abort = self.abort_now(vol.id);
            if let Err(e) = self.propose_internal(self.removal(abort).await).await {
                // The leader that follows removes it.
                warn!(copy = name, error = %e, "could not remove an unfinished copy");
            }
        }
        made
    }

    /// The request that removes an unfinished copy: in steps (`CopyRemove`) once every
    /// member reads it, else at once (`CopyAbort`, as a group with members of an older
    /// version must: they could not read the steps' requests).
    async fn removal(&self, abort: CopyAbort) -> RaftRequest {
        if self.group_reads(1).await {
            RaftRequest::CopyRemove(abort)
        } else {
            RaftRequest::CopyAbort(abort)
        }
    }

    /// Removes volume `name` if it is an unfinished copy of `source` (its maker went away:
    /// this task makes it now); whether it did.
    async fn remove_orphan(&self, name: &str, source: &str) -> Result<bool, MetaError> {
        let tx = self.db.begin_read().map_err(store)?;
        let orphan = crate::namespace::NsReader::new(&tx)
            .volumes()
            .map_err(|e| MetaError::Store(e.to_string()))?
            .into_iter()
            // Whoever made it: this task makes this copy in this process now (its own
            // began as Exists), and no other member leads.
            .find(|v| v.name == name && v.copying.as_ref().is_some_and(|c| c.source == source));
        drop(tx);
        let Some(v) = orphan else {
            return Ok(false);
        };
        let abort = self.abort_now(v.id);
        match self.propose_internal(self.removal(abort).await).await? {
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

    /// Proposes one step of the copy `vol`; the volume as it then is.
    async fn copy_step(&self, step: CopyRows) -> Result<Result<Volume, NsError>, MetaError> {
        self.copy_propose(RaftRequest::CopyRows(step)).await
    }

    /// Proposes a step of a copy (rows or extents); the volume as it then is.
    async fn copy_propose(&self, step: RaftRequest) -> Result<Result<Volume, NsError>, MetaError> {
        match self.propose_internal(step).await? {
            RaftResponse::Ns(Ok(Reply::Volume(v))) => Ok(Ok(v)),
            RaftResponse::Ns(Err(e)) => Ok(Err(e)),
            other => Err(MetaError::Store(format!("a copy step answered {other:?}"))),
        }
    }

    /// The copy after its beginning: the read (the point in time, taken once the copy
    /// holds GC), the numbers it needs, the rows, and for a source living in several
    /// regions the blocks this region may not hold yet.
    async fn copy_rows(
        &self,
        source: &str,
        vol: &Volume,
        now: meridian_proto::ns::Timespec,
    ) -> Result<Result<Reply, NsError>, MetaError> {
        macro_rules! ns {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(e) => return Ok(Err(e)),
                }
            };
        }
        let tx = Arc::new(self.db.begin_read().map_err(store)?);
        let region = self.shared.region;
        let plan = {
            let (tx, source) = (tx.clone(), source.to_string());
            Arc::new(ns!(
                blocking(move || copy::plan(&tx, &source, region)).await?
            ))
        };
        let reserve = CopyRows {
            volume: vol.id,
            reserve: plan.order.len() as u64,
            rows: Vec::new(),
            done: None,
        };
        let vol = Arc::new(ns!(self.copy_step(reserve).await?));
        let base = vol.copying.as_ref().map_or(0, |c| c.base);
        let numbering = Arc::new(ns!(Numbering::new(&plan, &vol, base)));
        let elsewhere = plan.source.policy.regions.len() > 1;
        // A group with a member older than `CopyExtents` gets every file's extents in
        // its row, as that member copies them: it could not read the entry carrying the
        // rest, and its region's log would stop there.
        let limits = copy::Limits {
            whole_files: !self.group_reads(1).await,
            ..copy::Limits::new(STEP_ROWS, STEP_ITEMS)
        };
        if limits.whole_files {
            info!(
                source,
                copy = %vol.name,
                "copying each file's extents in its row: a member does not read them in steps"
            );
        }
        let mut blocks = HashSet::new();
        let mut cur = Cursor::default();
        let mut steps = 0u64;
        while !plan.done(&cur) {
            let (batch, next) = {
                let (tx, plan, numbering, vol) =
                    (tx.clone(), plan.clone(), numbering.clone(), vol.clone());
                ns!(blocking(move || {
                    copy::read_rows(&tx, &plan, &vol, &numbering, cur, limits, now)
                })
                .await?)
            };
            cur = next;
            let step = match batch {
                Batch::Rows(rows) if limits.whole_files && whole_too_large(&rows) => {
                    // Not worth retrying: refused until the members are upgraded.
                    return Ok(Err(NsError::Invalid(format!(
                        "{source} has a file of more extents than one step of a copy holds \
                         among members of an older version: upgrade them first"
                    ))));
                }
                Batch::Rows(rows) => {
                    if elsewhere {
                        let extents = rows.iter().flat_map(|r| r.extents.iter());
                        blocks.extend(extents.map(|e| e.block));
                    }
                    RaftRequest::CopyRows(CopyRows {
                        volume: vol.id,
                        reserve: 0,
                        rows,
                        done: None,
                    })
                }
                Batch::Extents(more) => {
                    if elsewhere {
                        blocks.extend(more.extents.iter().map(|e| e.block));
                    }
                    RaftRequest::CopyExtents(more)
                }
            };
            ns!(self.copy_propose(step).await?);
            steps += 1;
            if !self.copy_pause.is_zero() {
                tokio::time::sleep(self.copy_pause).await;
            }
        }
        drop(tx);
        if !blocks.is_empty() {
            // Another region's copy may be all there is of some: the copy's references
            // protect only this region's.
            let blocks: Vec<_> = blocks.into_iter().collect();
            crate::backfill::fetch_blocks(self, plan.source.id, &blocks, || {})
                .await
                .map_err(|e| {
                    MetaError::Unavailable(format!(
                        "a block of {source} could not be brought into this region for its copy: {e}"
                    ))
                })?;
        }
        let last = CopyRows {
            volume: vol.id,
            reserve: 0,
            rows: Vec::new(),
            done: Some(CopyDone {
                used_bytes: plan.source.used_bytes,
                used_inodes: plan.source.used_inodes,
            }),
        };
        let done = ns!(self.copy_step(last).await?);
        info!(source, copy = %done.name, inodes = plan.order.len(), steps, "volume copied");
        Ok(Ok(Reply::Volume(done)))
    }
}

/// The most bytes of JSON in a step of a copy among members of an older version (each
/// file's extents in its row): the entry must stay within the 64 MiB a member takes in
/// one message.
const WHOLE_STEP_MAX: usize = 48 << 20;

/// Whether a step of `rows` is more than [`WHOLE_STEP_MAX`].
fn whole_too_large(rows: &[copy::CopyRow]) -> bool {
    let extents: usize = rows.iter().map(|r| r.extents.len()).sum();
    // An extent is about 200 bytes of JSON: count only when it may matter.
    extents > WHOLE_STEP_MAX / 400
        && serde_json::to_vec(rows).map_or(true, |json| json.len() > WHOLE_STEP_MAX)
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
            let abort = node.abort_now(volume);
            match node.propose_internal(node.removal(abort).await).await {
                Ok(RaftResponse::Ns(Ok(_))) => {
                    info!(copy = %name, "removed a copy its maker left unfinished")
                }
                Ok(other) => warn!(copy = %name, ?other, "removing an unfinished copy"),
                Err(e) => warn!(copy = %name, error = %e, "removing an unfinished copy"),
            }
        }
    }
}
