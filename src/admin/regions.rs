//! `meridian admin regions`: replication with the other regions as this region sees it:
//! lag both ways, the links' history, what history is kept on disk, blocks queued, and
//! the volumes being brought into the region.

use anyhow::Result;
use meridian_proto::pb::meta::RegionStatusRequest;
use std::collections::BTreeMap;
use std::time::Duration;

use super::chunks::maintain_all;
use super::{human, meta_rpc, region_map};

pub async fn show(meta: Vec<String>, json: bool) -> Result<()> {
    let mut last = None;
    for addr in &meta {
        let reply = match meta_rpc(addr).await {
            Ok(mut c) => c.region_status(RegionStatusRequest {}).await,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let r = match reply {
            Ok(r) => r.into_inner(),
            Err(e) => {
                last = Some(anyhow::anyhow!("{addr}: {}", e.message()));
                continue;
            }
        };
        let (queues, silent) = block_queues(&meta).await;
        let queued = |region: u32| queues.get(&region).copied().unwrap_or_default();
        if json {
            let peers: Vec<_> = r.peers.iter().map(|p| serde_json::json!({
                "region": p.region, "reachable": p.reachable, "last_contact_ms": p.last_contact_ms,
                "ops_behind": p.ops_behind, "bytes_behind": p.bytes_behind,
                "oldest_unshipped_ms": p.oldest_unshipped_ms, "applied_seq": p.applied_seq,
                "peer_head_seq": p.peer_head_seq, "error": p.error,
                "blocks_queued": queued(p.region).0, "oldest_block_ms": queued(p.region).1,
                "since_ms": p.since_ms, "acked_seq": p.acked_seq, "via": p.via,
                "history": p.history.iter().map(|e| serde_json::json!({
                    "at_ms": e.at_ms, "reachable": e.reachable, "detail": e.detail,
                })).collect::<Vec<_>>(),
            })).collect();
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "region": r.region, "head_seq": r.head_seq, "peers": peers,
                    "chunkservers_not_answering": silent,
                    "kept": {"changelog_records": r.changelog_records,
                        "merged_log_records": r.merged_log_records,
                        "tombstones": r.tombstones, "conflicts": r.conflicts},
                "backfills": r.backfills.iter().map(|b| serde_json::json!({
                    "volume": b.volume, "name": b.name, "from": b.from, "state": b.state,
                    "bytes_received": b.bytes_received, "bytes_total": b.bytes_total,
                    "inodes_installed": b.inodes_installed, "error": b.error,
                    "blocks_total": b.blocks_total, "blocks_done": b.blocks_done,
                    "records_waiting": b.records_waiting,
                })).collect::<Vec<_>>(),
                }))?
            );
        } else {
            println!("region {} (change log at {})", r.region, r.head_seq);
            println!(
                "kept on disk: {} change-log records, {} merged-log records, {} tombstones, {} conflicts",
                r.changelog_records, r.merged_log_records, r.tombstones, r.conflicts
            );
            println!(
                "{:>6} {:<9} {:>10} {:>10} {:>10} {:>9} {:>14} {:>8} {:>9}  ERROR",
                "PEER",
                "LINK",
                "OPS-BEHIND",
                "BYTES",
                "RPO",
                "CONTACT",
                "APPLIED/THEIRS",
                "BLOCKS-Q",
                "BLOCK-RPO"
            );
            for p in &r.peers {
                let (blocks, oldest) = queued(p.region);
                println!(
                    "{:>6} {:<9} {:>10} {:>10} {:>10} {:>9} {:>14} {:>8} {:>9}  {}",
                    p.region,
                    if p.via != 0 {
                        format!("via {}", p.via)
                    } else if p.reachable {
                        "up".to_string()
                    } else {
                        "cut".to_string()
                    },
                    p.ops_behind,
                    human(p.bytes_behind),
                    format!("{:.1}s", p.oldest_unshipped_ms as f64 / 1000.0),
                    format!("{:.1}s", p.last_contact_ms as f64 / 1000.0),
                    format!("{}/{}", p.applied_seq, p.peer_head_seq),
                    blocks,
                    format!("{:.1}s", oldest as f64 / 1000.0),
                    p.error
                );
            }
            if silent > 0 {
                println!(
                    "({silent} chunkservers did not answer: their block queues are not counted)"
                );
            }
            print_link_history(&r.peers);
            print_backfills(&r.backfills);
        }
        return Ok(());
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no metaserver given")))
}

/// Blocks queued on this region's chunkservers for each other region: region -> (blocks,
/// oldest age in ms), and how many chunkservers did not answer.
async fn block_queues(meta: &[String]) -> (BTreeMap<u32, (u64, u64)>, usize) {
    let mut out: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    let Ok(map) = region_map(meta, Duration::from_secs(2)).await else {
        return (out, 0);
    };
    let mut silent = 0;
    for (_, status) in maintain_all(&map, None).await {
        match status {
            Ok(s) => {
                for q in s.ship_queues {
                    let e = out.entry(q.region).or_default();
                    e.0 += q.blocks;
                    e.1 = e.1.max(q.oldest_ms);
                }
            }
            Err(_) => silent += 1,
        }
    }
    (out, silent)
}

/// The link detector's verdicts about each peer, newest last.
fn print_link_history(peers: &[meridian_proto::pb::meta::PeerLag]) {
    let now = meridian_proto::physical_ms();
    for p in peers.iter().filter(|p| !p.history.is_empty()) {
        println!("link to region {}:", p.region);
        for e in &p.history {
            println!(
                "  {:>9} ago  {:<11}  {}",
                format!("{:.1}s", now.saturating_sub(e.at_ms) as f64 / 1000.0),
                if e.reachable {
                    "reachable"
                } else {
                    "unreachable"
                },
                e.detail
            );
        }
    }
}

/// Volumes being brought into this region (`admin volume-add-region`).
pub(super) fn print_backfills(rows: &[meridian_proto::pb::meta::Backfill]) {
    if rows.is_empty() {
        return;
    }
    println!("volumes brought into this region:");
    for b in rows {
        println!(
            "  {:<20} from region {:<3} {}",
            b.name,
            b.from,
            backfill_progress(b)
        );
    }
}

/// Where a backfill stands, in a line.
pub(super) fn backfill_progress(b: &meridian_proto::pb::meta::Backfill) -> String {
    format!(
        "{}: {} of {} received, {} inodes installed, {} of {} blocks, {} records waiting{}",
        b.state,
        human(b.bytes_received),
        human(b.bytes_total),
        b.inodes_installed,
        b.blocks_done,
        b.blocks_total,
        b.records_waiting,
        if b.error.is_empty() {
            String::new()
        } else {
            format!(" ({})", b.error)
        }
    )
}
