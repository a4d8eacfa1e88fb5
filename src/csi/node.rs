//! The CSI node service: a volume is mounted once per node at its staging path (a
//! `meridian mount` child) and bind-mounted into each pod's target path. What it staged
//! and published is kept on disk, and every few seconds (and at start) a mount whose
//! process died is mounted again and its targets bound again.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_proto::pb::csi::node_server;
use meridian_proto::pb::csi::node_service_capability::{self, rpc};
use meridian_proto::pb::csi::volume_usage::Unit;
use meridian_proto::pb::csi::*;
use tonic::{Request, Response, Status};

use super::staging::{self, Published, Records, Staged};
use super::volumes::find_volume;
use super::{Shared, TOPOLOGY_REGION, TOPOLOGY_ZONE, checks, mounter, mounts};

/// How long a look at a mount may take before the mount counts as busy.
const LOOK_PATIENCE: Duration = Duration::from_secs(5);

/// The volume context key naming a folder of the volume to publish instead of its root.
pub const SUBDIR_KEY: &str = "subdir";

/// The key of a node-stage secret holding the volume's access token (docs/security.md).
pub const TOKEN_SECRET: &str = "token";

#[derive(Clone)]
pub struct Node(Arc<Inner>);

/// How the node service is set up.
pub struct NodeConfig {
    pub node_id: String,
    pub zone: Option<String>,
    /// Folders staging and target paths must lie in.
    pub roots: Vec<PathBuf>,
    /// Extra `meridian mount` flags.
    pub mount_flags: Vec<String>,
    /// The socket of a `meridian csi-mounter` that starts and stops the mounts.
    pub mounter: Option<PathBuf>,
}

struct Inner {
    shared: Arc<Shared>,
    node_id: String,
    zone: Option<String>,
    roots: Vec<PathBuf>,
    records: Records,
    mount_flags: Vec<String>,
    mounter: Option<PathBuf>,
    /// The mount processes this run started, by staging path.
    children: Mutex<HashMap<PathBuf, Child>>,
    /// One change of the node's mounts at a time.
    busy: tokio::sync::Mutex<()>,
}

