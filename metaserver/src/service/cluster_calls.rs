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
}
