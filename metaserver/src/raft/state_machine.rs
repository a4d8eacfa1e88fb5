//! The Raft state machine: applies committed entries to the namespace and cluster map in
//! redb (one transaction per batch, with the applied log id and membership, so state and
//! progress are always consistent), and builds, stores and installs snapshots.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use meridian_proto::{ClusterMap, Hlc, HlcClock, RegionId};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::type_config::alias::{
    EntryOf, LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf,
};
use openraft::vote::RaftLeaderId;
use openraft::{EntryPayload, OptionalSend};
use redb::{Database, ReadableDatabase, TableDefinition};
use tokio::sync::watch;

use super::applier::Applier;
use super::background::Lowered;
use super::snapshot_dir::{SnapshotData, SnapshotDir};
use super::{Request, Response, TypeConfig, io_err, snapshot};
use crate::cluster;
use crate::namespace::lazy_table::LazyTable;
use crate::namespace::{self, WriteTables};

const RAFT_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_state");
const APPLIED: &str = "last_applied";
const MEMBERSHIP: &str = "membership";

/// State shared between the state machine and the services on this member.
#[derive(Debug)]
pub struct Shared {
    /// This region.
    pub region: RegionId,
    /// The HLC: observes every applied stamp so a new leader stamps after all of them.
    pub clock: Mutex<HlcClock>,
    /// The current cluster map, updated as entries apply.
    pub map: watch::Sender<Arc<ClusterMap>>,
    /// The index of the last applied entry.
    pub applied: watch::Sender<u64>,
    /// The changes waiting for an early answer (on the leader).
    pub early: Arc<super::early::Early>,
    /// The clients waiting for durable notices (on a follower).
    pub notices: Arc<super::notices::Notices>,
    /// The applier, for [`Shared::catch_up_to`].
    applier: std::sync::OnceLock<std::sync::Weak<Applier>>,
}

impl Shared {
    /// The clock observes `stamps` (applied, or committed and waiting to apply).
    pub(super) fn observe(&self, stamps: impl IntoIterator<Item = Hlc>) {
        let mut clock = self.clock.lock().unwrap_or_else(|p| p.into_inner());
        for s in stamps {
            clock.observe(s, 0);
        }
    }

    /// Brings the state up to `applied` (what Raft counts applied on this member, from its
    /// metrics) if it is behind: a member that followed may still hold entries of the old
    /// leader's term queued (see `applier.rs`), and what it does as the leader reads them.
    /// Blocks while they apply.
    pub fn catch_up_to(&self, applied: u64) {
        if *self.applied.borrow() >= applied {
            return;
        }
        if let Some(applier) = self.applier.get().and_then(std::sync::Weak::upgrade)
            && let Err(e) = applier.catch_up()
        {
            tracing::error!(error = %e, "applying committed entries failed");
        }
    }
}

/// The state machine over `state.redb`.
pub struct StateMachine {
    applier: Arc<Applier>,
    snapshots: SnapshotDir,
    /// This member, once told: the entries other members lead then apply behind (see
    /// `applier.rs`), by this thread.
    behind: Option<(u64, std::thread::JoinHandle<()>)>,
}

impl Drop for StateMachine {
    fn drop(&mut self) {
        if let Some((_, thread)) = self.behind.take() {
            self.applier.stop();
            let _ = thread.join();
        }
    }
}

impl StateMachine {
    /// Opens the state database and the snapshot folder under `dir`.
    pub fn open(dir: &Path, region: RegionId) -> io::Result<(Self, Arc<Shared>)> {
        let cache = usize::try_from(crate::config::STATE_CACHE_MIB << 20).unwrap_or(usize::MAX);
        Self::open_cached(dir, region, cache)
    }

