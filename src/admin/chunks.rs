//! `meridian admin chunk-status`, `repair`, `scrub` and `gc`: the chunkservers' state and
//! their background passes, node by node.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use meridian_proto::pb::chunk::NodeStatusRequest;
use meridian_proto::pb::chunk::chunk_service_client::ChunkServiceClient;
use serde::Serialize;

use super::{ago, human, region_map};

#[derive(Serialize)]
struct ChunkRow {
    address: String,
    node: u64,
    zone: String,
    capacity_bytes: u64,
    used_bytes: u64,
    free_bytes: u64,
    blocks: u64,
    under_replicated: u64,
    map_epoch: u64,
    /// Blocks waiting to be shipped to each other region: (region, blocks, oldest age ms).
    ship_queues: Vec<(u32, u64, u64)>,
    error: Option<String>,
}

async fn chunk_status(address: &str) -> Result<ChunkRow> {
    let mut client = ChunkServiceClient::new(
        meridian_proto::channels::connect(address)
            .await
            .map_err(anyhow::Error::msg)?,
    );
    let s = client
        .node_status(NodeStatusRequest {})
        .await
        .with_context(|| format!("chunkserver {address} did not answer"))?
        .into_inner();
    Ok(ChunkRow {
        address: address.to_string(),
        node: s.node_id,
        zone: s.zone,
        capacity_bytes: s.capacity_bytes,
        used_bytes: s.used_bytes,
        free_bytes: s.free_bytes,
        blocks: s.block_count,
        under_replicated: s.under_replicated,
        map_epoch: s.map_epoch,
        ship_queues: s
            .ship_queues
            .iter()
            .map(|q| (q.region, q.blocks, q.oldest_ms))
            .collect(),
        error: None,
    })
}

/// Every chunkserver of `map`: its status, after asking it to start the passes named.
pub(super) async fn maintain_all(
    map: &meridian_proto::ClusterMap,
    now: Option<Pass>,
) -> Vec<(
    meridian_proto::NodeInfo,
    Result<meridian_proto::pb::chunk::NodeStatusResponse>,
)> {
    use meridian_proto::pb::chunk::MaintainRequest;
    let mut out = Vec::new();
    for n in &map.nodes {
        let status = async {
            let mut c = ChunkServiceClient::new(
                meridian_proto::channels::connect(&n.address)
                    .await
                    .map_err(anyhow::Error::msg)?,
            );
            if let Some(pass) = now {
                c.maintain(MaintainRequest {
                    repair_now: pass == Pass::Repair,
                    scrub_now: pass == Pass::Scrub,
                    gc_now: pass == Pass::Gc,
                })
                .await?;
            }
            Ok(c.node_status(NodeStatusRequest {}).await?.into_inner())
        };
        let status = tokio::time::timeout(Duration::from_secs(5), status)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer in 5 s")));
        out.push((n.clone(), status));
    }
    out
}

/// The background passes `admin repair | scrub | gc` report on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pass {
    Repair,
    Scrub,
    Gc,
}

impl Pass {
    pub(super) fn name(self) -> &'static str {
        match self {
            Pass::Repair => "repair",
            Pass::Scrub => "scrub",
            Pass::Gc => "garbage collection",
        }
    }
}

/// One node's row for `pass`: the JSON object, and the table cells after NODE.
fn pass_row(
    pass: Pass,
    s: &meridian_proto::pb::chunk::NodeStatusResponse,
) -> (serde_json::Value, String) {
    let yes = |b: bool| if b { "yes" } else { "no" };
    match pass {
        Pass::Repair => {
            let p = s.repair.clone().unwrap_or_default();
            (
                serde_json::json!({"passes": p.passes, "running": p.running,
                    "last_pass_ms": p.last_pass_ms, "last_duration_ms": p.last_duration_ms,
                    "blocks_checked": p.blocks_checked, "short": p.short, "still_short": p.still_short,
                    "copies_pushed": p.copies_pushed, "bytes_pushed": p.bytes_pushed,
                    "copies_dropped": p.copies_dropped, "staged_adopted": p.staged_adopted,
                    "last_error": p.last_error}),
                format!(
                    "{:>6} {:<8} {:>10} {:>8} {:>6} {:>6} {:>7} {:>10} {:>7} {:>7}  {}",
                    p.passes,
                    yes(p.running),
                    ago(p.last_pass_ms),
                    p.blocks_checked,
                    p.short,
                    p.still_short,
                    p.copies_pushed,
                    human(p.bytes_pushed),
                    p.copies_dropped,
                    p.staged_adopted,
                    p.last_error
                ),
            )
        }
        Pass::Scrub => {
            let p = s.scrub.unwrap_or_default();
            (
                serde_json::json!({"passes": p.passes, "running": p.running,
                    "last_pass_ms": p.last_pass_ms, "blocks_verified": p.blocks_verified,
                    "bytes_verified": p.bytes_verified, "corrupt_found": p.corrupt_found,
                    "restored": p.restored, "quarantined_files": p.quarantined_files}),
                format!(
                    "{:>6} {:<8} {:>10} {:>9} {:>10} {:>7} {:>8} {:>11}",
                    p.passes,
                    yes(p.running),
                    ago(p.last_pass_ms),
                    p.blocks_verified,
                    human(p.bytes_verified),
                    p.corrupt_found,
                    p.restored,
                    p.quarantined_files
                ),
            )
        }
        Pass::Gc => {
            let p = s.gc.clone().unwrap_or_default();
            (
                serde_json::json!({"passes": p.passes, "running": p.running,
                    "last_pass_ms": p.last_pass_ms, "last_duration_ms": p.last_duration_ms,
                    "blocks_checked": p.blocks_checked, "condemned": p.condemned,
                    "deleted": p.deleted, "bytes_freed": p.bytes_freed,
                    "reprieved": p.reprieved, "waiting": p.waiting, "last_error": p.last_error}),
                format!(
                    "{:>6} {:<8} {:>10} {:>8} {:>9} {:>8} {:>10} {:>9} {:>7}  {}",
                    p.passes,
                    yes(p.running),
                    ago(p.last_pass_ms),
                    p.blocks_checked,
                    p.condemned,
                    p.deleted,
                    human(p.bytes_freed),
                    p.reprieved,
                    p.waiting,
                    p.last_error
                ),
            )
        }
    }
}

