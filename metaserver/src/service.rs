//! The MetaService: namespace mutations and queries, the chunkserver registry, and
//! administration of the Raft group. Any member answers; writes (and linearizable reads)
//! that reach a follower are forwarded once to the leader.
//!
//! This file holds the node, what its calls share (proposing, forwarding, reading) and
//! the service's table of calls; the calls themselves live by concept in `service/`:
//! `namespace_calls.rs`, `cluster_calls.rs` and `region_calls.rs` (write-backs in
//! `leases.rs`).

mod cluster_calls;
mod early;
mod namespace_calls;
mod region_calls;

use crate::error::{MetaError, store};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use meridian_proto::channels::ChannelPool;
use meridian_proto::ns::{Attr, Command, NsError, Op, Query, QueryReply, Reply, Timespec};
use meridian_proto::pb::meta::meta_service_client::MetaServiceClient;
use meridian_proto::pb::meta::meta_service_server::MetaService;
use meridian_proto::pb::meta::*;
use meridian_proto::tls;
use meridian_proto::{NodeId, NodeInfo, NodeState, ZoneId};
use openraft::async_runtime::WatchReceiver;
use openraft::{BasicNode, ChangeMembers, ReadPolicy};
use redb::{Database, ReadableDatabase};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::config::PeerRegion;
use crate::home::Forward;
use crate::namespace::NsReader;
use crate::raft::state_machine::Shared;
use crate::raft::{ClusterCmd, MetaRaft, Request as RaftRequest, Response as RaftResponse};
use crate::regions::Regions;
use crate::tokens::Checked;

pub use early::EarlySink;

/// How long a member's reported level ([`MetaNode::group_reads`]) stands for it while it
/// does not answer: an older member slow or stopped for a moment is not taken as down,
/// and one gone for good (not yet removed from the group) does not hold the newer
/// requests back for ever.
pub const LEVEL_MEMORY: Duration = Duration::from_secs(600);

/// Metadata key marking a request a follower already forwarded (never forwarded twice).
const FORWARDED: &str = "x-meridian-forwarded";

/// One metaserver's services.
pub struct MetaNode {
    /// This member.
    pub id: u64,
    /// Its Raft.
    pub raft: MetaRaft,
    /// The state database (read side).
    pub db: Arc<Database>,
    /// State shared with the state machine.
    pub shared: Arc<Shared>,
    /// Connections to the other members.
    pub pool: Arc<ChannelPool>,
    /// Last heartbeat of each chunkserver, as seen by this member while leader.
    pub liveness: Mutex<crate::liveness::Liveness>,
    /// The Raft requests each other member said it reads, and when, at its latest answer
    /// to [`MetaNode::group_reads`]: a member that does not answer in time is taken as it
    /// was, for [`LEVEL_MEMORY`] after that answer.
    pub levels: Mutex<std::collections::HashMap<u64, (u32, Instant)>>,
    /// The other regions this one replicates with.
    pub peers: Vec<PeerRegion>,
    /// Replication progress with them.
    pub regions: Regions,
    /// Directory leases recalled from their holders (while leader).
    pub recalls: crate::leases::Recalls,
    /// The feed's load: how fast the change log grows, and the watchers answered.
    pub feed_load: crate::watch::FeedLoad,
    /// Volumes being brought into this region, and images served to others.
    pub backfills: crate::backfill::Backfills,
    /// Regions whose records are pulled through a peer: origin -> (the peer, its puller).
    pub relayed: Mutex<std::collections::BTreeMap<u16, (u16, tokio::task::JoinHandle<()>)>>,
    /// A pause between the steps of a volume copy (tests only).
    pub copy_pause: std::time::Duration,
    /// Answers `Calls` as unimplemented, as a member older than the stream (tests only).
    pub no_calls_stream: bool,
    /// The port of its calls port (`calls_port.rs`); 0 if it has none.
    pub calls_port: u16,
    /// Its Raft log (how long its syncs take lately, for the status).
    pub log: crate::raft::log_store::LogStore,
    /// Set once the server is stopping: long-lived streams (`Calls`) end, so that the
    /// server's graceful stop does not wait for their clients.
    pub stopping: tokio::sync::watch::Sender<bool>,
}

