//! The cluster's calls: chunkservers joining and reporting (the registry and its map),
//! and administration of the Raft group (status, members, snapshots).

use super::*;

impl MetaApi {
    pub(super) async fn handle_register_chunkserver(
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

    pub(super) async fn handle_set_node_state(
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

    pub(super) async fn handle_heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        tls::require_role(&request, &[tls::CHUNK, tls::META])?;
        if !self.is_leader() {
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

    pub(super) async fn handle_get_cluster_map(
        &self,
        request: Request<GetClusterMapRequest>,
    ) -> Result<Response<ClusterMapResponse>, Status> {
        // Open to every certificate of the deployment, token or none: a client needs to
        // know where the chunkservers are before it has a volume (the CSI node plugin).
        let r = request.into_inner();
        let mut rx = self.shared.map.subscribe();
        let wait = Duration::from_millis(u64::from(r.wait_ms).min(30_000));
        let _ = tokio::time::timeout(wait, rx.wait_for(|m| m.epoch > r.known_epoch)).await;
        Ok(Response::new(ClusterMapResponse {
            map: json(&**rx.borrow()),
        }))
    }

    pub(super) async fn handle_status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        // Open to every certificate of the deployment: it names no volume.
        Ok(Response::new(self.status_response()))
    }

    pub(super) async fn handle_add_member(
        &self,
        request: Request<AddMemberRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        tls::require_role(&request, &[tls::ADMIN, tls::META])?;
        if !self.is_leader() {
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
        self.snapshot_for_joining().await;
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

    pub(super) async fn handle_remove_member(
        &self,
        request: Request<RemoveMemberRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        tls::require_role(&request, &[tls::ADMIN, tls::META])?;
        if !self.is_leader() {
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

    pub(super) async fn handle_trigger_snapshot(
        &self,
        request: Request<TriggerSnapshotRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        tls::require_role(&request, &[tls::ADMIN, tls::META])?;
        let purge = request.into_inner().purge;
        let target = self
            .snapshot_now(SNAPSHOT_WAIT)
            .await
            .map_err(Status::from)?;
        if purge {
            self.raft
                .trigger()
                .purge_log(target)
                .await
                .map_err(unavailable)?;
            self.purged_to(target, SNAPSHOT_WAIT).await?;
        }
        Ok(Response::new(self.status_response()))
    }

    /// Waits (up to `wait`) until the log is purged up to `index`.
    async fn purged_to(&self, index: u64, wait: Duration) -> Result<(), MetaError> {
        self.raft
            .wait(Some(wait))
            .metrics(
                |m| m.purged.as_ref().map_or(0, |l| l.index) >= index,
                "the log purged",
            )
            .await
            .map(|_| ())
            .map_err(|e| MetaError::Timeout(format!("log purge: {e}")))
    }

    /// Takes a snapshot of everything applied so far and waits (up to `wait`) until it is
    /// built; returns the index it covers.
    async fn snapshot_now(&self, wait: Duration) -> Result<u64, MetaError> {
        let target = self
            .raft
            .metrics()
            .borrow_watched()
            .last_applied
            .as_ref()
            .map_or(0, |l| l.index);
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| MetaError::Unavailable(e.to_string()))?;
        self.raft
            .wait(Some(wait))
            .metrics(
                |m| m.snapshot.as_ref().map_or(0, |l| l.index) >= target,
                "a snapshot of everything applied",
            )
            .await
            .map_err(|e| MetaError::Timeout(format!("snapshot: {e}")))?;
        Ok(target)
    }

    /// Before a member joins: a fresh snapshot if the log since the last one is longer than
    /// the entries kept behind a snapshot. The new member gets the last snapshot and then
    /// replays every entry since; with snapshots taken once the log is worth half of one
    /// (`raft::snapshot_policy`) that can be half a large namespace's history again, a
    /// change at a time (a fourth member of 300,000 files had not caught up when the
    /// add-member call's 60 s ran out; 11.3 s with a fresh snapshot). Building a snapshot
    /// writes each inode once, and the log up to it is then purged (all but `keep_logs`
    /// entries), so the member gets the snapshot. If the snapshot does not finish in time
    /// the member joins from what there is.
    async fn snapshot_for_joining(&self) {
        let (applied, snapshot) = {
            let m = self.raft.metrics().borrow_watched().clone();
            (
                m.last_applied.map_or(0, |l| l.index),
                m.snapshot.map_or(0, |l| l.index),
            )
        };
        let keep = self.raft.config().max_in_snapshot_log_to_keep;
        if applied.saturating_sub(snapshot) <= keep {
            return;
        }
        info!(applied, snapshot, "a fresh snapshot for the joining member");
        let target = match self.snapshot_now(JOIN_SNAPSHOT_WAIT).await {
            Ok(target) => target,
            Err(e) => {
                warn!(error = %e, "no fresh snapshot for the joining member; it replays the log");
                return;
            }
        };
        // The log up to it is purged next (but for `keep` entries); until it is, the
        // member would be sent the log, which the purge would then wait for.
        if let Err(e) = self
            .purged_to(target.saturating_sub(keep), JOIN_PURGE_WAIT)
            .await
        {
            warn!(error = %e, "the log was not purged up to the fresh snapshot; the joining member may replay it");
        }
    }
}

/// How long an administrator's snapshot (and purge) may take.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(30);
/// How long a member's joining waits for a fresh snapshot before it goes on without: the
/// call has the server's request timeout (60 s by default) for the snapshot and the catch-up
/// both, and a call cut short before `add_learner` would add no member. (A snapshot that
/// finishes later is still the one the member gets if the log is purged by the time it
/// needs one.)
const JOIN_SNAPSHOT_WAIT: Duration = Duration::from_secs(30);
/// How long a member's joining waits for the log's purge up to the fresh snapshot.
const JOIN_PURGE_WAIT: Duration = Duration::from_secs(10);