fn print_maintenance(
    rows: &[(
        meridian_proto::NodeInfo,
        Result<meridian_proto::pb::chunk::NodeStatusResponse>,
    )],
    pass: Pass,
    json: bool,
) -> Result<()> {
    if json {
        let out: Vec<_> = rows
            .iter()
            .map(|(n, r)| match r {
                Ok(s) => {
                    let (mut v, _) = pass_row(pass, s);
                    v["node"] = n.id.0.into();
                    v
                }
                Err(e) => serde_json::json!({"node": n.id.0, "error": format!("{e:#}")}),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    match pass {
        Pass::Repair => println!(
            "{:>5} {:>6} {:<8} {:>10} {:>8} {:>6} {:>6} {:>7} {:>10} {:>7} {:>7}  ERROR",
            "NODE",
            "PASSES",
            "RUNNING",
            "LAST",
            "CHECKED",
            "SHORT",
            "LEFT",
            "PUSHED",
            "BYTES",
            "DROPPED",
            "ADOPTED"
        ),
        Pass::Scrub => println!(
            "{:>5} {:>6} {:<8} {:>10} {:>9} {:>10} {:>7} {:>8} {:>11}",
            "NODE",
            "PASSES",
            "RUNNING",
            "LAST",
            "VERIFIED",
            "BYTES",
            "CORRUPT",
            "RESTORED",
            "QUARANTINED"
        ),
        Pass::Gc => println!(
            "{:>5} {:>6} {:<8} {:>10} {:>8} {:>9} {:>8} {:>10} {:>9} {:>7}  ERROR",
            "NODE",
            "PASSES",
            "RUNNING",
            "LAST",
            "CHECKED",
            "CONDEMNED",
            "DELETED",
            "FREED",
            "REPRIEVED",
            "WAITING"
        ),
    }
    for (n, r) in rows {
        match r {
            Ok(s) => println!("{:>5} {}", n.id.0, pass_row(pass, s).1),
            Err(e) => println!("{:>5} unreachable: {e:#}", n.id.0),
        }
    }
    Ok(())
}

/// Options shared by `admin repair`, `admin scrub` and `admin gc`.
#[derive(Args)]
pub struct PassArgs {
    /// Metaservers of the region.
    #[arg(long, value_delimiter = ',', required = true)]
    meta: Vec<String>,
    /// Start a pass on every node now.
    #[arg(long)]
    now: bool,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

/// Shows (and with `--now` starts) one kind of maintenance pass on every chunkserver.
pub(super) async fn maintenance(pass: Pass, args: PassArgs) -> Result<()> {
    let PassArgs { meta, now, json } = args;
    let map = region_map(&meta, Duration::from_secs(5)).await?;
    let rows = maintain_all(&map, now.then_some(pass)).await;
    print_maintenance(&rows, pass, json)?;
    if now && !json {
        println!("started a {} pass on every node that answered", pass.name());
    }
    Ok(())
}

/// `admin chunk-status`: each chunkserver's capacity, usage and queues, or why it did not
/// answer.
pub(super) async fn status(addresses: &[String], json: bool) -> Result<()> {
    let mut rows = Vec::new();
    for a in addresses {
        rows.push(chunk_status(a).await.unwrap_or_else(|e| ChunkRow {
            address: a.clone(),
            node: 0,
            zone: String::new(),
            capacity_bytes: 0,
            used_bytes: 0,
            free_bytes: 0,
            blocks: 0,
            under_replicated: 0,
            map_epoch: 0,
            ship_queues: Vec::new(),
            error: Some(format!("{e:#}")),
        }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<22} {:>5} {:<8} {:>10} {:>10} {:>10} {:>8} {:>6} {:>6}",
            "ADDRESS", "NODE", "ZONE", "CAPACITY", "USED", "FREE", "BLOCKS", "UNDER", "EPOCH"
        );
        for r in &rows {
            match &r.error {
                Some(e) => println!("{:<22} unreachable: {e}", r.address),
                None => println!(
                    "{:<22} {:>5} {:<8} {:>10} {:>10} {:>10} {:>8} {:>6} {:>6}",
                    r.address,
                    r.node,
                    r.zone,
                    human(r.capacity_bytes),
                    human(r.used_bytes),
                    human(r.free_bytes),
                    r.blocks,
                    r.under_replicated,
                    r.map_epoch
                ),
            }
        }
    }
    if rows.iter().any(|r| r.error.is_some()) {
        anyhow::bail!("some chunkservers could not be reached");
    }
    Ok(())
}