fn internal(what: &str, e: impl std::fmt::Display) -> Status {
    Status::internal(format!("{what}: {e}"))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

impl Node {
    pub fn open(shared: Arc<Shared>, config: NodeConfig, state: &Path) -> anyhow::Result<Self> {
        let records = Records::open(state)
            .map_err(|e| anyhow::anyhow!("state folder {}: {e}", state.display()))?;
        Ok(Node(Arc::new(Inner {
            shared,
            node_id: config.node_id,
            zone: config.zone,
            roots: config.roots,
            records,
            mount_flags: config.mount_flags,
            mounter: config.mounter,
            children: Mutex::new(HashMap::new()),
            busy: tokio::sync::Mutex::new(()),
        })))
    }

    fn confined(&self, path: &str, what: &str) -> Result<PathBuf, Status> {
        checks::confined(path, &self.0.roots, what)
    }

    /// Mounts `volume` at `staging` (a dead mount there is detached first).
    async fn mount(&self, volume: &str, staging: &Path) -> io::Result<u32> {
        let inner = self.0.clone();
        let (volume, staging) = (volume.to_string(), staging.to_path_buf());
        blocking(move || {
            let log = inner.records.log(&staging);
            // The volume's token, when its node-stage secret gave one.
            let mut flags = inner.mount_flags.clone();
            let token = inner.records.token(&staging);
            if token.exists() {
                flags.extend(["--token-file".to_string(), token.display().to_string()]);
            }
            if let Some(socket) = &inner.mounter {
                let ask = mounter::Ask::Mount {
                    volume,
                    staging,
                    meta: inner.shared.meta_addrs.clone(),
                    flags,
                };
                return match mounter::ask(socket, &ask)? {
                    mounter::Answer::Mounted(pid) => Ok(pid),
                    other => Err(io::Error::other(format!("the mounter: {other:?}"))),
                };
            }
            if mounts::mounted_at(&staging).is_some() {
                mounts::unmount(&staging)?;
            }
            std::fs::create_dir_all(&staging)?;
            let child =
                staging::start_mount(&inner.shared.meta_addrs, &volume, &staging, &flags, &log)?;
            let pid = child.id();
            let old = inner.children.lock().unwrap().insert(staging, child);
            if let Some(mut old) = old {
                let _ = old.kill();
                let _ = old.wait();
            }
            Ok(pid)
        })
        .await
    }

    /// Makes every recorded mount answer again: a staging mount whose process died is
    /// mounted anew, and targets bound from a dead mount are bound again.
    pub async fn recover(&self) {
        let _busy = self.0.busy.lock().await;
        self.reap();
        for mut s in self.0.records.all() {
            let staging = s.staging.clone();
            let alive = {
                let st = staging.clone();
                let look = blocking(move || {
                    Ok(
                        mounts::mounted_at(&st).is_some_and(|m| m.fstype.starts_with("fuse"))
                            && mounts::answers(&st),
                    )
                });
                // A mount that does not answer at once is being served again by its
                // supervisor: busy, not dead.
                match tokio::time::timeout(LOOK_PATIENCE, look).await {
                    Ok(r) => r.unwrap_or(false),
                    Err(_) => {
                        tracing::info!(volume = %s.volume, "staged mount is busy; looking again later");
                        continue;
                    }
                }
            };
            if !alive {
                tracing::warn!(volume = %s.volume, staging = %staging.display(), "staged mount is dead: mounting again");
                match self.mount(&s.volume, &staging).await {
                    Ok(pid) => {
                        s.pid = Some(pid);
                        if let Err(e) = self.0.records.put(&s) {
                            tracing::error!(error = %e, "cannot record the new mount");
                        }
                    }
                    Err(e) => {
                        tracing::error!(volume = %s.volume, error = %e, "mounting again failed");
                        continue;
                    }
                }
            }
            for (target, p) in &s.published {
                let (target, st, sub, ro) =
                    (target.clone(), staging.clone(), p.sub.clone(), p.read_only);
                let rebound = tokio::time::timeout(
                    LOOK_PATIENCE,
                    blocking(move || {
                        if mounts::mounted_at(&target).is_some() && mounts::answers(&target) {
                            return Ok(false);
                        }
                        mounts::unmount(&target)?;
                        std::fs::create_dir_all(&target)?;
                        let dir = mounts::open_beneath(&st, &sub)?;
                        mounts::bind_fd(&dir, &target, ro)?;
                        Ok(true)
                    }),
                )
                .await
                .unwrap_or(Ok(false));
                match rebound {
                    Ok(true) => tracing::warn!(volume = %s.volume, "bound a target again"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(volume = %s.volume, error = %e, "binding a target again failed")
                    }
                }
            }
        }
    }

    /// Collects mount processes that exited.
    fn reap(&self) {
        self.0
            .children
            .lock()
            .unwrap()
            .retain(|_, c| matches!(c.try_wait(), Ok(None)));
    }

    pub async fn check_loop(self, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            self.recover().await;
        }
    }

    fn record(&self, staging: &Path) -> Result<Option<Staged>, Status> {
        self.0
            .records
            .get(staging)
            .map_err(|e| internal("staging record", e))
    }

    /// A path this node staged or published `volume` at: the volume must exist, and the
    /// path be one of its staging or target paths here (anything else is not found).
    async fn known_path(&self, volume: &str, path: &str) -> Result<PathBuf, Status> {
        let volume = checks::volume_id(volume)?;
        if path.is_empty() {
            return Err(Status::invalid_argument("volume_path is required"));
        }
        if find_volume(&self.0.shared.meta, volume).await?.is_none() {
            return Err(Status::not_found(format!("volume {volume}")));
        }
        let not_here = || Status::not_found(format!("volume {volume} is not at {path}"));
        let path = checks::absolute_clean(Path::new(path)).map_err(|_| not_here())?;
        self.0
            .records
            .all()
            .into_iter()
            .any(|s| s.volume == volume && (s.staging == path || s.published.contains_key(&path)))
            .then_some(path)
            .ok_or_else(not_here)
    }

    /// The record holding `target`, if any.
    fn publisher_of(&self, target: &Path) -> Option<Staged> {
        self.0
            .records
            .all()
            .into_iter()
            .find(|s| s.published.contains_key(target))
    }
}

