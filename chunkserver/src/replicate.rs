//! Synchronous in-region replication: the coordinator of a put forwards the verified block
//! to the next placements in parallel, skipping any that fail for the next in the list.

use std::collections::VecDeque;
use std::sync::Arc;

use meridian_proto::channels::ChannelPool;
use meridian_proto::pb::chunk::chunk_service_client::ChunkServiceClient;
use meridian_proto::pb::chunk::{PutHeader, PutRole};
use meridian_proto::{EncodedBlock, NodeId, NodeInfo, placement, wire};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::map::MapView;

/// What forwarding achieved.
#[derive(Debug, Default)]
pub struct Forwarded {
    /// Peers that hold a durable, verified copy, in the order they answered.
    pub stored_on: Vec<NodeId>,
    /// Peers that were tried and failed, with why.
    pub failures: Vec<(NodeId, String)>,
}

impl Forwarded {
    /// The failures as one line for an error message.
    pub fn failure_summary(&self) -> String {
        if self.failures.is_empty() {
            return "no other placement was available".to_string();
        }
        let parts: Vec<String> = self
            .failures
            .iter()
            .map(|(n, why)| format!("{n}: {why}"))
            .collect();
        format!("failed placements: {}", parts.join("; "))
    }
}

/// Forwards blocks to peers.
#[derive(Debug)]
pub struct Replicator {
    me: NodeId,
    map: MapView,
    pool: Arc<ChannelPool>,
}

impl Replicator {
    /// A replicator for node `me`, placing with the map in `map`.
    pub fn new(me: NodeId, map: MapView, pool: Arc<ChannelPool>) -> Self {
        Replicator { me, map, pool }
    }

    /// Sends `block` to `wanted` peers: the first `wanted` placements other than this node,
    /// in parallel; each failure is replaced by the next placement in the fallback order
    /// until `wanted` copies are durable or the list runs out.
    /// `ship` names the block's volume and the regions it lives in, for the replicas to
    /// queue it for the other regions too.
    pub async fn forward(
        &self,
        block: &EncodedBlock,
        wanted: usize,
        replicas: u32,
        ship: Option<(u32, Vec<u32>)>,
    ) -> Forwarded {
        let map = self.map.borrow().clone();
        let mut candidates: VecDeque<NodeInfo> = placement(&block.id, &map, usize::MAX)
            .into_iter()
            .filter(|id| *id != self.me)
            .filter_map(|id| map.node(id).cloned())
            .collect();
        let mut out = Forwarded::default();
        let mut inflight = JoinSet::new();
        loop {
            while out.stored_on.len() + inflight.len() < wanted {
                let Some(node) = candidates.pop_front() else {
                    break;
                };
                inflight.spawn(send_copy(
                    self.pool.clone(),
                    node,
                    block.clone(),
                    map.epoch,
                    replicas,
                    ship.clone(),
                ));
            }
            let Some(joined) = inflight.join_next().await else {
                break;
            };
            match joined {
                Ok((node, Ok(()))) => {
                    debug!(block = %block.id, peer = %node, "replica durable");
                    out.stored_on.push(node);
                }
                Ok((node, Err(why))) => {
                    warn!(block = %block.id, peer = %node, error = %why, "replica failed; trying the next placement");
                    metrics::counter!("meridian_chunk_replica_failures_total").increment(1);
                    out.failures.push((node, why));
                }
                Err(e) => warn!(error = %e, "replica task failed"),
            }
        }
        out
    }
}

/// One forwarded put to `node`, as a replica (it stores and does not forward further);
/// `replicas` tells it how many copies the block wants, and `ship` the volume and regions
/// to queue it for.
pub(crate) async fn send_copy(
    pool: Arc<ChannelPool>,
    node: NodeInfo,
    block: EncodedBlock,
    epoch: u64,
    replicas: u32,
    ship: Option<(u32, Vec<u32>)>,
) -> (NodeId, Result<(), String>) {
    let result = async {
        let channel = pool.get(&node.address).map_err(|e| e.to_string())?;
        let (volume, regions) = ship.unwrap_or_default();
        let header = PutHeader {
            role: PutRole::Replica as i32,
            map_epoch: epoch,
            replicas,
            volume,
            regions,
            ..Default::default()
        };
        let msgs = wire::put_messages(&block, header);
        ChunkServiceClient::new(channel)
            .put(tokio_stream::iter(msgs))
            .await
            .map(|_| ())
            .map_err(|s| format!("{} ({:?}) at {}", s.message(), s.code(), node.address))
    }
    .await;
    (node.id, result)
}
