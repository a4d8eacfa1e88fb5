//! What a CSI volume is as a Meridian volume: its id is the volume's name, its capacity
//! the byte quota, its topology the regions it lives in. Parameters, capacities and
//! topology requirements are read here, and listings are paged here.

use std::collections::BTreeSet;

use meridian_client::{MetaClient, MetaError};
use meridian_proto::InodeId;
use meridian_proto::ns::{
    Creds, FileKind, NsError, Op, Query, QueryReply, Volume as MVolume, VolumePolicy,
};
use meridian_proto::pb::csi::*;
use tonic::Status;

use super::{TOPOLOGY_REGION, checks};

/// What a paging token starts with: "after:" and the last name of the previous page.
const TOKEN_PREFIX: &str = "after:";

/// One page of the volumes `keep` accepts (live ones only), by name, after the
/// `starting_token` a previous page gave; and the token of the next page (empty: none).
pub(super) async fn page(
    meta: &MetaClient,
    max_entries: i32,
    starting_token: &str,
    keep: impl Fn(&MVolume) -> bool,
) -> Result<(Vec<MVolume>, String), Status> {
    if max_entries < 0 {
        return Err(Status::invalid_argument("max_entries cannot be negative"));
    }
    let after = match starting_token {
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
    let QueryReply::Volumes(mut vols) = meta.query(&Query::Volumes, false).await.map_err(status)?
    else {
        return Err(Status::internal("unexpected reply to a volume list"));
    };
    vols.retain(|v| v.deleted.is_none() && v.name.as_str() > after && keep(v));
    vols.sort_by(|a, b| a.name.cmp(&b.name));
    let max = if max_entries == 0 {
        usize::MAX
    } else {
        max_entries as usize
    };
    let next = if vols.len() > max {
        vols.truncate(max);
        vols.last()
            .map(|v| format!("{TOKEN_PREFIX}{}", v.name))
            .unwrap_or_default()
    } else {
        String::new()
    };
    Ok((vols, next))
}

/// The gRPC status for a metaserver error, by the CSI specification's codes.
pub(super) fn status(e: MetaError) -> Status {
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
pub(crate) async fn find_volume(meta: &MetaClient, name: &str) -> Result<Option<MVolume>, Status> {
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
pub(super) fn capacity(v: &MVolume) -> i64 {
    v.policy
        .quota_bytes
        .map_or(0, |q| i64::try_from(q).unwrap_or(i64::MAX))
}

pub(super) fn regions_of(v: &MVolume, local: u16) -> Vec<u16> {
    if v.policy.regions.is_empty() {
        vec![local]
    } else {
        v.policy.regions.iter().map(|r| r.0).collect()
    }
}

pub(super) fn topology(region: u16) -> Topology {
    Topology {
        segments: [(TOPOLOGY_REGION.to_string(), region.to_string())].into(),
    }
}

pub(super) fn csi_volume(v: &MVolume, local: u16) -> Volume {
    Volume {
        capacity_bytes: capacity(v),
        volume_id: v.name.clone(),
        volume_context: Default::default(),
        content_source: None,
        accessible_topology: regions_of(v, local).into_iter().map(topology).collect(),
    }
}

/// The policy a CreateVolume's parameters ask for.
pub(super) fn policy_from(
    params: &std::collections::HashMap<String, String>,
) -> Result<VolumePolicy, Status> {
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
pub(super) fn quota_from(range: Option<&CapacityRange>) -> Result<Option<u64>, Status> {
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
pub(super) fn allowed_regions(
    req: Option<&TopologyRequirement>,
) -> Result<Option<BTreeSet<u16>>, Status> {
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
pub(super) fn same_volume(v: &MVolume, policy: &VolumePolicy, quota: Option<u64>) -> bool {
    v.policy.replicas == policy.replicas
        && v.policy.min_copies == policy.min_copies
        && v.policy.block_size == policy.block_size
        && v.policy.regions == policy.regions
        && v.policy.quota_bytes == quota
}

/// Removes everything in a directory, deepest first, as root.
pub(super) async fn empty_dir(meta: &MetaClient, dir: InodeId) -> Result<(), Status> {
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
