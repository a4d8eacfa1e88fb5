//! Puts of blocks: through the first placement that answers, by its range port (alone, or
//! a mount's gathered blocks in batches) or gRPC.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use meridian_proto::pb::chunk::{PutHeader, PutResponse, PutRole};
use meridian_proto::put_wire::{self, PutFrame, PutReply};
use meridian_proto::{BlockId, ClusterMap, EncodedBlock, NodeId, NodeInfo, placement, wire};
use tonic::Code;
use tracing::debug;

use super::{BlockClient, ClientError, PutReceipt, range_port};

impl BlockClient {
    /// Stores `block` with `replicas` copies (failing below `min_copies`), through the first
    /// placement that answers.
    pub async fn put(
        &self,
        block: &EncodedBlock,
        replicas: u32,
        min_copies: u32,
    ) -> Result<PutReceipt, ClientError> {
        self.put_for(block, replicas, min_copies, self.volume, &self.regions)
            .await
    }

    /// As [`put`](Self::put), for a block of `volume`, which lives in `regions`.
    pub async fn put_for(
        &self,
        block: &EncodedBlock,
        replicas: u32,
        min_copies: u32,
        volume: u32,
        regions: &[u32],
    ) -> Result<PutReceipt, ClientError> {
        let map = self.map();
        let order = placement(&block.id, &map, usize::MAX);
        if order.is_empty() {
            return Err(ClientError::NoNodes(block.id));
        }
        let mut tried = Vec::new();
        for node in order.iter().filter_map(|id| map.node(*id)) {
            let header = self.coordinator_header(&map, (replicas, min_copies), volume, regions);
            if let Some(receipt) = self.put_through_port(node, block, &header).await {
                return Ok(receipt);
            }
            let mut rpc = match self.rpc(node) {
                Ok(r) => r,
                Err(e) => {
                    tried.push(format!("{}: {e}", node.id));
                    continue;
                }
            };
            match rpc
                .put(tokio_stream::iter(wire::put_messages(block, header)))
                .await
            {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    if !resp.cap.is_empty() {
                        crate::caps::record(block.id, volume, &resp.cap);
                    }
                    return Ok(receipt(block.id, resp));
                }
                Err(s)
                    if s.code() == Code::InvalidArgument
                        || s.code() == Code::FailedPrecondition =>
                {
                    return Err(ClientError::Rejected {
                        id: block.id,
                        node: node.id,
                        message: s.message().to_string(),
                    });
                }
                Err(s) => {
                    debug!(block = %block.id, node = %node.id, error = %s.message(), "put failed; trying the next placement");
                    tried.push(format!("{}: {} ({:?})", node.id, s.message(), s.code()));
                }
            }
        }
        Err(ClientError::Exhausted {
            id: block.id,
            what: "put",
            tried: tried.join("; "),
        })
    }

    /// Puts `blocks` whose first placement is the same node to it together, through its
    /// range port (a batch: the node stores them under one fdatasync and sends their
    /// copies to each replica together): the receipt of each block a batch stored, in
    /// order; `None` for the others (not batched: alone with its node, or the port not
    /// usable; or not stored), which the caller puts alone.
    pub async fn put_batched(
        &self,
        blocks: &[EncodedBlock],
        replicas: u32,
        min_copies: u32,
    ) -> Vec<Option<PutReceipt>> {
        let mut out: Vec<Option<PutReceipt>> = blocks.iter().map(|_| None).collect();
        let map = self.map();
        // By first placement, in batches within the wire's limits.
        let mut by_node: BTreeMap<NodeId, Vec<Vec<usize>>> = BTreeMap::new();
        for (i, b) in blocks.iter().enumerate() {
            if b.payload.len() > put_wire::MAX_PUT as usize {
                continue;
            }
            let Some(first) = placement(&b.id, &map, 1).first().copied() else {
                continue;
            };
            let batches = by_node.entry(first).or_default();
            let bytes = |batch: &Vec<usize>| -> usize {
                batch.iter().map(|&j| blocks[j].payload.len()).sum()
            };
            match batches.last_mut() {
                Some(last)
                    if last.len() < put_wire::BATCH_MAX
                        && bytes(last) + b.payload.len() <= put_wire::BATCH_BYTES =>
                {
                    last.push(i)
                }
                _ => batches.push(vec![i]),
            }
        }
        let header =
            self.coordinator_header(&map, (replicas, min_copies), self.volume, &self.regions);
        let mut sends = Vec::new();
        for (node, batches) in by_node {
            let Some(node) = map.node(node).filter(|n| self.port_takes(n)) else {
                continue;
            };
            for batch in batches.into_iter().filter(|batch| batch.len() > 1) {
                let frames: Option<Vec<_>> = batch
                    .iter()
                    .map(|&i| {
                        PutFrame {
                            header: wire::put_header(&blocks[i], header.clone()),
                            payload: blocks[i].payload.clone(),
                        }
                        .outgoing()
                        .ok()
                    })
                    .collect();
                if let Some(frames) = frames {
                    sends.push((node, batch, frames));
                }
            }
        }
        let answers = futures::future::join_all(
            sends
                .iter()
                .map(|(node, _, frames)| range_port::put_batch_async(&node.range_address, frames)),
        )
        .await;
        for ((node, batch, _), answer) in sends.iter().zip(answers) {
            let replies = match answer {
                Some(Ok(replies)) => replies,
                Some(Err(e)) => {
                    debug!(node = %node.id, blocks = batch.len(), error = %e, "put port batch failed; putting alone");
                    continue;
                }
                None => continue,
            };
            for (&i, reply) in batch.iter().zip(replies) {
                if let PutReply::Stored(resp) = reply {
                    self.put_port_puts.fetch_add(1, Ordering::Relaxed);
                    out[i] = Some(receipt(blocks[i].id, resp));
                }
            }
        }
        out
    }

    /// Puts a block through `node`'s range port; `None` when the port does not
    /// store it (not open, left alone lately, refused, failed: the caller puts through
    /// gRPC, which gives any error its status). Not for shipments, token holders or
    /// routed nodes.
    async fn put_through_port(
        &self,
        node: &NodeInfo,
        block: &EncodedBlock,
        header: &PutHeader,
    ) -> Option<PutReceipt> {
        if block.payload.len() > put_wire::MAX_PUT as usize || !self.port_takes(node) {
            return None;
        }
        // A short payload goes in one buffer with its head, a long one as it is held.
        let frame = PutFrame {
            header: wire::put_header(block, header.clone()),
            payload: block.payload.clone(),
        }
        .outgoing()
        .ok()?;
        match range_port::put_async(&node.range_address, &frame).await? {
            Ok(PutReply::Stored(resp)) => {
                self.put_port_puts.fetch_add(1, Ordering::Relaxed);
                Some(receipt(block.id, resp))
            }
            Ok(other) => {
                debug!(block = %block.id, node = %node.id, reply = ?other, "put port did not store; putting through gRPC");
                None
            }
            Err(e) => {
                debug!(block = %block.id, node = %node.id, error = %e, "put port failed; putting through gRPC");
                None
            }
        }
    }

    /// Whether puts may go through `node`'s range port: not for shipments, token holders
    /// or routed nodes.
    fn port_takes(&self, node: &NodeInfo) -> bool {
        self.put_port
            && self.origin == 0
            && !node.range_address.is_empty()
            && !meridian_proto::token::has_client_token()
            && !self.pool.routes(&node.address)
    }

    /// The header of a put this client coordinates: `copies` (wanted, at least) of a block
    /// of `volume`, which lives in `regions`.
    fn coordinator_header(
        &self,
        map: &ClusterMap,
        (replicas, min_copies): (u32, u32),
        volume: u32,
        regions: &[u32],
    ) -> PutHeader {
        PutHeader {
            role: PutRole::Coordinator as i32,
            replicas,
            min_copies,
            map_epoch: map.epoch,
            regions: regions.to_vec(),
            origin_region: self.origin,
            volume,
            ..Default::default()
        }
    }
}

/// The receipt of `id`'s put, from its coordinator's answer.
fn receipt(id: BlockId, resp: PutResponse) -> PutReceipt {
    PutReceipt {
        id,
        stored_on: resp.stored_on.into_iter().map(NodeId).collect(),
        degraded: resp.degraded,
        already_present: resp.already_present,
    }
}
