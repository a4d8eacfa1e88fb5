//! The CSI controller service: CSI volumes are Meridian volumes (`volumes.rs`), created,
//! copied, grown, listed and deleted through the region's metaservers.

use std::sync::Arc;
use std::time::Duration;

use meridian_client::MetaError;
use meridian_proto::cluster::NodeState;
use meridian_proto::ns::{NsError, Op, Query, QueryReply, Volume as MVolume};
use meridian_proto::pb::csi::controller_server;
use meridian_proto::pb::csi::controller_service_capability::{self, rpc};
use meridian_proto::pb::csi::validate_volume_capabilities_response::Confirmed;
use meridian_proto::pb::csi::*;
use tonic::{Request, Response, Status};

use super::volumes::{
    allowed_regions, csi_volume, empty_dir, find_volume, page, policy_from, quota_from,
    same_volume, status,
};
use super::{Shared, TOPOLOGY_REGION, checks};

pub struct Controller {
    pub shared: Arc<Shared>,
}

impl Controller {
    /// A snapshot as CSI describes it (its time is its root's birth).
    async fn snapshot(&self, v: &MVolume) -> Result<Snapshot, Status> {
        let created = match self
            .shared
            .meta
            .query(&Query::GetAttr { ino: v.root }, false)
            .await
            .map_err(status)?
        {
            QueryReply::Attr(a) => Some(prost_types::Timestamp {
                seconds: a.crtime.sec,
                nanos: a.crtime.nsec as i32,
            }),
            _ => None,
        };
        Ok(Snapshot {
            size_bytes: i64::try_from(v.used_bytes).unwrap_or(i64::MAX),
            snapshot_id: v.name.clone(),
            source_volume_id: v.origin.clone().unwrap_or_default(),
            creation_time: created,
            ready_to_use: v.copying.is_none(),
            group_snapshot_id: String::new(),
        })
    }

    /// CreateVolume from a snapshot (`snapshot`) or another volume: a writable copy
    /// sharing its blocks, with the capacity asked (or the source's).
    async fn create_copy(
        &self,
        req: &CreateVolumeRequest,
        source: &str,
        snapshot: bool,
    ) -> Result<CreateVolumeResponse, Status> {
        let meta = &self.shared.meta;
        let name = checks::volume_name_for(&req.name);
        let quota = quota_from(req.capacity_range.as_ref())?;
        let content_source = req.volume_content_source.clone();
        let answer = |v: &MVolume| CreateVolumeResponse {
            volume: Some(Volume {
                content_source: content_source.clone(),
                ..csi_volume(v, self.shared.region)
            }),
        };
        if let Some(v) = find_volume(meta, &name).await? {
            if v.copying.is_some() && v.origin.as_deref() == Some(source) {
                // The CSI spec's answer to a create of a volume still being made.
                return Err(Status::aborted(format!(
                    "volume {name} is still being copied from {source}"
                )));
            }
            return if v.origin.as_deref() == Some(source)
                && !v.read_only
                && (quota.is_none() || v.policy.quota_bytes == quota)
            {
                Ok(answer(&v))
            } else {
                Err(Status::already_exists(format!(
                    "volume {name} exists, and is not this copy of {source}"
                )))
            };
        }
        let src = match find_volume(meta, source).await? {
            Some(v) if v.read_only == snapshot => v,
            _ => {
                let what = if snapshot { "snapshot" } else { "volume" };
                return Err(Status::not_found(format!("{what} {source}")));
            }
        };
        if let (Some(q), Some(have)) = (quota, src.policy.quota_bytes.or(Some(src.used_bytes)))
            && q < have.max(src.used_bytes)
        {
            return Err(Status::out_of_range(format!(
                "{source} holds {} bytes: a copy cannot be smaller",
                have.max(src.used_bytes)
            )));
        }
        let made = meta
            .mutate(&Op::CloneVolume {
                source: source.to_string(),
                name: name.clone(),
                read_only: false,
            })
            .await;
        let mut v = match made {
            Ok(meridian_proto::ns::Reply::Volume(v)) => v,
            Err(MetaError::Ns(NsError::NotSupported(m))) => {
                return Err(Status::failed_precondition(m));
            }
            Ok(other) => return Err(Status::internal(format!("unexpected reply {other:?}"))),
            Err(e) => return Err(status(e)),
        };
        if quota.is_some() && v.policy.quota_bytes != quota {
            meta.mutate(&Op::SetVolumeQuota {
                name: name.clone(),
                quota_bytes: quota,
            })
            .await
            .map_err(status)?;
            v.policy.quota_bytes = quota;
        }
        tracing::info!(volume = %v.name, %source, "volume made from a copy");
        Ok(answer(&v))
    }
}

