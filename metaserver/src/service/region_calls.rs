//! Calls between regions: a region pulling another's change log, the replication lag
//! every link has, and the image of a volume for a region being brought into it.

use super::*;

/// How long a pull that found records waits for more while the change log grows fast.
const PULL_GATHER: Duration = Duration::from_millis(20);

impl MetaApi {
    pub(super) async fn handle_pull_changes(
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
        let mut applied = self.shared.applied.subscribe();
        let reply = self
            .regions
            .answer_pull(
                &self.db,
                &mut applied,
                |head| self.feed_load.busy(head).then_some(PULL_GATHER),
                self.shared.region,
                to,
                origin,
                r.from,
                r.limit,
                Instant::now() + wait,
            )
            .await?;
        metrics::counter!("meridian_region_records_served_total", "peer" => r.region.to_string())
            .increment(reply.records.len() as u64);
        Ok(Response::new(reply))
    }

    pub(super) async fn handle_region_status(
        &self,
        request: Request<RegionStatusRequest>,
    ) -> Result<Response<RegionStatusResponse>, Status> {
        // It names every volume being brought in: for servers and operators.
        if let Some((claims, _)) = crate::tokens::restricted(&request)? {
            return Err(Status::permission_denied(format!(
                "the regions' status is for servers and admins, not for the token of {:?}",
                claims.subject
            )));
        }
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

    pub(super) async fn handle_volume_image(
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
