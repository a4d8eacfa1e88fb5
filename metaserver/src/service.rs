//! The MetaService: namespace mutations and queries, the chunkserver registry, and
//! administration of the Raft group. Any member answers; writes (and linearizable reads)
//! that reach a follower are forwarded once to the leader.

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
    /// The other regions this one replicates with.
    pub peers: Vec<PeerRegion>,
    /// Replication progress with them.
    pub regions: Regions,
    /// Directory leases recalled from their holders (while leader).
    pub recalls: crate::leases::Recalls,
    /// Volumes being brought into this region, and images served to others.
    pub backfills: crate::backfill::Backfills,
    /// Regions whose records are pulled through a peer: origin -> (the peer, its puller).
    pub relayed: Mutex<std::collections::BTreeMap<u16, (u16, tokio::task::JoinHandle<()>)>>,
    /// A pause between the steps of a volume copy (tests only).
    pub copy_pause: std::time::Duration,
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

    /// Whether this member leads its region now.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().current_leader == Some(self.id)
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
        }
    }

    /// The leader's failure detector for chunkservers (phi accrual, `crate::liveness`):
    /// marks silent nodes suspect, then down, through Raft. Runs on every member; acts
    /// only while leader. A member that becomes leader gives every node a fresh start.
    pub async fn detect_failures(self: Arc<Self>, suspect_after: Duration, down_after: Duration) {
        let mut was_leader = false;
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let leader = self.raft.is_leader();
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
        metrics::counter!("meridian_meta_mutations_total").increment(1);
        let op: Op = decode(&request.get_ref().op, "operation")?;
        if let Some((claims, keys)) = crate::tokens::restricted(&request)?
            && let Checked::Missing(ino) =
                self.check_op(&claims, &keys, &op, &request.get_ref().caps)?
        {
            // Not held here: decided where it is (the home region, else the leader).
            let req = request.get_ref();
            if req.from_region == 0
                && self.volume_home_elsewhere(req.volume)?.is_some()
                && let Forward::Answered(r) = self
                    .forward_home(&op, req.clone(), crate::tokens::token_header(&request))
                    .await?
            {
                return Ok(r);
            }
            if !self.is_leader() {
                let (mut leader, addr) = self.leader_client(&request)?;
                return naming(leader.mutate(MetaNode::forward(request)).await, &addr);
            }
            let outcome: Result<Reply, NsError> = Err(NsError::NotFound(format!("inode {ino}")));
            return Ok(Response::new(MutateResponse {
                outcome: json(&outcome),
                log_index: 0,
                dirs: Bytes::new(),
                change_seq: 0,
            }));
        }
        if let Op::CloneVolume {
            source,
            name,
            read_only,
        } = &op
        {
            // A copy is made here, in steps, whatever regions its source lives in.
            if !self.is_leader() {
                let (mut leader, addr) = self.leader_client(&request)?;
                return naming(leader.mutate(MetaNode::forward(request)).await, &addr);
            }
            let outcome =
                crate::copy::copy_volume(self.0.clone(), source, name, *read_only).await?;
            return Ok(Response::new(MutateResponse {
                outcome: json(&outcome),
                log_index: 0,
                dirs: Bytes::new(),
                change_seq: 0,
            }));
        }
        let req = request.get_ref();
        let forwarded = req.from_region != 0;
        // A volume whose home is another region: the change is decided there.
        if let Some(home) = self.home_elsewhere_of(&op, req.volume)? {
            // Forwarded here by a region that hears the home through this one (a chain),
            // or that took this one for the home (it is moving): passed on, a bounded
            // number of times; then the forwarding region tries again.
            if forwarded
                && (req.hops >= crate::home::MAX_HOPS || req.from_region == u32::from(home.0))
            {
                return Err(Status::unavailable(format!(
                    "region {} is not the home of this volume (region {} is, as far as it knows)",
                    self.shared.region.0, home.0
                )));
            }
            if let Forward::Answered(r) = self
                .forward_home(&op, req.clone(), crate::tokens::token_header(&request))
                .await?
            {
                return Ok(r);
            }
            // This region became the home meanwhile: the change is made here.
        }
        let id = (req.client_id != 0).then_some((req.client_id, req.request_id));
        let dirs = op.dirs_changed();
        // Another client's leased directory: recalled first (on the leader).
        let (touched, leased) = self.touched_leased(req.client_id, &op)?;
        if leased {
            if !self.is_leader() {
                let (mut leader, addr) = self.leader_client(&request)?;
                return naming(leader.mutate(MetaNode::forward(request)).await, &addr);
            }
            self.await_leases(req.client_id, &touched).await?;
        }
        let mut cmd = self.stamp(op.clone(), id);
        cmd.lease = req.lease && id.is_some();
        match self.propose(RaftRequest::Ns(cmd)).await {
            Ok((RaftResponse::Ns(outcome), index)) => {
                if matches!(outcome, Err(NsError::ReadOnly(_)))
                    && self.home_elsewhere(&op)?.is_some()
                {
                    // The home moved away as this change was made: the new home decides.
                    if forwarded {
                        return Err(Status::unavailable("the volume's home moved: try again"));
                    }
                    if let Forward::Answered(r) = self
                        .forward_home(
                            &op,
                            request.get_ref().clone(),
                            crate::tokens::token_header(&request),
                        )
                        .await?
                    {
                        return Ok(r);
                    }
                }
                // The directories as they are now (this member applied the operation
                // before answering): the client's kernel asks for them next otherwise.
                // The operation applied: a failure to read them only leaves them out.
                let dirs: Vec<Attr> = match outcome {
                    Ok(_) if !dirs.is_empty() => self
                        .read(|r| {
                            dirs.iter()
                                .filter_map(|&ino| match r.query(&Query::GetAttr { ino }) {
                                    Ok(QueryReply::Attr(a)) => Some(a),
                                    _ => None,
                                })
                                .collect()
                        })
                        .unwrap_or_else(|e| {
                            warn!(error = %e, "could not read the changed directories back");
                            Vec::new()
                        }),
                    _ => Vec::new(),
                };
                // For a region that forwarded it: where this region's change log ends
                // with the change in it.
                let change_seq = if forwarded {
                    self.db
                        .begin_read()
                        .ok()
                        .and_then(|tx| tx.open_table(crate::namespace::tables::CHANGELOG).ok())
                        .and_then(|t| {
                            redb::ReadableTable::last(&t)
                                .ok()
                                .flatten()
                                .map(|(k, _)| k.value())
                        })
                        .unwrap_or(0)
                } else {
                    0
                };
                Ok(Response::new(MutateResponse {
                    outcome: json(&outcome),
                    log_index: index,
                    dirs: if dirs.is_empty() {
                        Bytes::new()
                    } else {
                        json(&dirs)
                    },
                    change_seq,
                }))
            }
            Ok((other, _)) => Err(Status::from(MetaError::Store(format!(
                "unexpected apply result {other:?}"
            )))),
            Err(Some(status)) => Err(status),
            Err(None) => {
                let (mut leader, addr) = self.leader_client(&request)?;
                naming(leader.mutate(MetaNode::forward(request)).await, &addr)
            }
        }
    }

    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<QueryResponse>, Status> {
        metrics::counter!("meridian_meta_queries_total").increment(1);
        let query: Query = decode(&request.get_ref().query, "query")?;
        let restricted = crate::tokens::restricted(&request)?;
        if let Some((claims, _)) = &restricted {
            // Refused early when this member can tell (before any lease is recalled for it).
            self.check_query(claims, &query)?;
        }
        let client = request.get_ref().client;
        let (linearizable, volume) = (request.get_ref().linearizable, request.get_ref().volume);
        if linearizable && self.volume_home_elsewhere(volume)?.is_some() {
            if request.get_ref().from_region != 0 {
                // Its home is moving (or this region has not learnt where yet).
                return Err(Status::unavailable(format!(
                    "region {} is not the home of volume {volume}",
                    self.shared.region.0
                )));
            }
            // Answered as of now by the home (a read index there).
            if let Some(answer) = self
                .query_at_home(
                    volume,
                    request.get_ref().clone(),
                    crate::tokens::token_header(&request),
                )
                .await?
            {
                return Ok(answer);
            }
        }
        if !request.get_ref().stale
            && let Some(dir) = query.reads_dir()
            && !self.leased_to_others(client, &[dir])?.is_empty()
        {
            // Another client's leased directory: recalled first, by the leader.
            if !self.is_leader() {
                let (mut leader, addr) = self.leader_client(&request)?;
                return naming(leader.query(MetaNode::forward(request)).await, &addr);
            }
            self.await_leases(client, &[dir]).await?;
        }
        if !request.get_ref().stale
            && !self.lease_valid().await
            && let Err(e) = self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await
        {
            if e.forward_to_leader().is_none() {
                return Err(unavailable(e));
            }
            let (mut leader, addr) = self.leader_client(&request)?;
            return naming(leader.query(MetaNode::forward(request)).await, &addr);
        }
        let (outcome, caps) = match &restricted {
            None => (self.read(|r| r.query(&query))?, Bytes::new()),
            Some((claims, keys)) => match self.check_query(claims, &query)? {
                Checked::Missing(ino) => {
                    (Err(NsError::NotFound(format!("inode {ino}"))), Bytes::new())
                }
                Checked::Granted(volume) => {
                    let outcome =
                        crate::tokens::filter_reply(claims, self.read(|r| r.query(&query))?);
                    let caps = volume
                        .map(|v| crate::tokens::caps(keys, v, &outcome))
                        .unwrap_or_default();
                    (outcome, caps)
                }
            },
        };
        Ok(Response::new(QueryResponse {
            outcome: json(&outcome),
            caps,
        }))
    }

    async fn register_chunkserver(
        &self,
        request: Request<RegisterChunkserverRequest>,
    ) -> Result<Response<ClusterMapResponse>, Status> {
        tls::require_role(&request, &[tls::CHUNK, tls::META])?;
        let r = request.get_ref();
        if r.id == 0 || r.address.is_empty() || r.zone.is_empty() || r.capacity == 0 {
            return Err(Status::from(MetaError::Invalid(
                "register needs id >= 1, zone, address and capacity > 0".into(),
            )));
        }
        let host_port = |a: &str| {
            a.rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
        };
        if r.range_address.len() > 255
            || !(r.range_address.is_empty() || host_port(&r.range_address))
        {
            return Err(Status::from(MetaError::Invalid(format!(
                "range address {:?} is not host:port",
                r.range_address.chars().take(64).collect::<String>()
            ))));
        }
        let info = NodeInfo {
            id: NodeId(r.id),
            zone: ZoneId(r.zone.clone()),
            address: r.address.clone(),
            range_address: r.range_address.clone(),
            capacity: r.capacity,
            state: NodeState::Up,
        };
        let id = NodeId(r.id);
        match self.change_map(ClusterCmd::Register(info)).await? {
            Some(map) => {
                self.liveness
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .heard(id, Instant::now());
                Ok(map)
            }
            None => {
                let (mut leader, _) = self.leader_client(&request)?;
                leader
                    .register_chunkserver(MetaNode::forward(request))
                    .await
            }
        }
    }

    async fn set_node_state(
        &self,
        request: Request<SetNodeStateRequest>,
    ) -> Result<Response<ClusterMapResponse>, Status> {
        tls::require_role(&request, &[tls::ADMIN, tls::META])?;
        let r = request.get_ref();
        let id = NodeId(r.id);
        if self.shared.map.borrow().node(id).is_none() {
            return Err(Status::from(MetaError::NotFound(format!(
                "chunkserver {id} is not in the cluster map"
            ))));
        }
        let state = if r.draining {
            NodeState::Draining
        } else {
            NodeState::Up
        };
        match self.change_map(ClusterCmd::SetState { id, state }).await? {
            Some(map) => {
                info!(node = %id, ?state, "chunkserver state set by an operator");
                Ok(map)
            }
            None => {
                let (mut leader, _) = self.leader_client(&request)?;
                leader.set_node_state(MetaNode::forward(request)).await
            }
        }
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        tls::require_role(&request, &[tls::CHUNK, tls::META])?;
        if !self.raft.is_leader() {
            let (mut leader, _) = self.leader_client(&request)?;
            return leader.heartbeat(MetaNode::forward(request)).await;
        }
        let id = NodeId(request.get_ref().id);
        let map = self.shared.map.borrow().clone();
        let node = map.node(id).ok_or_else(|| {
            Status::from(MetaError::NotFound(format!(
                "chunkserver {id} is not registered; register first"
            )))
        })?;
        self.liveness
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .heard(id, Instant::now());
        if matches!(node.state, NodeState::Suspect | NodeState::Down) {
            info!(node = %id, "chunkserver is back");
            if let Err(Some(e)) = self
                .propose(RaftRequest::Cluster(ClusterCmd::SetState {
                    id,
                    state: NodeState::Up,
                }))
                .await
            {
                warn!(node = %id, error = %e, "could not record chunkserver as up");
            }
        }
        Ok(Response::new(HeartbeatResponse {
            map_epoch: self.shared.map.borrow().epoch,
        }))
    }

    async fn get_cluster_map(
        &self,
        request: Request<GetClusterMapRequest>,
    ) -> Result<Response<ClusterMapResponse>, Status> {
        let r = request.into_inner();
        let mut rx = self.shared.map.subscribe();
        let wait = Duration::from_millis(u64::from(r.wait_ms).min(30_000));
        let _ = tokio::time::timeout(wait, rx.wait_for(|m| m.epoch > r.known_epoch)).await;
        Ok(Response::new(ClusterMapResponse {
            map: json(&**rx.borrow()),
        }))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(self.status_response()))
    }

    async fn add_member(
        &self,
        request: Request<AddMemberRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        tls::require_role(&request, &[tls::ADMIN, tls::META])?;
        if !self.raft.is_leader() {
            let (mut leader, _) = self.leader_client(&request)?;
            return leader.add_member(MetaNode::forward(request)).await;
        }
        let r = request.into_inner();
        if r.id == 0 || r.address.is_empty() {
            return Err(Status::from(MetaError::Invalid(
                "add member needs id >= 1 and an address".into(),
            )));
        }
        info!(member = r.id, address = %r.address, voter = r.voter, "adding member");
        self.raft
            .add_learner(r.id, BasicNode::new(&r.address), true)
            .await
            .map_err(unavailable)?;
        if r.voter {
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([r.id])), false)
                .await
                .map_err(unavailable)?;
        }
        Ok(Response::new(self.status_response()))
    }

    async fn remove_member(
        &self,
        request: Request<RemoveMemberRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        tls::require_role(&request, &[tls::ADMIN, tls::META])?;
        if !self.raft.is_leader() {
            let (mut leader, _) = self.leader_client(&request)?;
            return leader.remove_member(MetaNode::forward(request)).await;
        }
        let id = request.into_inner().id;
        info!(member = id, "removing member");
        let voters: BTreeSet<u64> = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        if voters.contains(&id) {
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(unavailable)?;
        }
        self.raft
            .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
            .await
            .map_err(unavailable)?;
        Ok(Response::new(self.status_response()))
    }

    async fn trigger_snapshot(
        &self,
        request: Request<TriggerSnapshotRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        tls::require_role(&request, &[tls::ADMIN, tls::META])?;
        let purge = request.into_inner().purge;
        let target = self
            .raft
            .metrics()
            .borrow_watched()
            .last_applied
            .map_or(0, |l| l.index);
        self.raft.trigger().snapshot().await.map_err(unavailable)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .raft
            .metrics()
            .borrow_watched()
            .snapshot
            .as_ref()
            .map_or(0, |l| l.index)
            < target
        {
            if Instant::now() > deadline {
                return Err(Status::from(MetaError::Timeout(
                    "snapshot did not finish in 30 s".into(),
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if purge {
            self.raft
                .trigger()
                .purge_log(target)
                .await
                .map_err(unavailable)?;
            while self
                .raft
                .metrics()
                .borrow_watched()
                .purged
                .as_ref()
                .map_or(0, |l| l.index)
                < target
            {
                if Instant::now() > deadline {
                    return Err(Status::from(MetaError::Timeout(
                        "log purge did not finish in 30 s".into(),
                    )));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(Response::new(self.status_response()))
    }

    async fn pull_changes(
        &self,
        request: Request<PullChangesRequest>,
    ) -> Result<Response<PullChangesResponse>, Status> {
        tls::require_role(&request, &[tls::META])?;
        if !self.is_leader() {
            let (mut leader, _) = self.leader_client(&request)?;
            return leader.pull_changes(MetaNode::forward(request)).await;
        }
        let r = request.into_inner();
        let to = u16::try_from(r.region)
            .map(meridian_proto::RegionId)
            .map_err(|_| {
                Status::from(MetaError::Invalid(format!(
                    "region {} out of range",
                    r.region
                )))
            })?;
        // Only a configured peer region pulls (a made-up region id would learn records and
        // move the lag bookkeeping of a region that does not exist).
        if !self.peers.iter().any(|p| p.region == to.0) {
            return Err(Status::permission_denied(format!(
                "region {} is not a peer of region {}",
                to.0, self.shared.region.0
            )));
        }
        let origin = match r.origin {
            0 => self.shared.region,
            o => u16::try_from(o)
                .map(meridian_proto::RegionId)
                .map_err(|_| {
                    Status::from(MetaError::Invalid(format!("region {o} out of range")))
                })?,
        };
        if origin == to {
            return Err(Status::invalid_argument(format!(
                "region {} asked for its own records",
                to.0
            )));
        }
        self.regions.note_have(
            to.0,
            r.have
                .iter()
                .filter_map(|m| u16::try_from(m.region).ok().map(|g| (g, m.seq)))
                .collect(),
        );
        let wait = Duration::from_millis(u64::from(r.wait_ms).min(10_000));
        let deadline = Instant::now() + wait;
        let mut applied = self.shared.applied.subscribe();
        loop {
            let tx = self.db.begin_read().map_err(|e| Status::from(store(e)))?;
            let reply =
                self.regions
                    .serve_pull_of(&tx, self.shared.region, to, origin, r.from, r.limit)?;
            drop(tx);
            let now = Instant::now();
            if !reply.records.is_empty() || reply.next <= reply.head || now >= deadline {
                metrics::counter!("meridian_region_records_served_total", "peer" => r.region.to_string())
                    .increment(reply.records.len() as u64);
                return Ok(Response::new(reply));
            }
            // Nothing new: wait for the next applied entry (or the deadline).
            let _ = tokio::time::timeout(deadline - now, applied.changed()).await;
        }
    }

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<WatchResponse>, Status> {
        if let Some((claims, _)) = crate::tokens::restricted(&request)? {
            self.check_volume(&claims, request.get_ref().volume)?;
        }
        // Only a leader within its lease answers: a member cut off from the others would
        // answer "nothing changed" while the others go on changing things.
        if !self.lease_valid().await {
            let (mut leader, addr) = self.leader_client(&request)?;
            return naming(leader.watch(MetaNode::forward(request)).await, &addr);
        }
        let r = request.into_inner();
        let deadline = Instant::now() + Duration::from_millis(u64::from(r.wait_ms).min(10_000));
        let mut applied = self.shared.applied.subscribe();
        let mut recalled = self.recalls.subscribe();
        let mut from = r.from;
        loop {
            let tx = self.db.begin_read().map_err(|e| Status::from(store(e)))?;
            let answer = crate::watch::changes(&tx, r.volume, from, r.client)?;
            // Only what the applied state still leases to the watcher: a recall whose
            // waiter went away (or whose lease ended) is dropped, not repeated.
            let recall: Vec<u64> = if r.client == 0 {
                Vec::new()
            } else {
                let pending = self.recalls.of(r.client);
                let (live, stale): (Vec<_>, Vec<_>) = pending.into_iter().partition(|d| {
                    matches!(
                        crate::namespace::lease::leaseholder(&tx, *d),
                        Ok(Some(h)) if h == r.client
                    )
                });
                if !stale.is_empty() {
                    self.recalls.forget(&stale);
                }
                live.iter().map(|d| d.0).collect()
            };
            drop(tx);
            let now = Instant::now();
            if !answer.touched.changes.is_empty()
                || answer.gap
                || r.from == 0
                || !recall.is_empty()
                || now >= deadline
            {
                return Ok(Response::new(WatchResponse {
                    touched: json(&answer.touched),
                    next: answer.next,
                    gap: answer.gap,
                    recall,
                }));
            }
            // Records of other volumes or of the watcher only, or none: wait for the next
            // applied entry, or a recall.
            from = answer.next;
            let _ = tokio::time::timeout(deadline - now, async {
                tokio::select! {
                    _ = applied.changed() => {}
                    _ = recalled.changed() => {}
                }
            })
            .await;
        }
    }

    async fn write_back(
        &self,
        request: Request<WriteBackRequest>,
    ) -> Result<Response<WriteBackResponse>, Status> {
        self.0.write_back(request).await
    }

    async fn region_status(
        &self,
        request: Request<RegionStatusRequest>,
    ) -> Result<Response<RegionStatusResponse>, Status> {
        if !self.is_leader() {
            let (mut leader, _) = self.leader_client(&request)?;
            return leader.region_status(MetaNode::forward(request)).await;
        }
        let tx = self.db.begin_read().map_err(|e| Status::from(store(e)))?;
        let mut status =
            self.regions
                .status(&tx, self.shared.region, &self.peers, &self.relayed_via());
        drop(tx);
        status.backfills = self.backfills.rows(&self.db);
        Ok(Response::new(status))
    }

    async fn volume_image(
        &self,
        request: Request<VolumeImageRequest>,
    ) -> Result<Response<VolumeImageResponse>, Status> {
        tls::require_role(&request, &[tls::META])?;
        if !self.is_leader() {
            let (mut leader, _) = self.leader_client(&request)?;
            return leader.volume_image(MetaNode::forward(request)).await;
        }
        crate::backfill::serve_image(self, request.into_inner())
            .await
            .map(Response::new)
    }
}