#[tonic::async_trait]
impl node_server::Node for Node {
    async fn node_stage_volume(
        &self,
        request: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        let req = request.into_inner();
        let volume = checks::volume_id(&req.volume_id)?.to_string();
        let staging = self.confined(&req.staging_target_path, "staging_target_path")?;
        checks::capability(req.volume_capability.as_ref())?;
        let _busy = self.0.busy.lock().await;
        if let Some(s) = self.record(&staging)? {
            if s.volume != volume {
                return Err(Status::already_exists(format!(
                    "{} holds volume {} already",
                    staging.display(),
                    s.volume
                )));
            }
            let st = staging.clone();
            let look =
                blocking(move || Ok(mounts::mounted_at(&st).is_some() && mounts::answers(&st)));
            // Busy (its supervisor is serving it again) counts as staged.
            let alive = tokio::time::timeout(LOOK_PATIENCE, look)
                .await
                .map(|r| r.unwrap_or(false))
                .unwrap_or(true);
            if alive {
                return Ok(Response::new(NodeStageVolumeResponse {}));
            }
        } else if mounts::mounted_at(&staging).is_some() {
            return Err(Status::failed_precondition(format!(
                "something this plugin did not mount is mounted at {}",
                staging.display()
            )));
        }
        // A volume access token from the volume's node-stage secret: the mount sends it.
        // The plugin's own certificate may reach no volume then: the mount says whether
        // this one exists.
        let token = req.secrets.get(TOKEN_SECRET).map(|t| t.trim());
        match token {
            Some(t) => {
                meridian_proto::token::decode(t).map_err(|e| {
                    Status::invalid_argument(format!("secret {TOKEN_SECRET:?}: {e}"))
                })?;
                self.0
                    .records
                    .put_token(&staging, t)
                    .map_err(|e| internal("keeping the volume's token", e))?;
            }
            None => {
                self.0
                    .records
                    .remove_token(&staging)
                    .map_err(|e| internal("forgetting a volume's token", e))?;
                if find_volume(&self.0.shared.meta, &volume).await?.is_none() {
                    return Err(Status::not_found(format!("volume {volume}")));
                }
            }
        }
        let pid = self
            .mount(&volume, &staging)
            .await
            .map_err(|e| internal("mounting the volume", e))?;
        let mut s = self.record(&staging)?.unwrap_or(Staged {
            volume: volume.clone(),
            staging: staging.clone(),
            pid: None,
            published: Default::default(),
        });
        s.pid = Some(pid);
        self.0
            .records
            .put(&s)
            .map_err(|e| internal("recording the mount", e))?;
        tracing::info!(%volume, staging = %staging.display(), "staged");
        Ok(Response::new(NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        request: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        let req = request.into_inner();
        let volume = checks::volume_id(&req.volume_id)?.to_string();
        let staging = self.confined(&req.staging_target_path, "staging_target_path")?;
        let _busy = self.0.busy.lock().await;
        let record = self.record(&staging)?;
        if let Some(s) = &record
            && s.volume != volume
        {
            return Err(Status::invalid_argument(format!(
                "{} holds volume {}, not {volume}",
                staging.display(),
                s.volume
            )));
        }
        let child = self.0.children.lock().unwrap().remove(&staging);
        let pid = record.as_ref().and_then(|s| s.pid);
        let st = staging.clone();
        let mounter = self.0.mounter.clone();
        blocking(move || {
            match &mounter {
                Some(socket) => match mounter::ask(
                    socket,
                    &mounter::Ask::Stop {
                        staging: st.clone(),
                        pid,
                    },
                )? {
                    mounter::Answer::Stopped => {}
                    other => return Err(io::Error::other(format!("the mounter: {other:?}"))),
                },
                None => {
                    // Longer than a mount takes to send what it holds (its supervisor allows 60 s).
                    staging::stop_mount(child, pid, &st, Duration::from_secs(90));
                    mounts::unmount(&st)?;
                }
            }
            match std::fs::remove_dir(&st) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                // The kubelet's folder may hold its own files: leave it.
                Err(_) => Ok(()),
            }
        })
        .await
        .map_err(|e| internal("unmounting", e))?;
        self.0
            .records
            .remove(&staging)
            .map_err(|e| internal("removing the record", e))?;
        self.0
            .records
            .remove_token(&staging)
            .map_err(|e| internal("forgetting the volume's token", e))?;
        if record.is_some() {
            tracing::info!(%volume, staging = %staging.display(), "unstaged");
        }
        Ok(Response::new(NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let volume = checks::volume_id(&req.volume_id)?.to_string();
        let target = self.confined(&req.target_path, "target_path")?;
        let staging = self.confined(&req.staging_target_path, "staging_target_path")?;
        let cap = checks::capability(req.volume_capability.as_ref())?;
        let read_only = req.readonly || checks::wants_read_only(cap);
        let sub = checks::sub_path(
            req.volume_context
                .get(SUBDIR_KEY)
                .map(String::as_str)
                .unwrap_or(""),
        )?;
        let _busy = self.0.busy.lock().await;
        let mut s = match self.record(&staging)? {
            Some(s) if s.volume == volume => s,
            _ => {
                return Err(Status::failed_precondition(format!(
                    "volume {volume} is not staged at {}",
                    staging.display()
                )));
            }
        };
        let wanted = Published {
            sub: sub.clone(),
            read_only,
        };
        if mounts::mounted_at(&target).is_some() {
            return match s.published.get(&target) {
                Some(p) if *p == wanted => Ok(Response::new(NodePublishVolumeResponse {})),
                _ => Err(Status::already_exists(format!(
                    "{} is published already, differently",
                    target.display()
                ))),
            };
        }
        let (t, st, sb) = (target.clone(), staging.clone(), sub.clone());
        blocking(move || {
            let dir = mounts::open_beneath(&st, &sb)?;
            std::fs::create_dir_all(&t)?;
            mounts::bind_fd(&dir, &t, read_only)
        })
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::InvalidInput => Status::invalid_argument(e.to_string()),
            _ => internal("bind-mounting the volume", e),
        })?;
        s.published.insert(target.clone(), wanted);
        if let Err(e) = self.0.records.put(&s) {
            let _ = mounts::unmount(&target);
            return Err(internal("recording the publish", e));
        }
        tracing::info!(%volume, target = %target.display(), read_only, "published");
        Ok(Response::new(NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        checks::volume_id(&req.volume_id)?;
        let target = self.confined(&req.target_path, "target_path")?;
        let _busy = self.0.busy.lock().await;
        let t = target.clone();
        blocking(move || {
            if mounts::mounted_at(&t).is_some() {
                mounts::unmount(&t)?;
            }
            match std::fs::remove_dir(&t) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    tracing::warn!(target = %t.display(), error = %e, "cannot remove the target folder");
                    Ok(())
                }
                _ => Ok(()),
            }
        })
        .await
        .map_err(|e| internal("unmounting the target", e))?;
        if let Some(mut s) = self.publisher_of(&target) {
            s.published.remove(&target);
            self.0
                .records
                .put(&s)
                .map_err(|e| internal("recording the unpublish", e))?;
            tracing::info!(volume = %s.volume, target = %target.display(), "unpublished");
        }
        Ok(Response::new(NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        let req = request.into_inner();
        let path = self.known_path(&req.volume_id, &req.volume_path).await?;
        let stat = blocking(move || Ok(mounts::statvfs(&path)))
            .await
            .map_err(|e| internal("volume stats", e))?;
        Ok(Response::new(match stat {
            Ok(st) => {
                let bs = st.f_frsize as i64;
                let (blocks, bavail, bfree) =
                    (st.f_blocks as i64, st.f_bavail as i64, st.f_bfree as i64);
                let (files, ffree) = (st.f_files as i64, st.f_ffree as i64);
                NodeGetVolumeStatsResponse {
                    usage: vec![
                        VolumeUsage {
                            available: bavail.saturating_mul(bs),
                            total: blocks.saturating_mul(bs),
                            used: (blocks - bfree).max(0).saturating_mul(bs),
                            unit: Unit::Bytes as i32,
                        },
                        VolumeUsage {
                            available: ffree,
                            total: files,
                            used: (files - ffree).max(0),
                            unit: Unit::Inodes as i32,
                        },
                    ],
                    volume_condition: Some(VolumeCondition {
                        abnormal: false,
                        message: "mounted and answering".into(),
                    }),
                }
            }
            Err(e) => NodeGetVolumeStatsResponse {
                usage: Vec::new(),
                volume_condition: Some(VolumeCondition {
                    abnormal: true,
                    message: format!("the mount does not answer: {e}"),
                }),
            },
        }))
    }

    async fn node_expand_volume(
        &self,
        request: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        let req = request.into_inner();
        let volume = checks::volume_id(&req.volume_id)?;
        self.known_path(volume, &req.volume_path).await?;
        // The quota is the servers': a mount sees a new one at its next statfs.
        let v = find_volume(&self.0.shared.meta, volume)
            .await?
            .ok_or_else(|| Status::not_found(format!("volume {volume}")))?;
        Ok(Response::new(NodeExpandVolumeResponse {
            capacity_bytes: v.policy.quota_bytes.map_or(0, |q| q as i64),
        }))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        let capabilities = [
            rpc::Type::StageUnstageVolume,
            rpc::Type::GetVolumeStats,
            rpc::Type::ExpandVolume,
            rpc::Type::VolumeCondition,
        ]
        .into_iter()
        .map(|t| NodeServiceCapability {
            r#type: Some(node_service_capability::Type::Rpc(
                node_service_capability::Rpc { r#type: t as i32 },
            )),
        })
        .collect();
        Ok(Response::new(NodeGetCapabilitiesResponse { capabilities }))
    }

    async fn node_get_info(
        &self,
        _: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        let mut segments: HashMap<String, String> = [(
            TOPOLOGY_REGION.to_string(),
            self.0.shared.region.to_string(),
        )]
        .into();
        if let Some(z) = &self.0.zone {
            segments.insert(TOPOLOGY_ZONE.to_string(), z.clone());
        }
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.0.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: Some(Topology { segments }),
        }))
    }
}