    /// [`StateMachine::open`], the state database's page cache `cache` bytes.
    pub fn open_cached(
        dir: &Path,
        region: RegionId,
        cache: usize,
    ) -> io::Result<(Self, Arc<Shared>)> {
        let db = open_state(&dir.join("state.redb"), cache)?;
        let tx = begin_persisting(&db)?;
        namespace::create_tables(&tx).map_err(io_err)?;
        crate::namespace::tables::index_tombs(&tx, false).map_err(io_err)?;
        crate::namespace::footprint::index_footprints(&tx, false).map_err(io_err)?;
        tx.open_table(RAFT_STATE).map_err(io_err)?;
        let map = cluster::read(&tx.open_table(cluster::CLUSTER).map_err(io_err)?, region)
            .map_err(io_err)?;
        tx.commit().map_err(io_err)?;
        let snapshots = SnapshotDir::open(dir.join("snapshots"))?;
        let shared = Arc::new(Shared {
            region,
            clock: Mutex::new(HlcClock::new(region)),
            map: watch::channel(Arc::new(map)).0,
            applied: watch::channel(0).0,
            early: Arc::default(),
            notices: Arc::default(),
            applier: std::sync::OnceLock::new(),
        });
        let applier = Arc::new(Applier::new(Arc::new(db), shared.clone()));
        let _ = shared.applier.set(Arc::downgrade(&applier));
        let sm = StateMachine {
            applier,
            snapshots,
            behind: None,
        };
        // What the state holds is applied: published from the start.
        if let Some(id) = sm.raft_state::<LogIdOf<TypeConfig>>(APPLIED)? {
            shared.applied.send_replace(id.index);
        }
        Ok((sm, shared))
    }

    /// Tells the state machine which member it belongs to: the entries other members lead
    /// then apply behind, a batch at a time (see `applier.rs`).
    pub fn for_member(self, id: u64) -> io::Result<Self> {
        self.behind_by(id, super::applier::LAG)
    }

    /// [`StateMachine::for_member`], the entries other members lead waiting up to `lag`.
    pub(crate) fn behind_by(mut self, id: u64, lag: std::time::Duration) -> io::Result<Self> {
        self.applier.set_lag(lag);
        let applier = self.applier.clone();
        let thread = std::thread::Builder::new()
            .name("raft-apply-behind".into())
            .spawn(move || applier.run_behind())?;
        self.behind = Some((id, thread));
        Ok(self)
    }

    /// What the log calls with the entries this member appends as their leader, once
    /// they are durable in it (or beside its sync, while a handler waits for an early
    /// answer: `early.rs`, which hears when that sync returned), to apply them ahead of
    /// their commit (see `applier.rs`).
    pub fn ahead(&self) -> super::log_store::AheadHook {
        let applier = Arc::downgrade(&self.applier);
        let asks = applier.clone();
        let tells = applier.clone();
        super::log_store::AheadHook::new(
            |e| super::applier::ahead_cost(e).is_some(),
            move |entries, durable| {
                applier
                    .upgrade()
                    .is_some_and(|a| a.apply_ahead(entries, durable))
            },
        )
        .before_sync(
            move || asks.upgrade().is_some_and(|a| a.before_sync()),
            move |ok| {
                if let Some(a) = tells.upgrade() {
                    a.shared().early.synced(ok);
                }
            },
        )
    }

    /// The state database, for reads.
    pub fn db(&self) -> Arc<Database> {
        self.applier.db().clone()
    }

    fn raft_state<T: serde::de::DeserializeOwned>(&self, key: &str) -> io::Result<Option<T>> {
        let tx = self.applier.db().begin_read().map_err(io_err)?;
        let t = tx.open_table(RAFT_STATE).map_err(io_err)?;
        match t.get(key).map_err(io_err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(io_err)?)),
            None => Ok(None),
        }
    }
}

/// Publishes what the state now holds: the applied index, and the cluster map if `map`
/// says it may have changed.
fn publish(
    db: &Database,
    shared: &Shared,
    applied: Option<&LogIdOf<TypeConfig>>,
    map: bool,
) -> io::Result<()> {
    if map {
        let tx = db.begin_read().map_err(io_err)?;
        let map = cluster::read(
            &tx.open_table(cluster::CLUSTER).map_err(io_err)?,
            shared.region,
        )
        .map_err(io_err)?;
        shared.map.send_if_modified(|m| {
            if **m != map {
                *m = Arc::new(map);
                true
            } else {
                false
            }
        });
    }
    if let Some(id) = applied {
        shared.applied.send_replace(id.index);
    }
    Ok(())
}

