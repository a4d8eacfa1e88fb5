//! `meridian admin`: look at a running cluster. Tables for people, `--json` for scripts.

use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;
use meridian_client::MetaClient;
use meridian_proto::ns::{Query, QueryReply, VolumePolicy};
use meridian_proto::pb::meta::meta_service_client::MetaServiceClient;
use meridian_proto::pb::meta::{
    AddMemberRequest, GetClusterMapRequest, RemoveMemberRequest, SetNodeStateRequest,
    StatusRequest, StatusResponse, TriggerSnapshotRequest,
};

use chunks::{Pass, PassArgs, maintain_all, maintenance};

mod certs;
mod chunks;
mod home;
mod link;
mod regions;
mod tokens;
mod volumes;

#[derive(Subcommand)]
pub enum AdminCommand {
    /// A deployment's CA and its processes' certificates (for --tls).
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// The token key, and volume access tokens (for servers' --token-key and clients'
    /// --token-file).
    #[command(subcommand)]
    Token(tokens::TokenCommand),
    /// Raft status of every metaserver member.
    MetaStatus {
        /// Metaserver addresses (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        meta: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add a metaserver to the group (as a learner, then a voter unless --learner).
    AddMember {
        /// Metaserver addresses of the existing group.
        #[arg(long, value_delimiter = ',', required = true)]
        meta: Vec<String>,
        /// The new member's id (never reuse a removed member's id).
        #[arg(long)]
        id: u64,
        /// The new member's address.
        #[arg(long)]
        address: String,
        /// Keep it a non-voting learner.
        #[arg(long)]
        learner: bool,
    },
    /// Remove a metaserver from the group.
    RemoveMember {
        /// Metaserver addresses.
        #[arg(long, value_delimiter = ',', required = true)]
        meta: Vec<String>,
        /// The member to remove.
        #[arg(long)]
        id: u64,
    },
    /// Take a snapshot on a member now (and purge its log behind it with --purge).
    Snapshot {
        /// The member's address.
        #[arg(long)]
        meta: String,
        /// Also purge the log up to the snapshot.
        #[arg(long)]
        purge: bool,
    },
    /// Create a volume.
    VolumeCreate {
        /// Metaserver addresses.
        #[arg(long, value_delimiter = ',', required = true)]
        meta: Vec<String>,
        /// Volume name.
        name: String,
        /// Copies of every block.
        #[arg(long, default_value_t = 3)]
        replicas: u32,
        /// Copies without which a write fails.
        #[arg(long, default_value_t = 2)]
        min_copies: u32,
        /// Byte quota.
        #[arg(long)]
        quota_bytes: Option<u64>,
        /// Regions the volume lives in (comma-separated ids; default: only the region that
        /// creates it). Its blocks and metadata never leave them.
        #[arg(long, value_delimiter = ',')]
        regions: Vec<u16>,
        /// Consistency: without it the volume is active-active (every region writes
        /// locally, and concurrent changes converge, with conflict copies). With a home
        /// region (one of --regions), every change is decided there: other regions
        /// forward changes to it and answer once they hold the result, serve reads from
        /// their own replica, and refuse changes (EROFS) while it is unreachable.
        #[arg(long)]
        home: Option<u16>,
    },
    /// Change a volume's consistency (a planned change, made by its current home): to a
    /// home region, or to active-active. To a home: from then on only that region's Raft
    /// group decides the volume's changes; changes other regions make concurrently with
    /// this one are kept apart (listed as fenced conflicts), not applied. To
    /// active-active: every region writes locally again. Either way the volume's epoch
    /// goes up.
    VolumeConsistency {
        /// Metaservers of a region the volume lives in.
        #[arg(long, value_delimiter = ',', required = true)]
        meta: Vec<String>,
        /// Volume name.
        name: String,
        /// The home region.
        #[arg(
            long,
            conflicts_with = "active_active",
            required_unless_present = "active_active"
        )]
        home: Option<u16>,
        /// Every region writes locally.
        #[arg(long)]
        active_active: bool,
    },
    /// Move a volume's home region. Planned (the current home reachable): the current
    /// home makes the change after every change it accepted, the new home takes over once
    /// it has applied them, and writes pause for about a round trip plus that catch-up;
    /// nothing is lost. With --force (the current home gone): run against the new home's
    /// metaservers; shows what the new home may lack of the old one (the RPO, as far as it
    /// can know), asks for confirmation, and raises the volume's epoch there. The old
    /// home, when it comes back, can no longer commit: what it accepted after the promote
    /// and never sent is kept apart (listed by `admin conflicts` as fenced, the bytes of
    /// writes in fenced-* files), never applied, never lost.
    VolumePromote {
        /// Metaservers of a region the volume lives in (the new home's, with --force).
        #[arg(long, value_delimiter = ',', required = true)]
        meta: Vec<String>,
        /// Volume name.
        name: String,
        /// The new home region.
        #[arg(long)]
        to: u16,
        /// Take over without the current home.
        #[arg(long)]
        force: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Replication lag to and from every peer region (ops and bytes behind, the age of the
    /// oldest record a peer lacks: the RPO).
    Regions {
        /// Metaservers of the region to ask.
        #[arg(long, value_delimiter = ',', required = true)]
        meta: Vec<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Conflicts met while merging regions, oldest first.
    Conflicts {
        /// Metaservers of the region to ask.
        #[arg(long, value_delimiter = ',', required = true)]
        meta: Vec<String>,
        /// Most conflicts to list.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Directory leases held (docs/adr/0006): each leased directory's inode and the
    /// client (mount) answering its changes alone.
    Leases {
        /// Metaservers of the region to ask.
        #[arg(long, value_delimiter = ',', required = true)]
        meta: Vec<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Delete an empty volume, or a snapshot with everything in it.
    VolumeDelete {
        /// Metaserver addresses.
        #[arg(long, value_delimiter = ',', required = true)]
        meta: Vec<String>,
        /// Volume name.
        name: String,
    },
    /// Snapshot a volume: a frozen, read-only copy of its namespace made at once, sharing
    /// its blocks (volumes of one region; at most 250,000 inodes).
    VolumeSnapshot {
        /// Metaserver addresses.
        #[arg(long, value_delimiter = ',', required = true)]
        meta: Vec<String>,
        /// The volume to snapshot.
        source: String,
        /// The snapshot's name.
        name: String,
    },
    /// Make a writable volume from a snapshot (a restore) or from another volume (a clone),
    /// sharing its blocks.
    VolumeClone {
        /// Metaserver addresses.
        #[arg(long, value_delimiter = ',', required = true)]
        meta: Vec<String>,
        /// The snapshot or volume copied.
        source: String,
        /// The new volume's name.
        name: String,
    },
    /// Add a region to a volume. The region is brought in from this one (the namespace as
    /// it stands, then every change; blocks as they are read there or shipped) and then
    /// takes part like the others. It must be a peer of this region.
    VolumeAddRegion {
        /// Metaservers of a region the volume lives in.
        #[arg(long, value_delimiter = ',', required = true)]
        meta: Vec<String>,
        /// Volume name.
        name: String,
        /// The region added.
        region: u16,
        /// The added region's metaservers: wait until the volume is there, with progress.
        #[arg(long, value_delimiter = ',')]
        follow: Vec<String>,
    },
    /// Remove a region from a volume: no more of it is sent there, and that region drops
    /// its copy. Run it in a region that keeps the volume.
    VolumeRemoveRegion {
        /// Metaservers of a region that keeps the volume.
        #[arg(long, value_delimiter = ',', required = true)]
        meta: Vec<String>,
        /// Volume name.
        name: String,
        /// The region removed.
        region: u16,
    },
    /// List snapshots (delete one with volume-delete).
    Snapshots {
        /// Metaserver addresses.
        #[arg(long, value_delimiter = ',', required = true)]
        meta: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List volumes.
    Volumes {
        /// Metaserver addresses.
        #[arg(long, value_delimiter = ',', required = true)]
        meta: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The chunkserver cluster map the metaservers hold.
    ClusterMap {
        /// Metaserver addresses.
        #[arg(long, value_delimiter = ',', required = true)]
        meta: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show or change a link through a fault proxy: delay it, cut it, heal it.
    Link {
        /// The proxy's control address.
        #[arg(long)]
        proxy: String,
        /// Set the one-way delay, in milliseconds.
        #[arg(long)]
        delay_ms: Option<u32>,
        /// Cut the link (drop connections, refuse new ones).
        #[arg(long, conflicts_with = "heal")]
        cut: bool,
        /// Heal a cut link.
        #[arg(long)]
        heal: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The region's chunkservers: state, usage, blocks, and what repair still lacks.
    Nodes {
        /// Metaservers of the region.
        #[arg(long, value_delimiter = ',', required = true)]
        meta: Vec<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Repair on every chunkserver: what the last pass found and did (`--now` starts one).
    Repair(PassArgs),
    /// Scrub on every chunkserver: blocks re-hashed, bad copies found and restored.
    Scrub(PassArgs),
    /// Check the region's metadata and every block it references: entries, link counts,
    /// extents and reference counts; copies present and verified on the chunkservers.
    /// Exits non-zero when anything is wrong.
    Fsck {
        /// Metaservers of the region.
        #[arg(long, value_delimiter = ',', required = true)]
        meta: Vec<String>,
        /// Count copies without reading them back.
        #[arg(long)]
        quick: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Garbage collection on every chunkserver: unreferenced blocks condemned, deleted after
    /// the grace period, and bytes freed (`--now` starts a pass; the grace still applies).
    Gc(PassArgs),
    /// Drain a chunkserver before removing it: it takes no new blocks and repair moves
    /// every block off it (watch `admin nodes`); `--undo` puts it back in service.
    Drain {
        /// The chunkserver's node id.
        node: u64,
        /// Metaservers of the region.
        #[arg(long, value_delimiter = ',', required = true)]
        meta: Vec<String>,
        /// Stop draining.
        #[arg(long)]
        undo: bool,
    },
    /// Capacity, usage and health of chunkservers.
    ChunkStatus {
        /// Chunkserver addresses (host:port).
        #[arg(required = true)]
        addresses: Vec<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// The cluster map of the region whose metaservers are `meta`.
async fn region_map(meta: &[String], retry: Duration) -> Result<meridian_proto::ClusterMap> {
    Ok(MetaClient::new(meta.to_vec())
        .with_retry_for(retry)
        .cluster_map(0, Duration::ZERO)
        .await?)
}

fn ago(ms: u64) -> String {
    if ms == 0 {
        return "never".to_string();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    format!("{:.0}s ago", now.saturating_sub(ms) as f64 / 1000.0)
}

/// Bytes a node still has to hand over: everything it holds while it drains (it is no
/// block's home), else what the last repair pass found held outside its homes.
fn to_move(
    node: &meridian_proto::NodeInfo,
    s: &meridian_proto::pb::chunk::NodeStatusResponse,
) -> u64 {
    if node.state == meridian_proto::NodeState::Draining {
        s.used_bytes
    } else {
        s.repair.as_ref().map_or(0, |p| p.misplaced_bytes)
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

async fn meta_rpc(addr: &str) -> Result<MetaServiceClient<meridian_proto::channels::Authed>> {
    let ch = meridian_proto::channels::connect(addr)
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(meridian_proto::channels::meta_client(ch))
}

fn status_json(s: &StatusResponse) -> serde_json::Value {
    serde_json::json!({
        "id": s.id, "state": s.state, "leader": s.leader, "leader_address": s.leader_address,
        "term": s.term, "last_log_index": s.last_log_index, "last_applied": s.last_applied,
        "snapshot_index": s.snapshot_index, "purged_index": s.purged_index, "region": s.region,
        "log_sync_us": s.log_sync_us, "log_syncs": s.log_syncs,
        "members": s.members.iter().map(|m| serde_json::json!({"id": m.id, "address": m.address, "voter": m.voter})).collect::<Vec<_>>(),
    })
}

pub async fn run(cmd: AdminCommand) -> Result<()> {
    match cmd {
        AdminCommand::Certs(cmd) => certs::run(cmd),
        AdminCommand::Token(cmd) => tokens::run(cmd),
        AdminCommand::MetaStatus { meta, json } => {
            let mut rows = Vec::new();
            let mut failed = false;
            for addr in &meta {
                let got = async {
                    Ok::<_, anyhow::Error>(
                        meta_rpc(addr)
                            .await?
                            .status(StatusRequest {})
                            .await?
                            .into_inner(),
                    )
                }
                .await;
                match got {
                    Ok(s) => rows.push((addr.clone(), Ok(s))),
                    Err(e) => {
                        failed = true;
                        rows.push((
                            addr.clone(),
                            Err(meridian_proto::channels::with_hint(format!("{e:#}"))),
                        ))
                    }
                }
            }
            if json {
                let out: Vec<_> = rows
                    .iter()
                    .map(|(a, r)| match r {
                        Ok(s) => status_json(s),
                        Err(e) => serde_json::json!({"address": a, "error": e}),
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!(
                    "{:<22} {:>4} {:<10} {:>6} {:>6} {:>9} {:>9} {:>9} {:>10}",
                    "ADDRESS",
                    "ID",
                    "STATE",
                    "LEADER",
                    "TERM",
                    "LAST LOG",
                    "APPLIED",
                    "SNAPSHOT",
                    "SYNC µs"
                );
                for (a, r) in &rows {
                    match r {
                        Ok(s) => println!(
                            "{:<22} {:>4} {:<10} {:>6} {:>6} {:>9} {:>9} {:>9} {:>10}",
                            a,
                            s.id,
                            s.state,
                            s.leader,
                            s.term,
                            s.last_log_index,
                            s.last_applied,
                            s.snapshot_index,
                            // How long the member's log syncs take lately (a slow disk).
                            s.log_sync_us
                        ),
                        Err(e) => println!("{a:<22} unreachable: {e}"),
                    }
                }
            }
            if failed {
                anyhow::bail!("some metaservers could not be reached");
            }
            Ok(())
        }
        AdminCommand::AddMember {
            meta,
            id,
            address,
            learner,
        } => {
            let client = MetaClient::new(meta);
            let s = client.status().await?;
            let target = if s.leader_address.is_empty() {
                anyhow::bail!("no leader is known; retry")
            } else {
                s.leader_address
            };
            let s = meta_rpc(&target)
                .await?
                .add_member(AddMemberRequest {
                    id,
                    address,
                    voter: !learner,
                })
                .await?
                .into_inner();
            println!("{}", serde_json::to_string_pretty(&status_json(&s))?);
            Ok(())
        }
        AdminCommand::RemoveMember { meta, id } => {
            let client = MetaClient::new(meta);
            let s = client.status().await?;
            let s = meta_rpc(&s.leader_address)
                .await?
                .remove_member(RemoveMemberRequest { id })
                .await?
                .into_inner();
            println!("{}", serde_json::to_string_pretty(&status_json(&s))?);
            Ok(())
        }
        AdminCommand::Snapshot { meta, purge } => {
            let s = meta_rpc(&meta)
                .await?
                .trigger_snapshot(TriggerSnapshotRequest { purge })
                .await?
                .into_inner();
            println!("{}", serde_json::to_string_pretty(&status_json(&s))?);
            Ok(())
        }
        AdminCommand::VolumeCreate {
            meta,
            name,
            replicas,
            min_copies,
            quota_bytes,
            regions,
            home,
        } => {
            let policy = VolumePolicy {
                replicas,
                min_copies,
                quota_bytes,
                regions: regions.into_iter().map(meridian_proto::RegionId).collect(),
                home: home.map(meridian_proto::RegionId),
                ..Default::default()
            };
            volumes::create(meta, name, policy).await
        }
        AdminCommand::Link {
            proxy,
            delay_ms,
            cut,
            heal,
            json,
        } => link::set(proxy, delay_ms, cut, heal, json).await,
        AdminCommand::VolumeConsistency {
            meta,
            name,
            home,
            active_active: _,
        } => home::set_home(meta, name, home).await,
        AdminCommand::VolumePromote {
            meta,
            name,
            to,
            force,
            yes,
        } => home::promote(meta, name, to, force, yes).await,
        AdminCommand::VolumeDelete { meta, name } => volumes::delete(meta, name).await,
        AdminCommand::Regions { meta, json } => regions::show(meta, json).await,
        AdminCommand::Conflicts { meta, limit, json } => {
            let QueryReply::Conflicts(list) = MetaClient::new(meta)
                .query(&Query::Conflicts { after: None, limit }, false)
                .await?
            else {
                anyhow::bail!("unexpected reply");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<24} {:<10} DETAIL", "STAMP", "KIND");
                for c in list {
                    println!("{:<24} {:<10} {}", c.hlc.to_string(), c.kind, c.detail);
                }
            }
            Ok(())
        }
        AdminCommand::Leases { meta, json } => {
            let client = MetaClient::new(meta);
            let mut all = Vec::new();
            let mut after = 0;
            loop {
                let QueryReply::Leases(page) = client
                    .query(&Query::Leases { after, limit: 1000 }, false)
                    .await?
                else {
                    anyhow::bail!("unexpected reply");
                };
                let Some(&(last, _)) = page.last() else { break };
                after = last.0;
                all.extend(page);
            }
            if json {
                let rows: Vec<serde_json::Value> = all
                    .iter()
                    .map(|(d, c)| serde_json::json!({"dir": d.0, "client": c}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("{:<20} CLIENT", "DIRECTORY");
                for (d, c) in all {
                    println!("{:<20} {c:016x}", d.0);
                }
            }
            Ok(())
        }
        AdminCommand::VolumeSnapshot { meta, source, name } => {
            volumes::copy(meta, source, name, true).await
        }
        AdminCommand::VolumeClone { meta, source, name } => {
            volumes::copy(meta, source, name, false).await
        }
        AdminCommand::VolumeAddRegion {
            meta,
            name,
            region,
            follow,
        } => volumes::set_regions(meta, name, region, true, follow).await,
        AdminCommand::VolumeRemoveRegion { meta, name, region } => {
            volumes::set_regions(meta, name, region, false, Vec::new()).await
        }
        AdminCommand::Snapshots { meta, json } => volumes::list(meta, json, true).await,
        AdminCommand::Volumes { meta, json } => volumes::list(meta, json, false).await,
        AdminCommand::ClusterMap { meta, json } => {
            let mut last = None;
            for addr in &meta {
                match meta_rpc(addr).await {
                    Ok(mut c) => {
                        let r = c
                            .get_cluster_map(GetClusterMapRequest {
                                known_epoch: u64::MAX,
                                wait_ms: 0,
                            })
                            .await?;
                        let map: meridian_proto::ClusterMap =
                            serde_json::from_slice(&r.into_inner().map)?;
                        if json {
                            println!("{}", serde_json::to_string_pretty(&map)?);
                        } else {
                            println!("epoch {} region {}", map.epoch, map.region.0);
                            println!(
                                "{:>5} {:<10} {:<22} {:>10} {:<8}",
                                "NODE", "ZONE", "ADDRESS", "CAPACITY", "STATE"
                            );
                            for n in &map.nodes {
                                println!(
                                    "{:>5} {:<10} {:<22} {:>10} {:<8}",
                                    n.id.0,
                                    n.zone.0,
                                    n.address,
                                    human(n.capacity),
                                    format!("{:?}", n.state).to_lowercase()
                                );
                            }
                        }
                        return Ok(());
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| anyhow::anyhow!("no metaserver address")))
        }
        AdminCommand::Nodes { meta, json } => {
            let map = region_map(&meta, Duration::from_secs(5)).await?;
            let rows = maintain_all(&map, None).await;
            if json {
                let out: Vec<_> = rows
                    .iter()
                    .map(|(n, r)| serde_json::json!({
                        "node": n.id.0, "zone": n.zone.0, "address": n.address,
                        "state": format!("{:?}", n.state).to_lowercase(),
                        "capacity_bytes": n.capacity,
                        "used_bytes": r.as_ref().ok().map(|s| s.used_bytes),
                        "blocks": r.as_ref().ok().map(|s| s.block_count),
                        "under_replicated": r.as_ref().ok().map(|s| s.under_replicated),
                        "repair_short": r.as_ref().ok().and_then(|s| s.repair.as_ref()).map(|p| p.still_short),
                        "repair_short_bytes": r.as_ref().ok().and_then(|s| s.repair.as_ref()).map(|p| p.short_bytes),
                        "misplaced_blocks": r.as_ref().ok().and_then(|s| s.repair.as_ref()).map(|p| p.misplaced_blocks),
                        "misplaced_bytes": r.as_ref().ok().and_then(|s| s.repair.as_ref()).map(|p| p.misplaced_bytes),
                        "to_move_bytes": r.as_ref().ok().map(|s| to_move(n, s)),
                        "error": r.as_ref().err().map(|e| format!("{e:#}")),
                    }))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!(
                    "{:>5} {:<8} {:<22} {:<9} {:>10} {:>10} {:>8} {:>6} {:>6} {:>10}",
                    "NODE",
                    "ZONE",
                    "ADDRESS",
                    "STATE",
                    "CAPACITY",
                    "USED",
                    "BLOCKS",
                    "UNDER",
                    "SHORT",
                    "TO MOVE"
                );
                for (n, r) in &rows {
                    let state = format!("{:?}", n.state).to_lowercase();
                    match r {
                        Ok(s) => println!(
                            "{:>5} {:<8} {:<22} {:<9} {:>10} {:>10} {:>8} {:>6} {:>6} {:>10}",
                            n.id.0,
                            n.zone.0,
                            n.address,
                            state,
                            human(n.capacity),
                            human(s.used_bytes),
                            s.block_count,
                            s.under_replicated,
                            s.repair.as_ref().map_or(0, |p| p.still_short),
                            human(to_move(n, s))
                        ),
                        Err(e) => println!(
                            "{:>5} {:<8} {:<22} {:<9} unreachable: {e:#}",
                            n.id.0, n.zone.0, n.address, state
                        ),
                    }
                }
            }
            Ok(())
        }
        AdminCommand::Fsck { meta, quick, json } => {
            let report = crate::fsck::run(&meta, quick).await?;
            crate::fsck::print(&report, json)?;
            anyhow::ensure!(report.clean(), "fsck found problems");
            Ok(())
        }
        AdminCommand::Repair(args) => maintenance(Pass::Repair, args).await,
        AdminCommand::Scrub(args) => maintenance(Pass::Scrub, args).await,
        AdminCommand::Gc(args) => maintenance(Pass::Gc, args).await,
        AdminCommand::Drain { node, meta, undo } => {
            let mut last = None;
            for addr in &meta {
                match meta_rpc(addr).await {
                    Ok(mut c) => {
                        c.set_node_state(SetNodeStateRequest {
                            id: node,
                            draining: !undo,
                        })
                        .await
                        .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
                        if undo {
                            println!("chunkserver {node} is back in service");
                        } else {
                            println!(
                                "chunkserver {node} is draining: repair moves its blocks to their homes; `admin nodes` shows it empty when done"
                            );
                        }
                        return Ok(());
                    }
                    Err(e) => last = Some(e),
                }
            }
            Err(last.unwrap_or_else(|| anyhow::anyhow!("no metaserver address")))
        }
        AdminCommand::ChunkStatus { addresses, json } => chunks::status(&addresses, json).await,
    }
}
