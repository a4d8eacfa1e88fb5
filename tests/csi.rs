//! The CSI plugin (`meridian csi`) over its unix socket, against a real region: what
//! csi-sanity checks (idempotent create and delete, capability validation, expansion,
//! paging, stage and publish twice, unpublish and unstage of unknown targets, missing
//! arguments, paths outside the plugin's folders), with real FUSE and bind mounts that
//! this process writes to and reads from, and a plugin restarted under its mounts.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use common::{MERIDIAN, Region, log_tail, wait_for};
use hyper_util::rt::TokioIo;
use meridian_proto::pb::csi::controller_client::ControllerClient;
use meridian_proto::pb::csi::identity_client::IdentityClient;
use meridian_proto::pb::csi::node_client::NodeClient;
use meridian_proto::pb::csi::volume_capability::access_mode::Mode;
use meridian_proto::pb::csi::volume_capability::{
    AccessMode, AccessType, BlockVolume, MountVolume,
};
use meridian_proto::pb::csi::*;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

const GIB: i64 = 1 << 30;

/// A `meridian csi --mode all` process; on drop it is killed and every mount under its
/// kubelet folder is detached (which ends the mount processes it started).
struct Csi {
    child: Option<Child>,
    sock: PathBuf,
    root: PathBuf,
    log: PathBuf,
    args: Vec<String>,
}

impl Csi {
    fn start(dir: &Path, meta: &str) -> Result<Self> {
        Self::start_with(dir, meta, &[])
    }

    fn start_with(dir: &Path, meta: &str, extra: &[&str]) -> Result<Self> {
        let root = dir.join("kubelet");
        fs::create_dir_all(&root)?;
        let root = root.canonicalize()?;
        let sock = dir.join("plugin/csi.sock");
        let args: Vec<String> = vec![
            "csi".to_string(),
            "--endpoint".into(),
            format!("unix://{}", sock.display()),
            "--node-id".into(),
            "node-1".into(),
            "--zone".into(),
            "z1".into(),
            "--meta".into(),
            meta.into(),
            "--state-dir".into(),
            dir.join("state").display().to_string(),
            "--kubelet-dir".into(),
            root.display().to_string(),
            "--check-every-secs".into(),
            "1".into(),
        ]
        .into_iter()
        .chain(extra.iter().map(|a| a.to_string()))
        .collect();
        let mut csi = Csi {
            child: None,
            sock,
            root,
            log: dir.join("csi.log"),
            args,
        };
        csi.spawn()?;
        Ok(csi)
    }

    fn spawn(&mut self) -> Result<()> {
        let before = fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches("serving")
            .count();
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        self.child = Some(
            Command::new(MERIDIAN)
                .args(&self.args)
                .env("MERIDIAN_LOG", "info")
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()?,
        );
        let log = self.log.clone();
        wait_for(Duration::from_secs(30), "the CSI plugin to serve", || {
            let n = fs::read_to_string(&log).ok()?.matches("serving").count();
            (n > before).then_some(())
        })
        .with_context(|| log_tail(&self.log, 30))
    }

    /// kill -9 of the plugin alone (its mounts' processes are their own).
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    async fn channel(&self) -> Result<Channel> {
        let sock = self.sock.clone();
        Ok(Endpoint::try_from("http://csi.invalid")?
            .connect_with_connector(tower::service_fn(move |_| {
                let sock = sock.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(sock).await?,
                    ))
                }
            }))
            .await?)
    }
}

impl Drop for Csi {
    fn drop(&mut self) {
        self.kill();
        let prefix = self.root.display().to_string();
        let mut points: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|p| p.starts_with(&prefix))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").arg("-l").arg(&p).status();
        }
    }
}

fn mount_cap(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

fn block_cap() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    }
}

fn create_req(name: &str, bytes: i64) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount_cap(Mode::MultiNodeMultiWriter)],
        ..Default::default()
    }
}

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}

fn stage_req(volume: &str, staging: &Path) -> NodeStageVolumeRequest {
    NodeStageVolumeRequest {
        volume_id: volume.into(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(mount_cap(Mode::MultiNodeMultiWriter)),
        ..Default::default()
    }
}

fn publish_req(volume: &str, staging: &Path, target: &Path, ro: bool) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: volume.into(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(mount_cap(Mode::MultiNodeMultiWriter)),
        readonly: ro,
        ..Default::default()
    }
}