fn put_json<T: serde::Serialize>(
    t: &mut redb::Table<'_, &'static str, &'static [u8]>,
    key: &str,
    v: &T,
) -> io::Result<()> {
    let bytes = serde_json::to_vec(v).map_err(io_err)?;
    t.insert(key, bytes.as_slice()).map_err(io_err)?;
    Ok(())
}

/// An outcome, unless the store itself failed: then the transaction is unusable, and the
/// whole batch fails (nothing commits).
fn store_fails<T>(
    log_id: LogIdOf<TypeConfig>,
    outcome: Result<T, namespace::NsError>,
) -> io::Result<Result<T, namespace::NsError>> {
    if let Err(namespace::NsError::Store(e)) = &outcome {
        return Err(io::Error::other(format!("applying {log_id}: {e}")));
    }
    Ok(outcome)
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        let applied = self.raft_state::<LogIdOf<TypeConfig>>(APPLIED)?;
        let membership = self
            .raft_state::<StoredMembershipOf<TypeConfig>>(MEMBERSHIP)?
            .unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        let mut batch = Vec::new();
        while let Some(item) = entries.try_next().await? {
            batch.push(item);
        }
        if batch.is_empty() {
            return Ok(());
        }
        // Another member's entries (none with a caller here) apply behind.
        let followed = self.behind.as_ref().is_some_and(|(me, _)| {
            batch
                .iter()
                .all(|(e, r)| r.is_none() && e.log_id.leader_id.node_id() != me)
        });
        if followed {
            self.applier.defer(batch)
        } else {
            self.applier.apply(batch)
        }
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // The snapshot holds everything Raft counts applied here.
        if let Err(e) = self.applier.catch_up() {
            tracing::error!(error = %e, "applying committed entries before a snapshot failed");
        }
        SnapshotBuilder {
            db: self.applier.db().clone(),
            dir: self.snapshots.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        mut data: Self::SnapshotData,
    ) -> Result<(), io::Error> {
        use std::io::Seek;
        let (db, shared) = (self.applier.db(), self.applier.shared());
        // Whatever waits to apply here is older than the snapshot: it goes.
        self.applier.replace(|| {
            let tx = begin_persisting(db)?;
            data.rewind()?;
            snapshot::load(&tx, io::BufReader::new(&data))?;
            {
                let mut raft = tx.open_table(RAFT_STATE).map_err(io_err)?;
                put_json(&mut raft, APPLIED, &meta.last_log_id)?;
                put_json(&mut raft, MEMBERSHIP, &meta.last_membership)?;
            }
            tx.commit().map_err(io_err)?;
            data.rewind()?;
            self.snapshots
                .save(meta, |out| io::copy(&mut data, out).map(|_| ()))?;
            publish(db, shared, meta.last_log_id.as_ref(), true)
        })
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, Self::SnapshotData>>, io::Error> {
        Ok(self
            .snapshots
            .open_current()?
            .map(|(meta, snapshot)| SnapshotOf::<TypeConfig, SnapshotData> { meta, snapshot }))
    }
}

/// What applying entries into a write transaction produced, to commit with it.
#[derive(Default)]
pub(super) struct Applied {
    /// The entries applied, in order.
    pub(super) ids: Vec<LogIdOf<TypeConfig>>,
    /// Their responses, in order.
    pub(super) responses: Vec<Response>,
    /// The stamps they carry, which the clock observes once they commit.
    stamps: Vec<Hlc>,
    /// Whether one of them changed the cluster map.
    map_changed: bool,
}

/// Applies `batch` in one transaction (persisted with fsync if `durable`), publishes the
/// result and answers the entries' callers.
pub(super) fn apply_batch(
    db: &Database,
    shared: &Shared,
    batch: Vec<EntryResponder<TypeConfig>>,
    durable: bool,
    lowered: Option<Lowered<'_>>,
) -> io::Result<()> {
    let tx = db.begin_write().map_err(io_err)?;
    let mut applied = Applied::default();
    apply_into(
        &tx,
        shared.region,
        batch.iter().map(|(e, _)| e),
        &mut applied,
    )?;
    commit(
        db,
        shared,
        tx,
        applied,
        batch.into_iter().map(|(_, r)| r),
        durable,
        lowered,
    )
}

/// Applies `entries` into `tx`, after what `applied` holds, with the applied log id
/// (nothing commits here).
pub(super) fn apply_into<'e>(
    tx: &redb::WriteTransaction,
    region: RegionId,
    entries: impl IntoIterator<Item = &'e EntryOf<TypeConfig>>,
    applied: &mut Applied,
) -> io::Result<()> {
    let mut ns = WriteTables::open(tx);
    let mut raft = tx.open_table(RAFT_STATE).map_err(io_err)?;
    let mut clusters = LazyTable::new(tx, cluster::CLUSTER);
    let mut leases = namespace::lease::LeaseTables::open(tx);
    for entry in entries {
        let log_id = entry.log_id();
        stamps_of(entry, &mut applied.stamps);
        let response = match &entry.payload {
            EntryPayload::Blank => Response::None,
            EntryPayload::Normal(Request::Ns(cmd)) => Response::Ns(store_fails(
                log_id,
                namespace::lease::apply_command(&mut ns, &mut leases, cmd),
            )?),
            EntryPayload::Normal(Request::Remote(batch)) => {
                let started = std::time::Instant::now();
                let outcome = store_fails(log_id, namespace::apply_remote(&mut ns, region, batch))?;
                Response::Remote(outcome.map(|o| namespace::MergeOutcome {
                    apply_ms: started.elapsed().as_millis() as u64,
                    ..o
                }))
            }
            EntryPayload::Normal(Request::WriteBack(wb)) => Response::WriteBack(store_fails(
                log_id,
                namespace::lease::apply_write_back(&mut ns, &mut leases, region, wb),
            )?),
            EntryPayload::Normal(Request::ExpireLeases(dirs)) => {
                leases.expire(dirs).map_err(io::Error::other)?;
                Response::None
            }
            EntryPayload::Normal(Request::InstallImage(part)) => Response::Remote(store_fails(
                log_id,
                namespace::install_image(&mut ns, region, part, false),
            )?),
            EntryPayload::Normal(Request::InstallImageSplit(part)) => {
                Response::Remote(store_fails(
                    log_id,
                    namespace::install_image(&mut ns, region, part, true),
                )?)
            }
            EntryPayload::Normal(Request::LeaveStep(volume)) => {
                let outcome = store_fails(log_id, namespace::leave::leave_step(&mut ns, *volume))?;
                Response::Remote(outcome.map(|done| namespace::MergeOutcome {
                    applied: u64::from(done),
                    ..Default::default()
                }))
            }
            EntryPayload::Normal(Request::TrimStep(ino)) => {
                let outcome = store_fails(log_id, namespace::trim::trim_step(&mut ns, *ino))?;
                Response::Remote(outcome.map(|done| namespace::MergeOutcome {
                    applied: u64::from(done),
                    ..Default::default()
                }))
            }
            EntryPayload::Normal(Request::CopyBegin(b)) => Response::Ns(store_fails(
                log_id,
                namespace::ops::copy::begin(&mut ns, b),
            )?),
            EntryPayload::Normal(Request::CopyRows(r)) => {
                Response::Ns(store_fails(log_id, namespace::ops::copy::rows(&mut ns, r))?)
            }
            EntryPayload::Normal(Request::CopyExtents(r)) => Response::Ns(store_fails(
                log_id,
                namespace::ops::copy::extents(&mut ns, r),
            )?),
            EntryPayload::Normal(Request::CopyAbort(a)) => Response::Ns(store_fails(
                log_id,
                namespace::ops::copy::abort(&mut ns, a),
            )?),
            EntryPayload::Normal(Request::CopyRemove(a)) => Response::Ns(store_fails(
                log_id,
                namespace::ops::copy::remove(&mut ns, a),
            )?),
            EntryPayload::Normal(Request::CopyRemoveStep(root)) => {
                let outcome = store_fails(log_id, namespace::copy_drop::step(&mut ns, *root))?;
                Response::Remote(outcome.map(|done| namespace::MergeOutcome {
                    applied: u64::from(done),
                    ..Default::default()
                }))
            }
            EntryPayload::Normal(Request::Relayed(regions)) => {
                namespace::merge::set_relayed(&mut ns, regions).map_err(io::Error::other)?;
                Response::None
            }
            EntryPayload::Normal(Request::CancelBackfill(volume)) => Response::Remote(store_fails(
                log_id,
                namespace::apply::cancel_backfill(&mut ns, region, *volume),
            )?),
            EntryPayload::Normal(Request::BlocksBroughtIn(volume)) => {
                namespace::backfill::blocks_done(&mut ns, *volume).map_err(io::Error::other)?;
                Response::None
            }
            EntryPayload::Normal(Request::PeerNote(n)) => {
                namespace::links::note(&mut ns, n).map_err(io::Error::other)?;
                Response::None
            }
            EntryPayload::Normal(Request::Promise(hlc)) => {
                namespace::merge::promise(&mut ns, *hlc).map_err(io::Error::other)?;
                Response::None
            }
            EntryPayload::Normal(Request::Peers(peers)) => {
                namespace::merge::set_peers(&mut ns, peers).map_err(io::Error::other)?;
                Response::None
            }
            EntryPayload::Normal(Request::Cluster(cmd)) => {
                applied.map_changed = true;
                let map =
                    cluster::apply(clusters.open_mut().map_err(io::Error::other)?, region, cmd)
                        .map_err(io::Error::other)?;
                Response::Cluster(map.epoch)
            }
            EntryPayload::Membership(m) => {
                let stored = StoredMembershipOf::<TypeConfig>::new(Some(log_id), m.clone());
                put_json(&mut raft, MEMBERSHIP, &stored)?;
                Response::None
            }
        };
        applied.ids.push(log_id);
        applied.responses.push(response);
    }
    // Local commands may have been restamped after remote records: the clock must stamp
    // after the newest applied stamp.
    if let Some(head) = namespace::merge::horizon(ns.region_state.open().map_err(io::Error::other)?)
        .map_err(io::Error::other)?
    {
        applied.stamps.push(head);
    }
    put_json(&mut raft, APPLIED, &applied.ids.last())?;
    Ok(())
}

