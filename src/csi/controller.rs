//! The CSI controller service: CSI volumes are Meridian volumes. A volume's id is its
//! name; its capacity is its byte quota; its topology is the regions it lives in.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use meridian_client::{MetaClient, MetaError};
use meridian_proto::InodeId;
use meridian_proto::cluster::NodeState;
use meridian_proto::ns::{
    Creds, FileKind, NsError, Op, Query, QueryReply, Volume as MVolume, VolumePolicy,
};
use meridian_proto::pb::csi::controller_server;
use meridian_proto::pb::csi::controller_service_capability::{self, rpc};
use meridian_proto::pb::csi::validate_volume_capabilities_response::Confirmed;
use meridian_proto::pb::csi::*;
use tonic::{Request, Response, Status};

use super::checks;
use super::{Shared, TOPOLOGY_REGION};

/// What a ListVolumes paging token starts with.
const TOKEN_PREFIX: &str = "after:";

pub struct Controller {
    pub shared: Arc<Shared>,
}

/// The gRPC status for a metaserver error, by the CSI specification's codes.
pub fn status(e: MetaError) -> Status {
    match e {
        MetaError::Ns(NsError::NotFound(m)) => Status::not_found(m),
        MetaError::Ns(NsError::Exists(m)) => Status::already_exists(m),
        MetaError::Ns(NsError::Invalid(m)) | MetaError::Invalid(m) => Status::invalid_argument(m),
        MetaError::Ns(NsError::Quota(m)) => Status::resource_exhausted(m),
        MetaError::Ns(e @ (NsError::Perm(_) | NsError::Access(_))) => {
            Status::permission_denied(e.to_string())
        }
        MetaError::Denied(m) => Status::permission_denied(m),
        MetaError::Unavailable(m) => Status::unavailable(m),
        other => Status::internal(other.to_string()),
    }
}

/// A volume, or none if there is none by that name.
pub async fn find_volume(meta: &MetaClient, name: &str) -> Result<Option<MVolume>, Status> {
    match meta
        .query(
            &Query::Volume {
                name: name.to_string(),
            },
            false,
        )
        .await
    {
        Ok(QueryReply::Volume(v)) if v.deleted.is_none() => Ok(Some(v)),
        Ok(QueryReply::Volume(_)) | Err(MetaError::Ns(NsError::NotFound(_))) => Ok(None),
        Ok(other) => Err(Status::internal(format!("unexpected reply {other:?}"))),
        Err(e) => Err(status(e)),
    }
}

/// The capacity a CSI client sees: the quota, or 0 (unknown) without one.
fn capacity(v: &MVolume) -> i64 {
    v.policy
        .quota_bytes
        .map_or(0, |q| i64::try_from(q).unwrap_or(i64::MAX))
}

fn regions_of(v: &MVolume, local: u16) -> Vec<u16> {
    if v.policy.regions.is_empty() {
        vec![local]
    } else {
        v.policy.regions.iter().map(|r| r.0).collect()
    }
}

fn topology(region: u16) -> Topology {
    Topology {
        segments: [(TOPOLOGY_REGION.to_string(), region.to_string())].into(),
    }
}

fn csi_volume(v: &MVolume, local: u16) -> Volume {
    Volume {
        capacity_bytes: capacity(v),
        volume_id: v.name.clone(),
        volume_context: Default::default(),
        content_source: None,
        accessible_topology: regions_of(v, local).into_iter().map(topology).collect(),
    }
}

/// The policy a CreateVolume's parameters ask for.
fn policy_from(params: &std::collections::HashMap<String, String>) -> Result<VolumePolicy, Status> {
    let mut policy = VolumePolicy::default();
    let num = |k: &str, v: &str| {
        v.parse::<u32>().map_err(|_| {
            Status::invalid_argument(format!("parameter {k}={v:?} is not a whole number"))
        })
    };
    let mut min_given = false;
    for (k, v) in params {
        match k.as_str() {
            "replicas" => policy.replicas = num(k, v)?,
            "minCopies" => {
                policy.min_copies = num(k, v)?;
                min_given = true;
            }
            "blockSize" => policy.block_size = num(k, v)?,
            "regions" => {
                policy.regions = v
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| {
                        s.trim()
                            .parse::<u16>()
                            .map(meridian_proto::RegionId)
                            .map_err(|_| {
                                Status::invalid_argument(format!(
                                    "parameter regions={v:?}: region ids are numbers"
                                ))
                            })
                    })
                    .collect::<Result<_, _>>()?;
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown parameter {other:?} (known: replicas, minCopies, blockSize, regions)"
                )));
            }
        }
    }
    if !min_given {
        policy.min_copies = policy.min_copies.min(policy.replicas).max(1);
    }
    Ok(policy)
}

/// The quota a capacity range asks for (none: no limit asked).
fn quota_from(range: Option<&CapacityRange>) -> Result<Option<u64>, Status> {
    let Some(r) = range else { return Ok(None) };
    if r.required_bytes < 0 || r.limit_bytes < 0 {
        return Err(Status::invalid_argument("capacities cannot be negative"));
    }
    if r.limit_bytes > 0 && r.required_bytes > r.limit_bytes {
        return Err(Status::out_of_range(format!(
            "required {} bytes is above the limit of {}",
            r.required_bytes, r.limit_bytes
        )));
    }
    Ok(match (r.required_bytes, r.limit_bytes) {
        (0, 0) => None,
        (0, limit) => Some(limit as u64),
        (required, _) => Some(required as u64),
    })
}