fn is_mount_point(p: &Path) -> bool {
    common::is_mounted(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_does_what_csi_sanity_checks_with_real_mounts() -> Result<()> {
    let region = Region::start()?;
    let csi = Csi::start(&region.meta.dir.path().join("csi"), &region.meta_addrs())?;
    let ch = csi.channel().await?;
    let mut ident = IdentityClient::new(ch.clone());
    let mut ctl = ControllerClient::new(ch.clone());
    let mut node = NodeClient::new(ch);

    // Identity.
    let info = ident
        .get_plugin_info(GetPluginInfoRequest {})
        .await?
        .into_inner();
    assert_eq!(info.name, "csi.meridian.io");
    assert!(!info.vendor_version.is_empty());
    assert_eq!(
        ident.probe(ProbeRequest {}).await?.into_inner().ready,
        Some(true)
    );
    let caps = ident
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await?
        .into_inner()
        .capabilities;
    assert!(caps.iter().any(|c| matches!(
        &c.r#type,
        Some(plugin_capability::Type::Service(s)) if s.r#type == plugin_capability::service::Type::ControllerService as i32
    )));
    let ctl_caps: Vec<i32> = ctl
        .controller_get_capabilities(ControllerGetCapabilitiesRequest {})
        .await?
        .into_inner()
        .capabilities
        .into_iter()
        .filter_map(|c| {
            c.r#type
                .map(|controller_service_capability::Type::Rpc(r)| r.r#type)
        })
        .collect();
    use controller_service_capability::rpc::Type as Rpc;
    for want in [
        Rpc::CreateDeleteVolume,
        Rpc::ListVolumes,
        Rpc::ExpandVolume,
        Rpc::GetCapacity,
    ] {
        assert!(ctl_caps.contains(&(want as i32)), "{want:?} missing");
    }

    // Missing and bad arguments are refused.
    assert_eq!(
        code(ctl.create_volume(create_req("", GIB)).await),
        Code::InvalidArgument
    );
    let mut no_caps = create_req("pvc-x", GIB);
    no_caps.volume_capabilities.clear();
    assert_eq!(
        code(ctl.create_volume(no_caps).await),
        Code::InvalidArgument
    );
    let mut block = create_req("pvc-x", GIB);
    block.volume_capabilities = vec![block_cap()];
    assert_eq!(code(ctl.create_volume(block).await), Code::InvalidArgument);
    let mut bogus = create_req("pvc-x", GIB);
    bogus.parameters.insert("bogus".into(), "1".into());
    assert_eq!(code(ctl.create_volume(bogus).await), Code::InvalidArgument);
    let mut backwards = create_req("pvc-x", 2 * GIB);
    backwards.capacity_range.as_mut().unwrap().limit_bytes = GIB;
    assert_eq!(code(ctl.create_volume(backwards).await), Code::OutOfRange);
    let mut from_snap = create_req("pvc-x", GIB);
    from_snap.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Snapshot(
            volume_content_source::SnapshotSource {
                snapshot_id: "s".into(),
            },
        )),
    });
    assert_eq!(code(ctl.create_volume(from_snap).await), Code::NotFound);
    // None of them made a volume.
    let listed = |r: ListVolumesResponse| -> Vec<String> {
        r.entries
            .into_iter()
            .filter_map(|e| e.volume.map(|v| v.volume_id))
            .collect()
    };
    let all = listed(
        ctl.list_volumes(ListVolumesRequest::default())
            .await?
            .into_inner(),
    );
    assert!(!all.contains(&"pvc-x".to_string()), "{all:?}");

    // Create is idempotent by name; the same name with another size is refused.
    let mut params = create_req("pvc-one", GIB);
    params.parameters.insert("replicas".into(), "3".into());
    let v = ctl
        .create_volume(params.clone())
        .await?
        .into_inner()
        .volume
        .unwrap();
    assert_eq!((v.volume_id.as_str(), v.capacity_bytes), ("pvc-one", GIB));
    assert_eq!(v.accessible_topology.len(), 1);
    let again = ctl
        .create_volume(params)
        .await?
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(again, v);
    assert_eq!(
        code(ctl.create_volume(create_req("pvc-one", 2 * GIB)).await),
        Code::AlreadyExists
    );
    let odd = ctl
        .create_volume(create_req("Sanity Volume 7", GIB))
        .await?
        .into_inner()
        .volume
        .unwrap();
    assert!(odd.volume_id.starts_with("csi-"), "{}", odd.volume_id);
    let odd_again = ctl
        .create_volume(create_req("Sanity Volume 7", GIB))
        .await?
        .into_inner();
    assert_eq!(odd_again.volume.unwrap().volume_id, odd.volume_id);

    // Capabilities: every filesystem mode, no block access.
    assert_eq!(
        code(
            ctl.validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
                volume_id: "pvc-missing".into(),
                volume_capabilities: vec![mount_cap(Mode::SingleNodeWriter)],
                ..Default::default()
            })
            .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            ctl.validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
                volume_id: "pvc-one".into(),
                ..Default::default()
            })
            .await
        ),
        Code::InvalidArgument
    );
    for mode in [
        Mode::SingleNodeWriter,
        Mode::MultiNodeReaderOnly,
        Mode::MultiNodeMultiWriter,
    ] {
        let r = ctl
            .validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
                volume_id: "pvc-one".into(),
                volume_capabilities: vec![mount_cap(mode)],
                ..Default::default()
            })
            .await?
            .into_inner();
        assert!(r.confirmed.is_some(), "{mode:?}: {}", r.message);
    }
    let r = ctl
        .validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
            volume_id: "pvc-one".into(),
            volume_capabilities: vec![block_cap()],
            ..Default::default()
        })
        .await?
        .into_inner();
    assert!(
        r.confirmed.is_none() && r.message.contains("block"),
        "{r:?}"
    );

    // Paging walks every volume once; a token it never gave is refused.
    ctl.create_volume(create_req("pvc-two", GIB)).await?;
    let mut token = String::new();
    let mut paged = Vec::new();
    loop {
        let r = ctl
            .list_volumes(ListVolumesRequest {
                max_entries: 1,
                starting_token: token.clone(),
            })
            .await?
            .into_inner();
        assert!(r.entries.len() <= 1);
        token = r.next_token.clone();
        paged.extend(listed(r));
        if token.is_empty() {
            break;
        }
    }
    let mut whole = listed(
        ctl.list_volumes(ListVolumesRequest::default())
            .await?
            .into_inner(),
    );
    whole.sort();
    assert_eq!(paged, whole);
    for want in ["pvc-one", "pvc-two", odd.volume_id.as_str(), "default"] {
        assert!(paged.iter().any(|p| p == want), "{want} not in {paged:?}");
    }
    assert_eq!(
        code(
            ctl.list_volumes(ListVolumesRequest {
                max_entries: 1,
                starting_token: "pvc-one".into(),
            })
            .await
        ),
        Code::Aborted
    );

    // Expansion raises the quota, never lowers it.
    let grow = |id: &str, bytes| ControllerExpandVolumeRequest {
        volume_id: id.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        ..Default::default()
    };
    let r = ctl
        .controller_expand_volume(grow("pvc-one", 3 * GIB))
        .await?
        .into_inner();
    assert_eq!(r.capacity_bytes, 3 * GIB);
    let r = ctl
        .controller_expand_volume(grow("pvc-one", GIB))
        .await?
        .into_inner();
    assert_eq!(r.capacity_bytes, 3 * GIB);
    assert_eq!(
        code(ctl.controller_expand_volume(grow("pvc-nope", GIB)).await),
        Code::NotFound
    );
    let mut no_range = grow("pvc-one", GIB);
    no_range.capacity_range = None;
    assert_eq!(
        code(ctl.controller_expand_volume(no_range).await),
        Code::InvalidArgument
    );
    let cap = ctl
        .get_capacity(GetCapacityRequest::default())
        .await?
        .into_inner();
    assert!(cap.available_capacity > 0);
    assert_eq!(
        code(ctl.create_snapshot(CreateSnapshotRequest::default()).await),
        Code::InvalidArgument
    );

    // Node identity.
    let ni = node
        .node_get_info(NodeGetInfoRequest {})
        .await?
        .into_inner();
    assert_eq!(ni.node_id, "node-1");
    let segs = ni.accessible_topology.unwrap().segments;
    assert_eq!(
        segs.get("topology.meridian.io/zone").map(String::as_str),
        Some("z1")
    );
    let region_seg = segs.get("topology.meridian.io/region").cloned().unwrap();
    assert_eq!(
        v.accessible_topology[0].segments["topology.meridian.io/region"],
        region_seg
    );

    // Staging: missing arguments, paths outside the plugin's folders and bad ids are
    // refused and create nothing.
    let root = csi.root.clone();
    let staging = root.join("plugins/staging/one");
    let mut r = stage_req("pvc-one", &staging);
    r.volume_id.clear();
    assert_eq!(code(node.node_stage_volume(r).await), Code::InvalidArgument);
    let mut r = stage_req("pvc-one", &staging);
    r.staging_target_path.clear();
    assert_eq!(code(node.node_stage_volume(r).await), Code::InvalidArgument);
    let mut r = stage_req("pvc-one", &staging);
    r.volume_capability = None;
    assert_eq!(code(node.node_stage_volume(r).await), Code::InvalidArgument);
    let outside = region.meta.dir.path().join("outside");
    assert_eq!(
        code(node.node_stage_volume(stage_req("pvc-one", &outside)).await),
        Code::InvalidArgument
    );
    let dotdot = PathBuf::from(format!("{}/plugins/../../outside2", root.display()));
    assert_eq!(
        code(node.node_stage_volume(stage_req("pvc-one", &dotdot)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            node.node_stage_volume(stage_req("../pvc-one", &staging))
                .await
        ),
        Code::InvalidArgument
    );
    assert!(!outside.exists() && !region.meta.dir.path().join("outside2").exists());
    assert_eq!(
        code(
            node.node_stage_volume(stage_req("pvc-nope", &staging))
                .await
        ),
        Code::NotFound
    );

    // Stage twice, publish twice (one read-only), and a subdirectory.
    node.node_stage_volume(stage_req("pvc-one", &staging))
        .await?;
    node.node_stage_volume(stage_req("pvc-one", &staging))
        .await?;
    assert!(is_mount_point(&staging));
    let (a, b, c) = (
        root.join("pods/a/volumes/vol"),
        root.join("pods/b/volumes/vol"),
        root.join("pods/c/volumes/vol"),
    );
    let mut no_staging = publish_req("pvc-one", &staging, &a, false);
    no_staging.staging_target_path.clear();
    assert_eq!(
        code(node.node_publish_volume(no_staging).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            node.node_publish_volume(publish_req(
                "pvc-one",
                &root.join("plugins/staging/none"),
                &a,
                false
            ))
            .await
        ),
        Code::FailedPrecondition
    );
    node.node_publish_volume(publish_req("pvc-one", &staging, &a, false))
        .await?;
    node.node_publish_volume(publish_req("pvc-one", &staging, &a, false))
        .await?;
    node.node_publish_volume(publish_req("pvc-one", &staging, &b, true))
        .await?;
    assert_eq!(
        code(
            node.node_publish_volume(publish_req("pvc-one", &staging, &b, false))
                .await
        ),
        Code::AlreadyExists
    );
    let mut sub = publish_req("pvc-one", &staging, &c, false);
    sub.volume_context.insert("subdir".into(), "data/x".into());
    node.node_publish_volume(sub).await?;
    // A symlink planted in the volume cannot make a subdirectory reach a host path.
    std::os::unix::fs::symlink("/etc", a.join("evil"))?;
    let mut planted = publish_req("pvc-one", &staging, &root.join("pods/e/vol"), false);
    planted
        .volume_context
        .insert("subdir".into(), "evil".into());
    assert_eq!(
        code(node.node_publish_volume(planted).await),
        Code::InvalidArgument
    );
    assert!(!is_mount_point(&root.join("pods/e/vol")));
    fs::remove_file(a.join("evil"))?;
    let mut escape = publish_req("pvc-one", &staging, &root.join("pods/d/vol"), false);
    escape
        .volume_context
        .insert("subdir".into(), "../..".into());
    assert_eq!(
        code(node.node_publish_volume(escape).await),
        Code::InvalidArgument
    );

    // Two publishes of one volume see each other's files; the read-only one refuses writes.
    fs::write(a.join("hello.txt"), b"from pod a")?;
    assert_eq!(fs::read(b.join("hello.txt"))?, b"from pod a");
    let e = fs::write(b.join("nope.txt"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    fs::write(c.join("in-sub.txt"), b"sub")?;
    assert_eq!(fs::read(a.join("data/x/in-sub.txt"))?, b"sub");

    // Stats: the quota as the size, and a healthy condition.
    let stats = node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: "pvc-one".into(),
            volume_path: a.display().to_string(),
            staging_target_path: String::new(),
        })
        .await?
        .into_inner();
    let bytes = stats
        .usage
        .iter()
        .find(|u| u.unit == volume_usage::Unit::Bytes as i32)
        .unwrap();
    assert_eq!(bytes.total, 3 * GIB);
    assert!(bytes.used > 0 && bytes.available < bytes.total, "{bytes:?}");
    assert!(
        stats
            .usage
            .iter()
            .any(|u| u.unit == volume_usage::Unit::Inodes as i32 && u.used >= 4)
    );
    assert!(!stats.volume_condition.unwrap().abnormal);
    let stats_of = |p: &Path| NodeGetVolumeStatsRequest {
        volume_id: "pvc-one".into(),
        volume_path: p.display().to_string(),
        staging_target_path: String::new(),
    };
    assert_eq!(
        code(
            node.node_get_volume_stats(stats_of(&root.join("pods/zzz")))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            node.node_get_volume_stats(stats_of(Path::new("/etc")))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            node.node_get_volume_stats(stats_of(Path::new("rel/path")))
                .await
        ),
        Code::NotFound
    );
    let grown = node
        .node_expand_volume(NodeExpandVolumeRequest {
            volume_id: "pvc-one".into(),
            volume_path: a.display().to_string(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(grown.capacity_bytes, 3 * GIB);

    // Snapshots: one taken while files change shows them as they were.
    let big = common::random_bytes(5, 3 << 20);
    fs::write(a.join("big.bin"), &big)?;
    let snap_req = |source: &str, name: &str| CreateSnapshotRequest {
        source_volume_id: source.into(),
        name: name.into(),
        ..Default::default()
    };
    let s1 = ctl
        .create_snapshot(snap_req("pvc-one", "snapshot-1"))
        .await?
        .into_inner()
        .snapshot
        .unwrap();
    assert!(
        s1.ready_to_use && s1.source_volume_id == "pvc-one",
        "{s1:?}"
    );
    assert!(s1.size_bytes >= big.len() as i64 && s1.creation_time.is_some());
    let again = ctl
        .create_snapshot(snap_req("pvc-one", "snapshot-1"))
        .await?
        .into_inner();
    assert_eq!(again.snapshot.unwrap().snapshot_id, s1.snapshot_id);
    assert_eq!(
        code(ctl.create_snapshot(snap_req("pvc-two", "snapshot-1")).await),
        Code::AlreadyExists
    );
    assert_eq!(
        code(
            ctl.create_snapshot(snap_req("pvc-nope", "snapshot-x"))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(ctl.create_snapshot(snap_req("pvc-one", "")).await),
        Code::InvalidArgument
    );
    fs::write(a.join("hello.txt"), b"changed after the snapshot")?;
    ctl.create_snapshot(snap_req("pvc-one", "snapshot-2"))
        .await?;
    ctl.create_snapshot(snap_req("pvc-two", "snapshot-3"))
        .await?;
    let snaps = |r: ListSnapshotsResponse| -> Vec<String> {
        r.entries
            .into_iter()
            .filter_map(|e| e.snapshot.map(|s| s.snapshot_id))
            .collect()
    };
    let (mut token, mut paged) = (String::new(), Vec::new());
    loop {
        let r = ctl
            .list_snapshots(ListSnapshotsRequest {
                max_entries: 1,
                starting_token: token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        token = r.next_token.clone();
        paged.extend(snaps(r));
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(paged, ["snapshot-1", "snapshot-2", "snapshot-3"]);
    let of_one = ctl
        .list_snapshots(ListSnapshotsRequest {
            source_volume_id: "pvc-one".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(snaps(of_one), ["snapshot-1", "snapshot-2"]);
    let by_id = |id: &str| ListSnapshotsRequest {
        snapshot_id: id.into(),
        ..Default::default()
    };
    assert_eq!(
        snaps(ctl.list_snapshots(by_id("snapshot-3")).await?.into_inner()),
        ["snapshot-3"]
    );
    assert!(snaps(ctl.list_snapshots(by_id("snapshot-9")).await?.into_inner()).is_empty());
    assert_eq!(
        code(
            ctl.list_snapshots(ListSnapshotsRequest {
                starting_token: "bogus".into(),
                ..Default::default()
            })
            .await
        ),
        Code::Aborted
    );
    let vols = listed(
        ctl.list_volumes(ListVolumesRequest::default())
            .await?
            .into_inner(),
    );
    assert!(!vols.iter().any(|v| v.starts_with("snapshot")), "{vols:?}");

    // A volume made from the snapshot has the files as they were, the same bytes, and
    // then goes its own way.
    let from = |snapshot: &str| {
        let mut r = create_req("pvc-restored", 3 * GIB);
        r.volume_content_source = Some(VolumeContentSource {
            r#type: Some(volume_content_source::Type::Snapshot(
                volume_content_source::SnapshotSource {
                    snapshot_id: snapshot.into(),
                },
            )),
        });
        r
    };
    let rv = ctl
        .create_volume(from(&s1.snapshot_id))
        .await?
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(
        rv.content_source,
        from(&s1.snapshot_id).volume_content_source
    );
    let rv_again = ctl.create_volume(from(&s1.snapshot_id)).await?.into_inner();
    assert_eq!(rv_again.volume.unwrap().volume_id, rv.volume_id);
    let (rstage, r) = (
        root.join("plugins/staging/restored"),
        root.join("pods/r/volumes/vol"),
    );
    node.node_stage_volume(stage_req(&rv.volume_id, &rstage))
        .await?;
    node.node_publish_volume(publish_req(&rv.volume_id, &rstage, &r, false))
        .await?;
    assert_eq!(fs::read(r.join("hello.txt"))?, b"from pod a");
    assert_eq!(
        blake3::hash(&fs::read(r.join("big.bin"))?),
        blake3::hash(&fs::read(a.join("big.bin"))?)
    );
    assert_eq!(fs::read(r.join("data/x/in-sub.txt"))?, b"sub");
    fs::write(r.join("data/x/in-sub.txt"), b"diverged")?;
    assert_eq!(fs::read(a.join("data/x/in-sub.txt"))?, b"sub");
    assert_eq!(fs::read(r.join("data/x/in-sub.txt"))?, b"diverged");
    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: rv.volume_id.clone(),
        target_path: r.display().to_string(),
    })
    .await?;
    node.node_unstage_volume(NodeUnstageVolumeRequest {
        volume_id: rv.volume_id.clone(),
        staging_target_path: rstage.display().to_string(),
    })
    .await?;
    // A clone of a volume, directly.
    let mut clone = create_req("pvc-clone", 3 * GIB);
    clone.volume_content_source = Some(VolumeContentSource {
        r#type: Some(volume_content_source::Type::Volume(
            volume_content_source::VolumeSource {
                volume_id: "pvc-one".into(),
            },
        )),
    });
    ctl.create_volume(clone).await?;

    // Unpublish and unstage undo exactly that, twice, and for targets never published.
    let unpublish = |t: &Path| NodeUnpublishVolumeRequest {
        volume_id: "pvc-one".into(),
        target_path: t.display().to_string(),
    };
    node.node_unpublish_volume(unpublish(&a)).await?;
    node.node_unpublish_volume(unpublish(&a)).await?;
    assert!(!is_mount_point(&a) && !a.exists());
    assert_eq!(
        fs::read(b.join("hello.txt"))?,
        b"changed after the snapshot"
    );
    node.node_unpublish_volume(unpublish(&root.join("pods/never/vol")))
        .await?;
    assert_eq!(
        code(
            node.node_unpublish_volume(unpublish(Path::new("/etc/x")))
                .await
        ),
        Code::InvalidArgument
    );
    node.node_unpublish_volume(unpublish(&b)).await?;
    node.node_unpublish_volume(unpublish(&c)).await?;
    let unstage = |p: &Path| NodeUnstageVolumeRequest {
        volume_id: "pvc-one".into(),
        staging_target_path: p.display().to_string(),
    };
    node.node_unstage_volume(unstage(&staging)).await?;
    assert!(!is_mount_point(&staging));
    node.node_unstage_volume(unstage(&staging)).await?;
    node.node_unstage_volume(unstage(&root.join("plugins/staging/never")))
        .await?;

    // Delete takes the volume with its files; deleting again is fine; bad ids are refused.
    let delete = |id: &str| DeleteVolumeRequest {
        volume_id: id.into(),
        ..Default::default()
    };
    ctl.delete_volume(delete("pvc-one")).await?;
    ctl.delete_volume(delete("pvc-one")).await?;
    assert_eq!(
        code(ctl.delete_volume(delete("")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(ctl.delete_volume(delete("../default")).await),
        Code::InvalidArgument
    );
    let left = listed(
        ctl.list_volumes(ListVolumesRequest::default())
            .await?
            .into_inner(),
    );
    assert!(!left.contains(&"pvc-one".to_string()) && left.contains(&"pvc-two".to_string()));

    // The snapshot outlives its source, and a volume can still be made from it.
    assert_eq!(
        snaps(ctl.list_snapshots(by_id("snapshot-1")).await?.into_inner()),
        ["snapshot-1"]
    );
    let mut late = from("snapshot-1");
    late.name = "pvc-late".into();
    let late = ctl.create_volume(late).await?.into_inner().volume.unwrap();
    assert_eq!(late.volume_id, "pvc-late");
    assert_eq!(
        code(ctl.delete_volume(delete("snapshot-1")).await),
        Code::InvalidArgument
    );
    let del_snap = |id: &str| DeleteSnapshotRequest {
        snapshot_id: id.into(),
        ..Default::default()
    };
    ctl.delete_snapshot(del_snap("snapshot-1")).await?;
    ctl.delete_snapshot(del_snap("snapshot-1")).await?;
    // A volume's id is no snapshot's: nothing is deleted.
    ctl.delete_snapshot(del_snap("pvc-two")).await?;
    let left = snaps(
        ctl.list_snapshots(ListSnapshotsRequest::default())
            .await?
            .into_inner(),
    );
    assert_eq!(left, ["snapshot-2", "snapshot-3"]);
    assert!(
        listed(
            ctl.list_volumes(ListVolumesRequest::default())
                .await?
                .into_inner()
        )
        .contains(&"pvc-two".to_string())
    );
    Ok(())
}

/// The pids of `meridian mount` processes of `staging`: (supervisors, serving processes).
fn mount_pids(staging: &Path) -> (Vec<i32>, Vec<i32>) {
    let want = staging.as_os_str().as_encoded_bytes().to_vec();
    let mut found = (Vec::new(), Vec::new());
    for pid in fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        let Ok(c) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = c.split(|&b| b == 0).collect();
        if args.contains(&&b"mount"[..]) && args.contains(&want.as_slice()) {
            if args.contains(&&b"--serve-fd"[..]) {
                found.1.push(pid);
            } else {
                found.0.push(pid);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_mount_is_mounted_again_by_the_running_plugin_and_after_its_restart() -> Result<()> {
    let region = Region::start()?;
    let mut csi = Csi::start(&region.meta.dir.path().join("csi"), &region.meta_addrs())?;
    let mut ctl = ControllerClient::new(csi.channel().await?);
    ctl.create_volume(create_req("pvc-heal", GIB)).await?;
    let mut node = NodeClient::new(csi.channel().await?);
    let staging = csi.root.join("plugins/staging/heal");
    let target = csi.root.join("pods/p/volumes/vol");
    node.node_stage_volume(stage_req("pvc-heal", &staging))
        .await?;
    node.node_publish_volume(publish_req("pvc-heal", &staging, &target, false))
        .await?;
    let data = common::random_bytes(7, 300_000);
    let mut f = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o644)
        .open(target.join("kept.bin"))?;
    f.write_all(&data)?;
    f.sync_all()?;
    drop(f);

    let kill = |pid: i32| -> Result<()> {
        // SAFETY: kill(2) of a process this test's plugin started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        wait_for(Duration::from_secs(10), "the process to die", || {
            fs::metadata(format!("/proc/{pid}/cmdline"))
                .is_err()
                .then_some(())
        })
    };
    let readable = |what: &str| {
        wait_for(Duration::from_secs(30), what, || {
            fs::read(target.join("kept.bin"))
                .ok()
                .filter(|b| *b == data)
                .map(|_| ())
        })
    };
    let one = |v: Vec<i32>| -> Result<i32> {
        anyhow::ensure!(v.len() == 1, "processes: {v:?}");
        Ok(v[0])
    };

    // The serving process dies: the mount's supervisor starts another; nothing else
    // notices, the plugin included.
    let (sups, servers) = mount_pids(&staging);
    let (sup, server) = (one(sups)?, one(servers)?);
    kill(server)?;
    readable("the supervisor to serve again")?;
    assert_eq!(one(mount_pids(&staging).0)?, sup);

    // The plugin is killed and restarted between publish and unpublish: the mount is not
    // touched, and works throughout.
    csi.kill();
    fs::write(target.join("while-down.txt"), b"the plugin is down")?;
    csi.spawn()?;
    readable("the mount after the plugin's restart")?;
    assert_eq!(
        fs::read(target.join("while-down.txt"))?,
        b"the plugin is down"
    );
    assert_eq!(
        one(mount_pids(&staging).0)?,
        sup,
        "the plugin's restart remounted"
    );

    // The whole mount dies (its supervisor killed): the running plugin mounts again
    // within its check interval, and binds the target again.
    kill(sup)?;
    readable("the plugin to mount again").with_context(|| log_tail(&csi.log, 20))?;

    // A plugin killed with its mount dead mounts again when it starts.
    csi.kill();
    kill(one(mount_pids(&staging).0)?)?;
    let e = fs::read(target.join("kept.bin")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
    csi.spawn()?;
    readable("the restarted plugin to mount again").with_context(|| log_tail(&csi.log, 20))?;
    fs::write(target.join("after.txt"), b"written after the restart")?;
    assert_eq!(
        fs::read(staging.join("after.txt"))?,
        b"written after the restart"
    );

    let mut node = NodeClient::new(csi.channel().await?);
    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: "pvc-heal".into(),
        target_path: target.display().to_string(),
    })
    .await?;
    node.node_unstage_volume(NodeUnstageVolumeRequest {
        volume_id: "pvc-heal".into(),
        staging_target_path: staging.display().to_string(),
    })
    .await?;
    assert!(!common::is_mounted(&staging) && mount_pids(&staging) == (vec![], vec![]));
    Ok(())
}

/// The parent of process `pid`.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Every process descended from `pid`.
fn descendants(pid: i32) -> Vec<i32> {
    let all: Vec<(i32, i32)> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|p| Some((p, parent_of(p)?)))
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(all.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

/// A `meridian csi-mounter` process, killed on drop.
struct Mounter(Child);

impl Drop for Mounter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_the_mounter_started_outlive_the_plugin_and_everything_it_started() -> Result<()> {
    let region = Region::start()?;
    let dir = region.meta.dir.path().join("csi");
    fs::create_dir_all(dir.join("kubelet"))?;
    let root = dir.join("kubelet").canonicalize()?;
    let sock = dir.join("mounter/mounter.sock");
    let log = dir.join("mounter.log");
    let out = fs::File::create(&log)?;
    let mounter = Mounter(
        Command::new(MERIDIAN)
            .args(["csi-mounter", "--endpoint"])
            .arg(format!("unix://{}", sock.display()))
            .arg("--kubelet-dir")
            .arg(&root)
            .arg("--log-dir")
            .arg(dir.join("mounter-logs"))
            .env("MERIDIAN_LOG", "info")
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?,
    );
    wait_for(Duration::from_secs(30), "the mounter to serve", || {
        fs::read_to_string(&log)
            .ok()?
            .contains("serving")
            .then_some(())
    })?;
    let endpoint = format!("unix://{}", sock.display());
    let mut csi = Csi::start_with(&dir, &region.meta_addrs(), &["--mounter", &endpoint])?;
    let mut ctl = ControllerClient::new(csi.channel().await?);
    ctl.create_volume(create_req("pvc-kept", GIB)).await?;
    let mut node = NodeClient::new(csi.channel().await?);
    let staging = root.join("plugins/staging/kept");
    let target = root.join("pods/p/volumes/vol");
    node.node_stage_volume(stage_req("pvc-kept", &staging))
        .await?;
    node.node_publish_volume(publish_req("pvc-kept", &staging, &target, false))
        .await?;
    fs::write(target.join("before.txt"), b"before")?;
    let (sups, _) = mount_pids(&staging);
    anyhow::ensure!(sups.len() == 1, "supervisors: {sups:?}");
    assert_eq!(parent_of(sups[0]), Some(mounter.0.id() as i32));

    // The plugin and everything it started go at once, as in a container restart.
    let plugin = csi
        .child
        .as_ref()
        .map(|c| c.id() as i32)
        .context("plugin")?;
    let gone = descendants(plugin);
    csi.kill();
    for p in &gone {
        // SAFETY: kill(2) of processes this test's plugin started.
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    // The mount never noticed.
    assert_eq!(fs::read(target.join("before.txt"))?, b"before");
    fs::write(target.join("during.txt"), b"while the plugin is gone")?;
    assert_eq!(mount_pids(&staging).0, sups);

    csi.spawn()?;
    let mut node = NodeClient::new(csi.channel().await?);
    assert_eq!(
        fs::read(target.join("during.txt"))?,
        b"while the plugin is gone"
    );
    assert_eq!(
        mount_pids(&staging).0,
        sups,
        "the restarted plugin remounted"
    );
    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: "pvc-kept".into(),
        target_path: target.display().to_string(),
    })
    .await?;
    node.node_unstage_volume(NodeUnstageVolumeRequest {
        volume_id: "pvc-kept".into(),
        staging_target_path: staging.display().to_string(),
    })
    .await?;
    assert!(!common::is_mounted(&staging));
    wait_for(
        Duration::from_secs(30),
        "the mount's processes to go",
        || (mount_pids(&staging) == (vec![], vec![])).then_some(()),
    )?;
    Ok(())
}

/// The node plugin on a region that checks volume access tokens: a volume's node-stage
/// secret gives its mount the token (kept 0600 beside the plugin's record, forgotten at
/// unstage); a token for another volume, a malformed one, or none at all stages nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_stage_mounts_with_the_token_of_the_volume_secret() -> Result<()> {
    use common::tls::{ROLES, deployment, issue_token, meridian, ok, tls_region_with};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let certs = deployment(dir.path(), "ca", &ROLES)?;
    let key = dir.path().join("token.key");
    ok(meridian(
        None,
        &["admin", "token", "key", "--out", key.to_str().unwrap()],
    )?)?;
    let (_meta, _chunks, addrs) =
        tls_region_with(1, &certs, &["--token-key", key.to_str().unwrap()])?;
    for v in ["pvc-x", "pvc-y"] {
        ok(meridian(
            Some(&certs[3]),
            &["admin", "volume-create", "--meta", &addrs, v],
        )?)?;
    }
    let tx = issue_token(&key, "csi-test", &["pvc-x"], "1h")?;
    let csi = Csi::start_with(
        &dir.path().join("csi"),
        &addrs,
        &["--tls", certs[2].to_str().unwrap()],
    )?;
    let mut node = NodeClient::new(csi.channel().await?);
    let stage = |volume: &str, at: &str, token: Option<&str>| {
        let mut req = stage_req(volume, &csi.root.join("plugins/staging").join(at));
        if let Some(t) = token {
            req.secrets.insert("token".into(), t.into());
        }
        req
    };

    let staging = csi.root.join("plugins/staging/x");
    node.node_stage_volume(stage("pvc-x", "x", Some(&tx)))
        .await?;
    assert!(
        is_mount_point(&staging),
        "nothing mounted at the staging path"
    );
    fs::write(staging.join("hello"), b"through the volume's token")?;
    assert_eq!(
        fs::read(staging.join("hello"))?,
        b"through the volume's token"
    );
    let kept: Vec<PathBuf> = fs::read_dir(dir.path().join("csi/state/staged"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "token"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(fs::metadata(&kept[0])?.permissions().mode() & 0o777, 0o600);

    // x's token stages nothing else; a malformed token or none stages nothing.
    assert!(
        node.node_stage_volume(stage("pvc-y", "y", Some(&tx)))
            .await
            .is_err()
    );
    assert_eq!(
        code(
            node.node_stage_volume(stage("pvc-y", "y2", Some("not-a-token")))
                .await
        ),
        Code::InvalidArgument
    );
    assert!(
        node.node_stage_volume(stage("pvc-x", "x2", None))
            .await
            .is_err()
    );
    assert!(!is_mount_point(&csi.root.join("plugins/staging/y")));

    node.node_unstage_volume(NodeUnstageVolumeRequest {
        volume_id: "pvc-x".into(),
        staging_target_path: staging.display().to_string(),
    })
    .await?;
    assert!(!kept[0].exists(), "the token outlived its mount");
    Ok(())
}