/// Opens (or creates) the state database at `path`, with `cache` bytes of page cache. A member stopped uncleanly (killed,
/// or its machine lost) reopens its state as of the last persisting commit, and redb
/// rebuilds its page allocator from every tree unless that commit recorded it: every
/// persisting commit here does ([`begin_persisting`]); a file left by an older version
/// is rebuilt once, which is logged.
fn open_state(path: &Path, cache: usize) -> io::Result<Database> {
    let started = std::time::Instant::now();
    let repairing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = repairing.clone();
    let db = Database::builder()
        .set_cache_size(cache)
        .set_repair_callback(move |_| {
            if !seen.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(
                    "the state database was not closed cleanly and holds no page allocator: rebuilding it from every table"
                );
            }
        })
        .create(path)
        .map_err(io_err)?;
    if repairing.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            seconds = started.elapsed().as_secs_f64(),
            "state database repaired"
        );
    }
    Ok(db)
}

/// A write transaction whose commit persists (fsync) and records redb's page allocator,
/// so that a member killed after it reopens its state at once rather than after a read
/// of the whole file (two minutes for 1,000,000 files: `open_state`).
fn begin_persisting(db: &Database) -> io::Result<redb::WriteTransaction> {
    let mut tx = db.begin_write().map_err(io_err)?;
    tx.set_quick_repair(true);
    Ok(tx)
}

