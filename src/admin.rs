//! `meridian admin`: look at a running cluster. Tables for people, `--json` for scripts.

use anyhow::{Context, Result};
use clap::Subcommand;
use meridian_proto::pb::chunk::NodeStatusRequest;
use meridian_proto::pb::chunk::chunk_service_client::ChunkServiceClient;
use serde::Serialize;

#[derive(Subcommand)]
pub enum AdminCommand {
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
    error: Option<String>,
}

async fn chunk_status(address: &str) -> Result<ChunkRow> {
    let mut client = ChunkServiceClient::connect(format!("http://{address}"))
        .await
        .with_context(|| format!("cannot reach chunkserver {address}"))?;
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
        error: None,
    })
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

pub async fn run(cmd: AdminCommand) -> Result<()> {
    match cmd {
        AdminCommand::ChunkStatus { addresses, json } => {
            let mut rows = Vec::new();
            for a in &addresses {
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
                    error: Some(format!("{e:#}")),
                }));
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<22} {:>5} {:<8} {:>10} {:>10} {:>10} {:>8} {:>6} {:>6}",
                    "ADDRESS",
                    "NODE",
                    "ZONE",
                    "CAPACITY",
                    "USED",
                    "FREE",
                    "BLOCKS",
                    "UNDER",
                    "EPOCH"
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
    }
}