#[tonic::async_trait]
impl controller_server::Controller for Controller {
    async fn create_volume(
        &self,
        request: Request<CreateVolumeRequest>,
    ) -> Result<Response<CreateVolumeResponse>, Status> {
        let req = request.into_inner();
        if req.name.is_empty() {
            return Err(Status::invalid_argument("name is required"));
        }
        if req.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("volume_capabilities are required"));
        }
        for cap in &req.volume_capabilities {
            checks::capability(Some(cap))?;
        }
        let source = match req
            .volume_content_source
            .as_ref()
            .and_then(|c| c.r#type.as_ref())
        {
            None => None,
            Some(volume_content_source::Type::Snapshot(s)) => {
                Some((checks::volume_id(&s.snapshot_id)?.to_string(), true))
            }
            Some(volume_content_source::Type::Volume(v)) => {
                Some((checks::volume_id(&v.volume_id)?.to_string(), false))
            }
        };
        if let Some((src, snapshot)) = &source {
            return self
                .create_copy(&req, src, *snapshot)
                .await
                .map(Response::new);
        }
        let mut policy = policy_from(&req.parameters)?;
        let quota = quota_from(req.capacity_range.as_ref())?;
        policy.quota_bytes = quota;
        let local = self.shared.region;
        if let Some(allowed) = allowed_regions(req.accessibility_requirements.as_ref())? {
            let wanted: Vec<u16> = if policy.regions.is_empty() {
                vec![local]
            } else {
                policy.regions.iter().map(|r| r.0).collect()
            };
            if let Some(r) = wanted.iter().find(|r| !allowed.contains(r)) {
                return Err(Status::resource_exhausted(format!(
                    "the volume would live in region {r}, which the topology requirement does not allow"
                )));
            }
        }
        let name = checks::volume_name_for(&req.name);
        let meta = &self.shared.meta;
        if let Some(v) = find_volume(meta, &name).await? {
            return if same_volume(&v, &policy, quota) {
                Ok(Response::new(CreateVolumeResponse {
                    volume: Some(csi_volume(&v, local)),
                }))
            } else {
                Err(Status::already_exists(format!(
                    "volume {name} exists with another capacity or policy"
                )))
            };
        }
        let made = meta
            .mutate(&Op::CreateVolume {
                name: name.clone(),
                policy: policy.clone(),
            })
            .await;
        let v = match made {
            Ok(meridian_proto::ns::Reply::Volume(v)) => v,
            // A concurrent create of the same name: answer as a repeat would.
            Err(MetaError::Ns(NsError::Exists(_))) => match find_volume(meta, &name).await? {
                Some(v) if same_volume(&v, &policy, quota) => v,
                _ => {
                    return Err(Status::already_exists(format!(
                        "volume {name} exists with another capacity or policy"
                    )));
                }
            },
            Ok(other) => return Err(Status::internal(format!("unexpected reply {other:?}"))),
            Err(e) => return Err(status(e)),
        };
        tracing::info!(volume = %v.name, csi_name = %req.name, "created volume");
        Ok(Response::new(CreateVolumeResponse {
            volume: Some(csi_volume(&v, local)),
        }))
    }

    async fn delete_volume(
        &self,
        request: Request<DeleteVolumeRequest>,
    ) -> Result<Response<DeleteVolumeResponse>, Status> {
        let req = request.into_inner();
        let name = checks::volume_id(&req.volume_id)?;
        let meta = &self.shared.meta;
        let Some(v) = find_volume(meta, name).await? else {
            // Deleting what is not there succeeds: the call may be a retry.
            return Ok(Response::new(DeleteVolumeResponse {}));
        };
        if v.read_only {
            return Err(Status::invalid_argument(format!(
                "{name} is a snapshot: delete it with DeleteSnapshot"
            )));
        }
        empty_dir(meta, v.root).await?;
        match meta
            .mutate(&Op::DeleteVolume {
                name: name.to_string(),
            })
            .await
        {
            Ok(_) | Err(MetaError::Ns(NsError::NotFound(_))) => {}
            Err(MetaError::Ns(NsError::NotEmpty(m))) => {
                // Something wrote to it while it was being emptied.
                return Err(Status::failed_precondition(format!(
                    "{m}: it was written to while being deleted"
                )));
            }
            Err(e) => return Err(status(e)),
        }
        tracing::info!(volume = %name, "deleted volume");
        Ok(Response::new(DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        _: Request<ControllerPublishVolumeRequest>,
    ) -> Result<Response<ControllerPublishVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "no controller publish: any node mounts a volume directly",
        ))
    }

    async fn controller_unpublish_volume(
        &self,
        _: Request<ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<ControllerUnpublishVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "no controller publish: any node mounts a volume directly",
        ))
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<ValidateVolumeCapabilitiesResponse>, Status> {
        let req = request.into_inner();
        let name = checks::volume_id(&req.volume_id)?;
        if req.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("volume_capabilities are required"));
        }
        if find_volume(&self.shared.meta, name).await?.is_none() {
            return Err(Status::not_found(format!("volume {name}")));
        }
        let refused: Vec<String> = req
            .volume_capabilities
            .iter()
            .filter_map(checks::unsupported)
            .collect();
        Ok(Response::new(if refused.is_empty() {
            ValidateVolumeCapabilitiesResponse {
                confirmed: Some(Confirmed {
                    volume_context: req.volume_context,
                    volume_capabilities: req.volume_capabilities,
                    parameters: req.parameters,
                    mutable_parameters: Default::default(),
                }),
                message: String::new(),
            }
        } else {
            ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: refused.join("; "),
            }
        }))
    }

    async fn list_volumes(
        &self,
        request: Request<ListVolumesRequest>,
    ) -> Result<Response<ListVolumesResponse>, Status> {
        let req = request.into_inner();
        let (vols, next_token) = page(
            &self.shared.meta,
            req.max_entries,
            &req.starting_token,
            |v| !v.read_only,
        )
        .await?;
        let local = self.shared.region;
        let entries = vols
            .iter()
            .map(|v| list_volumes_response::Entry {
                volume: Some(csi_volume(v, local)),
                status: None,
            })
            .collect();
        Ok(Response::new(ListVolumesResponse {
            entries,
            next_token,
        }))
    }

    async fn get_capacity(
        &self,
        request: Request<GetCapacityRequest>,
    ) -> Result<Response<GetCapacityResponse>, Status> {
        let req = request.into_inner();
        let policy = policy_from(&req.parameters)?;
        let none = || {
            Response::new(GetCapacityResponse {
                available_capacity: 0,
                maximum_volume_size: None,
                minimum_volume_size: None,
            })
        };
        if req
            .volume_capabilities
            .iter()
            .any(|c| checks::unsupported(c).is_some())
        {
            return Ok(none());
        }
        if let Some(t) = &req.accessible_topology
            && let Some(r) = t.segments.get(TOPOLOGY_REGION)
            && r.parse::<u16>().ok() != Some(self.shared.region)
        {
            // This plugin's metaservers know only their own region's chunkservers.
            return Ok(none());
        }
        let map = self
            .shared
            .meta
            .cluster_map(0, Duration::ZERO)
            .await
            .map_err(status)?;
        let raw: u64 = map
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Up)
            .map(|n| n.capacity)
            .sum();
        let available = raw / u64::from(policy.replicas.max(1));
        Ok(Response::new(GetCapacityResponse {
            available_capacity: i64::try_from(available).unwrap_or(i64::MAX),
            maximum_volume_size: None,
            minimum_volume_size: None,
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<ControllerGetCapabilitiesResponse>, Status> {
        let capabilities = [
            rpc::Type::CreateDeleteVolume,
            rpc::Type::ListVolumes,
            rpc::Type::GetCapacity,
            rpc::Type::ExpandVolume,
            rpc::Type::CreateDeleteSnapshot,
            rpc::Type::ListSnapshots,
            rpc::Type::CloneVolume,
        ]
        .into_iter()
        .map(|t| ControllerServiceCapability {
            r#type: Some(controller_service_capability::Type::Rpc(
                controller_service_capability::Rpc { r#type: t as i32 },
            )),
        })
        .collect();
        Ok(Response::new(ControllerGetCapabilitiesResponse {
            capabilities,
        }))
    }

    async fn create_snapshot(
        &self,
        request: Request<CreateSnapshotRequest>,
    ) -> Result<Response<CreateSnapshotResponse>, Status> {
        let req = request.into_inner();
        if req.source_volume_id.is_empty() {
            return Err(Status::invalid_argument("source_volume_id is required"));
        }
        let source = checks::volume_id(&req.source_volume_id)?;
        if req.name.is_empty() {
            return Err(Status::invalid_argument("name is required"));
        }
        if let Some(k) = req.parameters.keys().next() {
            return Err(Status::invalid_argument(format!(
                "unknown snapshot parameter {k:?}"
            )));
        }
        let name = checks::volume_name_for(&req.name);
        let meta = &self.shared.meta;
        if let Some(v) = find_volume(meta, &name).await? {
            return if v.read_only && v.origin.as_deref() == Some(source) {
                Ok(Response::new(CreateSnapshotResponse {
                    snapshot: Some(self.snapshot(&v).await?),
                }))
            } else {
                Err(Status::already_exists(format!(
                    "{name} exists, and is not a snapshot of {source}"
                )))
            };
        }
        match find_volume(meta, source).await? {
            Some(v) if !v.read_only => {}
            _ => return Err(Status::not_found(format!("volume {source}"))),
        }
        let made = meta
            .mutate(&Op::CloneVolume {
                source: source.to_string(),
                name: name.clone(),
                read_only: true,
            })
            .await;
        let v = match made {
            Ok(meridian_proto::ns::Reply::Volume(v)) => v,
            Err(MetaError::Ns(NsError::Exists(_))) => match find_volume(meta, &name).await? {
                Some(v) if v.read_only && v.origin.as_deref() == Some(source) => v,
                _ => return Err(Status::already_exists(format!("{name} exists"))),
            },
            Err(MetaError::Ns(NsError::NotSupported(m))) => {
                return Err(Status::failed_precondition(m));
            }
            Ok(other) => return Err(Status::internal(format!("unexpected reply {other:?}"))),
            Err(e) => return Err(status(e)),
        };
        tracing::info!(snapshot = %v.name, %source, "snapshot taken");
        Ok(Response::new(CreateSnapshotResponse {
            snapshot: Some(self.snapshot(&v).await?),
        }))
    }

    async fn delete_snapshot(
        &self,
        request: Request<DeleteSnapshotRequest>,
    ) -> Result<Response<DeleteSnapshotResponse>, Status> {
        let req = request.into_inner();
        if req.snapshot_id.is_empty() {
            return Err(Status::invalid_argument("snapshot_id is required"));
        }
        let name = checks::volume_id(&req.snapshot_id)?;
        let meta = &self.shared.meta;
        // A volume that is not a snapshot is no snapshot of this id: nothing to delete.
        if let Some(v) = find_volume(meta, name).await?
            && v.read_only
        {
            match meta
                .mutate(&Op::DeleteVolume {
                    name: name.to_string(),
                })
                .await
            {
                Ok(_) | Err(MetaError::Ns(NsError::NotFound(_))) => {}
                Err(e) => return Err(status(e)),
            }
            tracing::info!(snapshot = %name, "snapshot deleted");
        }
        Ok(Response::new(DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        request: Request<ListSnapshotsRequest>,
    ) -> Result<Response<ListSnapshotsResponse>, Status> {
        let req = request.into_inner();
        let (snaps, next_token) = page(
            &self.shared.meta,
            req.max_entries,
            &req.starting_token,
            |v| {
                v.read_only
                    && (req.snapshot_id.is_empty() || v.name == req.snapshot_id)
                    && (req.source_volume_id.is_empty()
                        || v.origin.as_deref() == Some(req.source_volume_id.as_str()))
            },
        )
        .await?;
        let mut entries = Vec::with_capacity(snaps.len());
        for v in &snaps {
            entries.push(list_snapshots_response::Entry {
                snapshot: Some(self.snapshot(v).await?),
            });
        }
        Ok(Response::new(ListSnapshotsResponse {
            entries,
            next_token,
        }))
    }

    async fn get_snapshot(
        &self,
        request: Request<GetSnapshotRequest>,
    ) -> Result<Response<GetSnapshotResponse>, Status> {
        let req = request.into_inner();
        let name = checks::volume_id(&req.snapshot_id)?;
        match find_volume(&self.shared.meta, name).await? {
            Some(v) if v.read_only => Ok(Response::new(GetSnapshotResponse {
                snapshot: Some(self.snapshot(&v).await?),
            })),
            _ => Err(Status::not_found(format!("snapshot {name}"))),
        }
    }

    async fn controller_expand_volume(
        &self,
        request: Request<ControllerExpandVolumeRequest>,
    ) -> Result<Response<ControllerExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        let name = checks::volume_id(&req.volume_id)?;
        let range = req
            .capacity_range
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("capacity_range is required"))?;
        if let Some(cap) = &req.volume_capability {
            checks::capability(Some(cap))?;
        }
        let wanted = quota_from(Some(range))?;
        let meta = &self.shared.meta;
        let v = find_volume(meta, name)
            .await?
            .ok_or_else(|| Status::not_found(format!("volume {name}")))?;
        let capacity_bytes = match (v.policy.quota_bytes, wanted) {
            // No quota: it holds any size already.
            (None, w) => w.map_or(0, |w| w as i64),
            (Some(q), Some(w)) if w > q => {
                meta.mutate(&Op::SetVolumeQuota {
                    name: name.to_string(),
                    quota_bytes: Some(w),
                })
                .await
                .map_err(status)?;
                tracing::info!(volume = %name, from = q, to = w, "expanded volume");
                w as i64
            }
            // Never shrinks: an expansion to less than it has is already done.
            (Some(q), _) => q as i64,
        };
        Ok(Response::new(ControllerExpandVolumeResponse {
            capacity_bytes,
            node_expansion_required: false,
        }))
    }

    async fn controller_get_volume(
        &self,
        _: Request<ControllerGetVolumeRequest>,
    ) -> Result<Response<ControllerGetVolumeResponse>, Status> {
        Err(Status::unimplemented("ControllerGetVolume is not offered"))
    }

    async fn controller_modify_volume(
        &self,
        _: Request<ControllerModifyVolumeRequest>,
    ) -> Result<Response<ControllerModifyVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "ControllerModifyVolume is not offered",
        ))
    }
}