/// Commits `tx` holding `applied` (by [`apply_into`]; persisted with fsync if `durable`),
/// publishes the result and answers the entries' callers (`responders`, in the same
/// order).
pub(super) fn commit(
    db: &Database,
    shared: &Shared,
    mut tx: redb::WriteTransaction,
    applied: Applied,
    responders: impl IntoIterator<Item = Option<openraft::storage::ApplyResponder<TypeConfig>>>,
    durable: bool,
    lowered: Option<Lowered<'_>>,
) -> io::Result<()> {
    let Applied {
        ids,
        responses,
        stamps,
        map_changed,
    } = applied;
    let last = ids.last().copied();
    if durable {
        tx.set_quick_repair(true);
    } else {
        tx.set_durability(redb::Durability::None).map_err(io_err)?;
    }
    tx.commit().map_err(io_err)?;
    // What follows takes locks others wait for.
    drop(lowered);
    shared.observe(stamps);
    publish(db, shared, last.as_ref(), map_changed)?;
    for (responder, response) in responders.into_iter().zip(responses) {
        if let Some(r) = responder {
            r.send(response);
        }
    }
    Ok(())
}

/// The stamps `entry` carries, which the clock observes once it applies.
pub(super) fn stamps_of(entry: &EntryOf<TypeConfig>, out: &mut Vec<Hlc>) {
    match &entry.payload {
        EntryPayload::Normal(Request::Ns(cmd)) => out.push(cmd.hlc),
        EntryPayload::Normal(Request::Remote(batch)) => {
            // The peer's frontier too: a peer idle since its last record has promised
            // later stamps, and this region's promises must pass them for both to settle
            // (a peer's clock may run ahead of this host's).
            out.extend(batch.records.iter().map(|(_, r)| r.hlc));
            out.extend(batch.frontier);
        }
        EntryPayload::Normal(Request::WriteBack(wb)) => out.extend(wb.cmds.iter().map(|c| c.hlc)),
        EntryPayload::Normal(Request::CopyBegin(b)) => out.push(b.hlc),
        EntryPayload::Normal(Request::CopyAbort(a) | Request::CopyRemove(a)) => out.push(a.hlc),
        EntryPayload::Normal(Request::Promise(hlc)) => out.push(*hlc),
        _ => {}
    }
}