pub(crate) fn json<T: serde::Serialize>(v: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(v).expect("serializable"))
}

fn now() -> (u64, Timespec) {
    let ns = meridian_proto::physical_ns();
    (ns / 1_000_000, Timespec::from_nanos(ns))
}

fn unavailable(what: impl std::fmt::Display) -> Status {
    MetaError::Unavailable(what.to_string()).into()
}

impl MetaNode {
    /// The regions pulled through a peer, each with that peer.
    pub fn relayed_via(&self) -> Vec<(u16, u16)> {
        let relayed = self.relayed.lock().unwrap_or_else(|p| p.into_inner());
        relayed.iter().map(|(o, (via, _))| (*o, *via)).collect()
    }

    /// The leader's id and address, if known.
    pub fn leader(&self) -> Option<(u64, String)> {
        let m = self.raft.metrics().borrow_watched().clone();
        let leader = m.current_leader?;
        let addr = m
            .membership_config
            .nodes()
            .find(|(id, _)| **id == leader)
            .map(|(_, n)| n.addr.clone())?;
        Some((leader, addr))
    }

    /// Whether this member leads its region now. If it does, its state holds everything
    /// Raft counts applied (a member that just took over may still have had entries of the
    /// old leader's term waiting to apply: see `raft/applier.rs`).
    pub fn is_leader(&self) -> bool {
        let (leads, applied) = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            (
                m.current_leader == Some(self.id),
                m.last_applied.as_ref().map_or(0, |id| id.index),
            )
        };
        if leads {
            self.shared.catch_up_to(applied);
        }
        leads
    }

    /// Proposes an entry this member made itself (it must lead).
    pub async fn propose_internal(&self, entry: RaftRequest) -> Result<RaftResponse, MetaError> {
        match self.propose(entry).await {
            Ok((resp, _)) => Ok(resp),
            Err(None) => Err(MetaError::Unavailable(format!(
                "member {} is not the leader",
                self.id
            ))),
            Err(Some(s)) => Err(MetaError::Unavailable(s.message().to_string())),
        }
    }

    /// A client of the leader, for forwarding a request that reached this follower.
    pub(crate) fn leader_client<T>(
        &self,
        req: &Request<T>,
    ) -> Result<(MetaServiceClient<tonic::transport::Channel>, String), Status> {
        if req.metadata().contains_key(FORWARDED) {
            return Err(unavailable(format!(
                "member {} is not the leader either; leadership is changing",
                self.id
            )));
        }
        let (leader, addr) = self
            .leader()
            .ok_or_else(|| unavailable("no leader is known yet; retry"))?;
        if leader == self.id {
            return Err(unavailable("leadership is changing; retry"));
        }
        let ch = self.pool.get(&addr).map_err(unavailable)?;
        Ok((MetaServiceClient::new(ch), addr))
    }

    /// `request` as sent on to another member: marked forwarded, with the token it came
    /// with (so that the member deciding decides for the token's holder, not for this one).
    pub(crate) fn forward<T>(request: Request<T>) -> Request<T> {
        let token = crate::tokens::token_header(&request);
        let mut r = Self::mark(request.into_inner());
        if let Some(v) = token {
            r.metadata_mut().insert(meridian_proto::token::HEADER, v);
        }
        r
    }

    pub(crate) fn mark<T>(inner: T) -> Request<T> {
        metrics::counter!("meridian_meta_forwarded_total").increment(1);
        let mut r = Request::new(inner);
        r.metadata_mut()
            .insert(FORWARDED, "1".parse().expect("ascii"));
        r
    }

    /// Stamps an operation with this leader's HLC and wall time.
    pub(crate) fn stamp(&self, op: Op, request: Option<(u64, u64)>) -> Command {
        let (hlc, ts) = self.stamp_now();
        Command {
            op,
            hlc,
            now: ts,
            request,
            ino: None,
            lease: false,
        }
    }

    /// A stamp and the wall time, for what this member proposes now.
    pub(crate) fn stamp_now(&self) -> (meridian_proto::Hlc, Timespec) {
        let (ms, ts) = now();
        let hlc = self
            .shared
            .clock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .now(ms);
        (hlc, ts)
    }

    /// Proposes a Raft entry; `Err(None)` means "not the leader: forward".
    /// Commits a cluster-map change here: the new map, or `None` when another member
    /// leads (the caller forwards the request there).
    async fn change_map(
        &self,
        cmd: ClusterCmd,
    ) -> Result<Option<Response<ClusterMapResponse>>, Status> {
        match self.propose(RaftRequest::Cluster(cmd)).await {
            Ok(_) => Ok(Some(Response::new(ClusterMapResponse {
                map: json(&**self.shared.map.borrow()),
            }))),
            Err(Some(s)) => Err(s),
            Err(None) => Ok(None),
        }
    }

    /// Whether this member may answer a linearizable read from its own state at once: it
    /// leads within its lease (followers acknowledged it less than an election timeout
    /// ago, so none can have elected another leader) and has applied everything committed
    /// before the read. Saves the round to the followers that ReadIndex makes per read.
    async fn lease_valid(&self) -> bool {
        // A follower knows from its metrics, without a trip to the Raft core.
        self.raft.current_leader().await == Some(self.id)
            && self
                .raft
                .ensure_linearizable(ReadPolicy::LeaseRead)
                .await
                .is_ok()
    }

    pub(crate) async fn propose(
        &self,
        entry: RaftRequest,
    ) -> Result<(RaftResponse, u64), Option<Status>> {
        match self.raft.client_write(entry).await {
            Ok(resp) => Ok((resp.data, resp.log_id.index)),
            Err(e) => {
                if let Some(openraft::errors::ClientWriteError::LogEntryDiscarded(_)) =
                    e.api_error()
                {
                    return Err(Some(unavailable(
                        "leadership changed before the write committed; retry with the same request id",
                    )));
                }
                if e.forward_to_leader().is_some() {
                    return Err(None);
                }
                Err(Some(unavailable(e)))
            }
        }
    }

    pub(crate) fn read<T>(&self, f: impl FnOnce(&NsReader<'_>) -> T) -> Result<T, Status> {
        let tx = self.db.begin_read().map_err(|e| Status::from(store(e)))?;
        Ok(f(&NsReader::new(&tx)))
    }

    fn status_response(&self) -> StatusResponse {
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let leader = m.current_leader.unwrap_or(0);
        let members: Vec<Member> = membership
            .nodes()
            .map(|(id, n)| Member {
                id: *id,
                address: n.addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        let leader_address = members
            .iter()
            .find(|m| m.id == leader)
            .map(|m| m.address.clone())
            .unwrap_or_default();
        StatusResponse {
            id: self.id,
            state: format!("{:?}", m.state),
            leader,
            leader_address,
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or(0),
            last_applied: m.last_applied.map_or(0, |l| l.index),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            purged_index: m.purged.map_or(0, |l| l.index),
            members,
            region: u32::from(self.shared.region.0),
            log_sync_us: u64::try_from(self.log.recent_sync().as_micros()).unwrap_or(u64::MAX),
            log_syncs: self.log.syncs(),
            reads: self.reads(),
        }
    }

    /// The newest Raft requests this member reads ([`crate::raft::READS`]); a member
    /// acting as an older one (tests of mixed versions) reads nothing new.
    fn reads(&self) -> u32 {
        if self.no_calls_stream {
            0
        } else {
            crate::raft::READS
        }
    }

    /// Whether the group may be given Raft requests of `level` ([`crate::raft::READS`]):
    /// no member that answers its status (voters and learners: all apply the log) reads
    /// less, and a majority of the voters reads it (this member with those that answer).
    /// A member that does not answer within a second (down, or slow: the leader a copy's
    /// removal follows, say) is taken as it last answered, up to [`LEVEL_MEMORY`] ago: one
    /// that read less then still does; one not heard from since is not waited for. One that
    /// comes back older cannot read the entry and stays behind until it is upgraded, while
    /// the others go on.
    pub async fn group_reads(&self, level: u32) -> bool {
        let (voters, others) = {
            let m = self.raft.metrics().borrow_watched().clone();
            let membership = m.membership_config.membership();
            let voters: BTreeSet<u64> = membership.voter_ids().collect();
            let others: Vec<(u64, String)> = membership
                .nodes()
                .filter(|(id, _)| **id != self.id)
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect();
            (voters, others)
        };
        if self.reads() < level {
            return false;
        }
        // Asked all at once: a member that does not answer costs one wait, not one each.
        let asked = others.into_iter().map(|(id, addr)| async move {
            let Ok(channel) = self.pool.get(&addr) else {
                return (id, None);
            };
            let mut client = meridian_proto::channels::meta_client(channel);
            let asked = client.status(meridian_proto::pb::meta::StatusRequest {});
            match tokio::time::timeout(std::time::Duration::from_secs(1), asked).await {
                Ok(Ok(r)) => (id, Some(r.into_inner().reads)),
                _ => (id, None),
            }
        });
        let answers = futures::future::join_all(asked).await;
        let mut levels = self.levels.lock().unwrap_or_else(|p| p.into_inner());
        let mut reading = usize::from(voters.contains(&self.id));
        let mut older = false;
        for (id, reads) in answers {
            match reads {
                Some(reads) => {
                    levels.insert(id, (reads, Instant::now()));
                    older |= reads < level;
                    reading += usize::from(voters.contains(&id));
                }
                // Silent now: as it was at its last answer.
                None => {
                    older |= levels
                        .get(&id)
                        .is_some_and(|&(r, at)| r < level && at.elapsed() < LEVEL_MEMORY);
                }
            }
        }
        !older && reading > voters.len() / 2
    }

    /// The leader's failure detector for chunkservers (phi accrual, `crate::liveness`):
    /// marks silent nodes suspect, then down, through Raft. Runs on every member; acts
    /// only while leader. A member that becomes leader gives every node a fresh start.
    pub async fn detect_failures(self: Arc<Self>, suspect_after: Duration, down_after: Duration) {
        let mut was_leader = false;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let leader = self.is_leader();
            if !leader {
                was_leader = false;
                continue;
            }
            let map = self.shared.map.borrow().clone();
            let mut changes = Vec::new();
            {
                let mut seen = self.liveness.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                if !was_leader {
                    seen.clear();
                    was_leader = true;
                }
                for n in &map.nodes {
                    let arrivals = seen.of(n.id, now);
                    let silent = arrivals.silent(now);
                    let Some(want) = arrivals.verdict(now, suspect_after, down_after) else {
                        continue;
                    };
                    if n.state != want
                        && n.state != NodeState::Draining
                        && !(n.state == NodeState::Down && want == NodeState::Suspect)
                    {
                        changes.push((n.id, want, silent));
                    }
                }
            }
            for (id, state, silent) in changes {
                info!(node = %id, ?state, silent_ms = silent.as_millis() as u64, "chunkserver state change");
                if let Err(Some(e)) = self
                    .propose(RaftRequest::Cluster(ClusterCmd::SetState { id, state }))
                    .await
                {
                    warn!(node = %id, error = %e, "could not record chunkserver state");
                }
            }
        }
    }
}

/// The gRPC face of a [`MetaNode`].
#[derive(Clone)]
pub struct MetaApi(pub Arc<MetaNode>);

impl std::ops::Deref for MetaApi {
    type Target = MetaNode;
    fn deref(&self) -> &MetaNode {
        &self.0
    }
}

/// A reply forwarded from the leader at `addr`, naming it for the client.
pub(crate) fn naming<T>(
    reply: Result<Response<T>, Status>,
    addr: &str,
) -> Result<Response<T>, Status> {
    reply.map(|mut r| {
        if let Ok(v) = addr.parse() {
            r.metadata_mut().insert(meridian_proto::LEADER_HEADER, v);
        }
        r
    })
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
) -> Result<T, Status> {
    serde_json::from_slice(bytes)
        .map_err(|e| Status::from(MetaError::Invalid(format!("undecodable {what}: {e}"))))
}

#[tonic::async_trait]
impl MetaService for MetaApi {
    async fn mutate(
        &self,
        request: Request<MutateRequest>,
    ) -> Result<Response<MutateResponse>, Status> {
        self.handle_mutate(request).await
    }

    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<QueryResponse>, Status> {
        self.handle_query(request).await
    }

    async fn register_chunkserver(
        &self,
        request: Request<RegisterChunkserverRequest>,
    ) -> Result<Response<ClusterMapResponse>, Status> {
        self.handle_register_chunkserver(request).await
    }

    async fn set_node_state(
        &self,
        request: Request<SetNodeStateRequest>,
    ) -> Result<Response<ClusterMapResponse>, Status> {
        self.handle_set_node_state(request).await
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        self.handle_heartbeat(request).await
    }

    async fn get_cluster_map(
        &self,
        request: Request<GetClusterMapRequest>,
    ) -> Result<Response<ClusterMapResponse>, Status> {
        self.handle_get_cluster_map(request).await
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        self.handle_status(request).await
    }

    async fn add_member(
        &self,
        request: Request<AddMemberRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        self.handle_add_member(request).await
    }

    async fn remove_member(
        &self,
        request: Request<RemoveMemberRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        self.handle_remove_member(request).await
    }

    async fn trigger_snapshot(
        &self,
        request: Request<TriggerSnapshotRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        self.handle_trigger_snapshot(request).await
    }

    async fn pull_changes(
        &self,
        request: Request<PullChangesRequest>,
    ) -> Result<Response<PullChangesResponse>, Status> {
        self.handle_pull_changes(request).await
    }

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<WatchResponse>, Status> {
        self.handle_watch(request).await
    }

    async fn write_back(
        &self,
        request: Request<WriteBackRequest>,
    ) -> Result<Response<WriteBackResponse>, Status> {
        self.0.write_back(request).await
    }

    type CallsStream = crate::calls::CallAnswers;

    async fn calls(
        &self,
        request: Request<tonic::Streaming<Call>>,
    ) -> Result<Response<Self::CallsStream>, Status> {
        if self.0.no_calls_stream {
            return Err(Status::unimplemented(
                "Calls (this member acts older than it)",
            ));
        }
        Ok(crate::calls::serve(self.0.clone(), request))
    }

    async fn calls_port(
        &self,
        _request: Request<CallsPortRequest>,
    ) -> Result<Response<CallsPortReply>, Status> {
        // 0 when it has none (a member acting older than `Calls` opens none).
        Ok(Response::new(CallsPortReply {
            port: u32::from(self.0.calls_port),
        }))
    }

    async fn region_status(
        &self,
        request: Request<RegionStatusRequest>,
    ) -> Result<Response<RegionStatusResponse>, Status> {
        self.handle_region_status(request).await
    }

    async fn volume_image(
        &self,
        request: Request<VolumeImageRequest>,
    ) -> Result<Response<VolumeImageResponse>, Status> {
        self.handle_volume_image(request).await
    }
}