/// The regions a topology requirement allows (none: no constraint on regions).
fn allowed_regions(req: Option<&TopologyRequirement>) -> Result<Option<BTreeSet<u16>>, Status> {
    let Some(req) = req else { return Ok(None) };
    let mut allowed = BTreeSet::new();
    for t in req.requisite.iter().chain(&req.preferred) {
        if let Some(r) = t.segments.get(TOPOLOGY_REGION) {
            allowed.insert(r.parse::<u16>().map_err(|_| {
                Status::invalid_argument(format!("topology region {r:?} is not a region id"))
            })?);
        }
    }
    Ok((!allowed.is_empty()).then_some(allowed))
}

/// Whether an existing volume is the one a repeated CreateVolume asks for.
fn same_volume(v: &MVolume, policy: &VolumePolicy, quota: Option<u64>) -> bool {
    v.policy.replicas == policy.replicas
        && v.policy.min_copies == policy.min_copies
        && v.policy.block_size == policy.block_size
        && v.policy.regions == policy.regions
        && v.policy.quota_bytes == quota
}

/// Removes everything in a directory, deepest first, as root.
async fn empty_dir(meta: &MetaClient, dir: InodeId) -> Result<(), Status> {
    loop {
        let page = meta
            .query(
                &Query::ReadDir {
                    ino: dir,
                    after: None,
                    limit: 1000,
                    creds: Creds::root(),
                },
                false,
            )
            .await
            .map_err(status)?;
        let QueryReply::Dir { entries, .. } = page else {
            return Err(Status::internal("unexpected reply to a directory read"));
        };
        let entries: Vec<_> = entries
            .into_iter()
            .filter(|e| e.name != b"." && e.name != b"..")
            .collect();
        if entries.is_empty() {
            return Ok(());
        }
        for e in entries {
            let op = if e.kind == FileKind::Dir {
                Box::pin(empty_dir(meta, e.ino)).await?;
                Op::Rmdir {
                    parent: dir,
                    name: e.name,
                    creds: Creds::root(),
                }
            } else {
                Op::Unlink {
                    parent: dir,
                    name: e.name,
                    creds: Creds::root(),
                }
            };
            match meta.mutate(&op).await {
                Ok(_) | Err(MetaError::Ns(NsError::NotFound(_))) => {}
                Err(e) => return Err(status(e)),
            }
        }
    }
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
            ready_to_use: true,
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
        if req.max_entries < 0 {
            return Err(Status::invalid_argument("max_entries cannot be negative"));
        }
        // A token is "after:" and the last volume of the previous page.
        let after = match req.starting_token.as_str() {
            "" => "",
            t => match t.strip_prefix(TOKEN_PREFIX) {
                Some(name) if checks::is_volume_name(name) => name,
                _ => {
                    return Err(Status::aborted(format!(
                        "starting_token {t:?} is not one this plugin gave"
                    )));
                }
            },
        };
        let QueryReply::Volumes(mut vols) = self
            .shared
            .meta
            .query(&Query::Volumes, false)
            .await
            .map_err(status)?
        else {
            return Err(Status::internal("unexpected reply to a volume list"));
        };
        vols.retain(|v| v.deleted.is_none() && !v.read_only && v.name.as_str() > after);
        vols.sort_by(|a, b| a.name.cmp(&b.name));
        let max = if req.max_entries == 0 {
            usize::MAX
        } else {
            req.max_entries as usize
        };
        let next_token = if vols.len() > max {
            vols.truncate(max);
            vols.last()
                .map(|v| format!("{TOKEN_PREFIX}{}", v.name))
                .unwrap_or_default()
        } else {
            String::new()
        };
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
        if req.max_entries < 0 {
            return Err(Status::invalid_argument("max_entries cannot be negative"));
        }
        let after = match req.starting_token.as_str() {
            "" => "",
            t => match t.strip_prefix(TOKEN_PREFIX) {
                Some(name) if checks::is_volume_name(name) => name,
                _ => {
                    return Err(Status::aborted(format!(
                        "starting_token {t:?} is not one this plugin gave"
                    )));
                }
            },
        };
        let QueryReply::Volumes(mut snaps) = self
            .shared
            .meta
            .query(&Query::Volumes, false)
            .await
            .map_err(status)?
        else {
            return Err(Status::internal("unexpected reply to a volume list"));
        };
        snaps.retain(|v| {
            v.deleted.is_none()
                && v.read_only
                && v.name.as_str() > after
                && (req.snapshot_id.is_empty() || v.name == req.snapshot_id)
                && (req.source_volume_id.is_empty()
                    || v.origin.as_deref() == Some(req.source_volume_id.as_str()))
        });
        snaps.sort_by(|a, b| a.name.cmp(&b.name));
        let max = if req.max_entries == 0 {
            usize::MAX
        } else {
            req.max_entries as usize
        };
        let next_token = if snaps.len() > max {
            snaps.truncate(max);
            snaps
                .last()
                .map(|v| format!("{TOKEN_PREFIX}{}", v.name))
                .unwrap_or_default()
        } else {
            String::new()
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_and_capacities() {
        let p = |kv: &[(&str, &str)]| {
            policy_from(
                &kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        let got = p(&[("replicas", "1"), ("regions", "1,2")]).unwrap();
        assert_eq!((got.replicas, got.min_copies), (1, 1));
        assert_eq!(got.regions.len(), 2);
        assert_eq!(
            p(&[("bogus", "1")]).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            p(&[("replicas", "x")]).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let r = |required, limit| {
            quota_from(Some(&CapacityRange {
                required_bytes: required,
                limit_bytes: limit,
            }))
        };
        assert_eq!(r(0, 0).unwrap(), None);
        assert_eq!(r(10, 0).unwrap(), Some(10));
        assert_eq!(r(0, 20).unwrap(), Some(20));
        assert_eq!(r(30, 20).unwrap_err().code(), tonic::Code::OutOfRange);
        assert_eq!(r(-1, 0).unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