/// Builds a snapshot from a consistent read of the state database.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    dir: SnapshotDir,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, SnapshotData>, io::Error> {
        let (db, dir) = (self.db.clone(), self.dir.clone());
        // Reads the whole state and writes and fsyncs a file: off the async workers.
        tokio::task::spawn_blocking(move || build(&db, &dir))
            .await
            .map_err(io_err)?
    }
}

fn build(db: &Database, dir: &SnapshotDir) -> io::Result<SnapshotOf<TypeConfig, SnapshotData>> {
    let tx = db.begin_read().map_err(io_err)?;
    // Applies commit without fsync: persist everything this read sees before the
    // snapshot lets the log be purged up to it.
    begin_persisting(db)?.commit().map_err(io_err)?;
    let (last_log_id, last_membership) = {
        let t = tx.open_table(RAFT_STATE).map_err(io_err)?;
        let get = |k: &str| -> io::Result<Option<Vec<u8>>> {
            Ok(t.get(k).map_err(io_err)?.map(|v| v.value().to_vec()))
        };
        let applied: Option<LogIdOf<TypeConfig>> = match get(APPLIED)? {
            Some(b) => serde_json::from_slice(&b).map_err(io_err)?,
            None => None,
        };
        let membership: StoredMembershipOf<TypeConfig> = match get(MEMBERSHIP)? {
            Some(b) => serde_json::from_slice(&b).map_err(io_err)?,
            None => Default::default(),
        };
        (applied, membership)
    };
    let meta = SnapshotMetaOf::<TypeConfig> {
        last_log_id,
        last_membership,
    };
    let snapshot = dir.save(&meta, |out| snapshot::dump(&tx, out))?;
    Ok(SnapshotOf::<TypeConfig, SnapshotData> { meta, snapshot })
}
