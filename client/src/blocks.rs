//! Reading and writing blocks on a region's chunkservers.
//!
//! A put goes to the first reachable node of the block's placement, which stores it and
//! replicates it to the others. A read tries the placements nearest first (same zone, then
//! the rest; suspect nodes last), verifies the hash of what it receives, and falls back to
//! the next replica on any error or mismatch.

mod put;
pub(crate) mod range_port;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use meridian_proto::channels::{ChannelPool, Timeouts};
use meridian_proto::pb::chunk::chunk_service_client::ChunkServiceClient;
use meridian_proto::pb::chunk::{GetHeader, GetRequest, HasRequest};
use meridian_proto::range_wire::{self, RangeReply, RangeRequest};
use meridian_proto::recent::Recent;
use meridian_proto::{
    BlockError, BlockId, ClusterMap, Compression, EncodedBlock, NodeId, NodeInfo, NodeState,
    Outboard, ZoneId, placement, wire,
};
use tokio::sync::watch;
use tracing::{debug, warn};

pub use range_port::{BeforeWait, blocking_reads, blocking_reads_telling};

/// Why a block operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The cluster map lists no node that can take or serve the block.
    #[error("block {0}: the cluster map has no usable chunkserver")]
    NoNodes(BlockId),
    /// A node refused the request as invalid; retrying elsewhere would not help.
    #[error("block {id}: rejected by {node}: {message}")]
    Rejected {
        /// The block.
        id: BlockId,
        /// Who refused.
        node: NodeId,
        /// Why.
        message: String,
    },
    /// Every candidate node failed.
    #[error("block {id}: {what} failed on every placement: {tried}")]
    Exhausted {
        /// The block.
        id: BlockId,
        /// "put" or "read".
        what: &'static str,
        /// Each node tried, and what went wrong there.
        tried: String,
    },
    /// The block could not be encoded.
    #[error(transparent)]
    Block(#[from] BlockError),
}

/// A block's outboard known here, with the block's length.
type KnownOutboard = (u64, Arc<Outboard>);

/// The result of a successful put.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutReceipt {
    /// The block.
    pub id: BlockId,
    /// Nodes holding a durable, verified copy (the coordinator first).
    pub stored_on: Vec<NodeId>,
    /// Fewer copies than asked; the coordinator recorded the block for repair.
    pub degraded: bool,
    /// The node already held the block.
    pub already_present: bool,
}

/// A client of a region's chunkservers.
#[derive(Debug)]
pub struct BlockClient {
    map: watch::Receiver<Arc<ClusterMap>>,
    zone: Option<ZoneId>,
    pool: ChannelPool,
    max_block_len: u32,
    /// The regions the blocks' volume lives in (sent with every put and read, for
    /// residency checks, shipping and fetch-on-miss).
    regions: Vec<u32>,
    /// The volume the blocks belong to (0: none; such blocks stay in their region).
    volume: u32,
    /// Set when this client ships blocks from another region.
    origin: u32,
    /// Outboards this client verified against their ids: a range read of their blocks
    /// asks for the groups alone.
    outboards: Recent<BlockId, (u64, Arc<Outboard>)>,
    /// Range reads may go through the nodes' range ports.
    range_port: bool,
    /// Range reads answered through a range port.
    range_port_reads: AtomicU64,
    /// Small blocks may be put through the nodes' range ports.
    put_port: bool,
    /// Puts stored through a range port.
    put_port_puts: AtomicU64,
}

/// Blocks whose verified outboards a client keeps (8 KiB each for 4 MiB blocks).
const KNOWN_OUTBOARDS: usize = 1024;

/// Replies at least this long are verified on the blocking pool rather than the runtime's
/// worker (a 4 MiB block hashes in a millisecond or two).
const VERIFY_APART: usize = 1 << 20;

/// Verifies groups a node sent (plaintext at `at`) against the block id: with `known`, the
/// outboard known here when the node sent none, or else with the outboard it sent, which
/// is returned to be kept (`None` when none was sent).
fn verify_sent(
    id: &BlockId,
    known: Option<&KnownOutboard>,
    raw_len: u64,
    at: u64,
    outboard: &[u8],
    plain: &[u8],
) -> Result<Option<Outboard>, String> {
    match known {
        Some((_, ob)) => ob
            .verify_groups(id, raw_len, at, plain)
            .map(|()| None)
            .map_err(|e| e.to_string()),
        None => {
            let ob = Outboard::from_bytes(raw_len, outboard).map_err(|e| e.to_string())?;
            ob.verify(id, raw_len, at, plain)
                .map_err(|e| e.to_string())?;
            Ok((!outboard.is_empty()).then_some(ob))
        }
    }
}

/// A found reply verified apart from the runtime (see [`verify_apart`]).
struct VerifiedApart {
    raw_len: u64,
    /// The plaintext's offset in the block.
    at: u64,
    plain: Bytes,
    /// The outboard known here was used (the node sent none).
    used_known: bool,
    checked: Result<Option<Outboard>, String>,
}

/// Verifies `reply` if it found a plaintext long enough to be hashed apart from the
/// runtime ([`VERIFY_APART`]), as [`verify_sent`] does, with the outboard `known` here
/// only when the node sent none for a block of that length; any other reply comes back.
fn verify_apart(
    id: &BlockId,
    known: Option<&KnownOutboard>,
    reply: std::io::Result<RangeReply>,
) -> Result<VerifiedApart, std::io::Result<RangeReply>> {
    match reply {
        Ok(RangeReply::Found {
            raw_len,
            offset,
            outboard,
            plain,
        }) if plain.len() >= VERIFY_APART => {
            let (raw_len, at) = (u64::from(raw_len), u64::from(offset));
            let known = known.filter(|(l, _)| outboard.is_empty() && *l == raw_len);
            let checked = verify_sent(id, known, raw_len, at, &outboard, &plain);
            Ok(VerifiedApart {
                raw_len,
                at,
                plain,
                used_known: known.is_some(),
                checked,
            })
        }
        other => Err(other),
    }
}

impl BlockClient {
    /// A client that places blocks with the map in `map`, preferring replicas in `zone`.
    pub fn new(
        map: watch::Receiver<Arc<ClusterMap>>,
        zone: Option<ZoneId>,
        timeouts: Timeouts,
    ) -> Self {
        BlockClient {
            map,
            zone,
            pool: ChannelPool::new(timeouts),
            max_block_len: meridian_proto::block::MAX_BLOCK_LEN,
            regions: Vec::new(),
            volume: 0,
            origin: 0,
            outboards: Recent::new(KNOWN_OUTBOARDS),
            range_port: true,
            range_port_reads: AtomicU64::new(0),
            put_port: true,
            put_port_puts: AtomicU64::new(0),
        }
    }

    /// Puts and reads for `volume`, which lives in `regions` (the servers decide from their
    /// own knowledge of the volume; the regions tell this client whether to fetch across).
    pub fn for_volume(mut self, volume: u32, regions: &[meridian_proto::RegionId]) -> Self {
        self.volume = volume;
        self.regions = regions.iter().map(|r| u32::from(r.0)).collect();
        self
    }

    /// Whether range reads may go through the nodes' range ports (default: yes).
    pub fn with_range_port(mut self, on: bool) -> Self {
        self.range_port = on;
        self
    }

    /// Whether small blocks may be put through the nodes' range ports (default: yes).
    pub fn with_put_port(mut self, on: bool) -> Self {
        self.put_port = on;
        self
    }

    /// Puts stored through a range port so far.
    pub fn put_port_puts(&self) -> u64 {
        self.put_port_puts.load(Ordering::Relaxed)
    }

    /// Puts ship blocks from region `origin` (the receivers do not ship them again).
    pub fn shipping_from(mut self, origin: meridian_proto::RegionId) -> Self {
        self.origin = u32::from(origin.0);
        self
    }

    /// Dials each node address that is a key of `routes` at its value instead (other
    /// regions reached through a gateway, tunnel or fault proxy).
    pub fn with_routes(mut self, routes: std::collections::HashMap<String, String>) -> Self {
        self.pool = std::mem::take(&mut self.pool).with_routes(routes);
        self
    }

    /// A client over a map that does not change.
    pub fn with_map(map: ClusterMap, zone: Option<ZoneId>) -> Self {
        let (_tx, rx) = watch::channel(Arc::new(map));
        BlockClient::new(rx, zone, Timeouts::default())
    }

    /// The map this client places with now.
    pub fn map(&self) -> Arc<ClusterMap> {
        self.map.borrow().clone()
    }

    fn rpc(
        &self,
        node: &NodeInfo,
    ) -> Result<ChunkServiceClient<meridian_proto::channels::Authed>, String> {
        let channel = self.pool.get(&node.address).map_err(|e| e.to_string())?;
        Ok(
            ChunkServiceClient::new(meridian_proto::channels::authed(channel))
                // A whole block's Get answer comes in one message (see `fetch_from`).
                .max_decoding_message_size(wire::MAX_MESSAGE_LEN + (64 << 10))
                .max_encoding_message_size(2 * wire::CHUNK_LEN),
        )
    }

    /// The nodes to read `id` from: its first `replicas` placements (the nodes that should
    /// hold it) with those in this client's zone first and suspect ones last, then the rest
    /// of the fallback order (where a degraded put may have landed it), then nodes that take
    /// no new blocks (draining, down) but may still hold it.
    pub fn read_order(&self, id: &BlockId, replicas: u32) -> Vec<NodeInfo> {
        let map = self.map();
        let order = placement(id, &map, usize::MAX);
        let (home, fallback) = order.split_at(order.len().min(replicas as usize));
        let mut home: Vec<NodeInfo> = home.iter().filter_map(|n| map.node(*n).cloned()).collect();
        home.sort_by_key(|n| {
            let far = self.zone.as_ref().is_some_and(|z| *z != n.zone);
            (n.state == NodeState::Suspect, far)
        });
        let mut rest: Vec<NodeInfo> = map
            .nodes
            .iter()
            .filter(|n| !n.state.accepts_blocks())
            .cloned()
            .collect();
        rest.sort_by_key(|n| n.state == NodeState::Down);
        home.into_iter()
            .chain(fallback.iter().filter_map(|n| map.node(*n).cloned()))
            .chain(rest)
            .collect()
    }

    /// Reads a whole block, stored with `replicas` copies, from the nearest replica that
    /// returns verified bytes.
    pub async fn get(&self, id: &BlockId, replicas: u32) -> Result<Bytes, ClientError> {
        let order = self.read_order(id, replicas);
        if order.is_empty() {
            return Err(ClientError::NoNodes(*id));
        }
        // The nearest replica's range port first: the block arrives in one buffer.
        if let Some((plain, raw_len)) = self.whole_through_port(&order[0], id).await
            && plain.len() as u64 == raw_len
        {
            return Ok(plain);
        }
        let mut tried = Vec::new();
        for node in &order {
            match self.get_from(node, id).await {
                Ok(bytes) => return Ok(bytes),
                Err(e) => {
                    warn!(block = %id, node = %node.id, error = %e, "read failed; trying the next replica");
                    tried.push(format!("{}: {e}", node.id));
                }
            }
        }
        // No copy in this region yet (it is still being shipped): ask the nearest replica to
        // fetch it from another region of the volume.
        if self.regions.len() > 1 {
            for node in order.iter().take(replicas.max(1) as usize) {
                match self.fetch_from(node, id, true).await {
                    Ok((_, plain)) => return Ok(plain),
                    Err(e) => {
                        tried.push(format!("{} (fetching from another region): {e}", node.id))
                    }
                }
            }
        }
        Err(ClientError::Exhausted {
            id: *id,
            what: "read",
            tried: tried.join("; "),
        })
    }

    /// Reads `[offset, offset + len)` of a block's plaintext (within the block) from the
    /// nearest replica that returns verified bytes: the node reads and sends only the
    /// 16 KiB groups covering the range, with the block's outboard, and they are verified
    /// here against the block id. Falls back to the whole block when no replica can.
    pub async fn get_range(
        &self,
        id: &BlockId,
        replicas: u32,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, ClientError> {
        let order = self.read_order(id, replicas);
        if let Some(got) = order
            .first()
            .and_then(|node| self.range_port_read(node, id, offset, len))
        {
            return Ok(got.0);
        }
        for node in order {
            match self.range_from(&node, id, offset, len).await {
                Ok(bytes) => return Ok(bytes),
                Err(e) => {
                    warn!(block = %id, node = %node.id, error = %e, "range read failed; trying the next replica");
                }
            }
        }
        let whole = self.get(id, replicas).await?;
        let end = offset.saturating_add(len).min(whole.len() as u64);
        Ok(whole.slice(offset.min(end) as usize..end as usize))
    }

    /// One Get call to `node`: its header and payload (at most a block's worth).
    async fn call_get(
        &self,
        node: &NodeInfo,
        mut request: GetRequest,
    ) -> Result<(GetHeader, Bytes), String> {
        if crate::caps::in_use()
            && let Ok(id) = BlockId::from_slice(&request.block_id)
        {
            request.cap = crate::caps::get(&id, request.volume);
        }
        let status = |s: tonic::Status| format!("{} ({:?})", s.message(), s.code());
        let mut stream = self
            .rpc(node)?
            .get(request)
            .await
            .map_err(status)?
            .into_inner();
        wire::read_get(&mut stream, self.max_block_len)
            .await
            .map_err(status)
    }

    async fn range_from(
        &self,
        node: &NodeInfo,
        id: &BlockId,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, String> {
        let known = self.outboards.get(id);
        let request = GetRequest {
            block_id: Bytes::copy_from_slice(id.as_bytes()),
            offset: u32::try_from(offset).map_err(|_| "offset beyond any block")?,
            length: u32::try_from(len).map_err(|_| "length beyond any block")?,
            with_outboard: true,
            outboard_known: known.is_some(),
            regions: self.regions.clone(),
            volume: self.volume,
            ..Default::default()
        };
        let (header, plain) = self.call_get(node, request).await?;
        let (raw_len, at) = (u64::from(header.raw_len), u64::from(header.offset));
        self.check_range(id, known, raw_len, at, &header.outboard, plain, offset, len)
    }

    /// A small block whole (`len`: its length as far as the caller knows, as a small
    /// file's extent tells), read and verified through the nearest replica's range port if
    /// this thread may wait on one; `None` when it cannot (the caller then reads through
    /// gRPC), or when the block is longer than `len`.
    pub fn get_small(&self, id: &BlockId, replicas: u32, len: u64) -> Option<Bytes> {
        if !self.range_port || !range_port::may_wait() {
            return None;
        }
        let node = self.read_order(id, replicas).into_iter().next()?;
        let (bytes, raw_len) = self.range_port_read(&node, id, 0, len)?;
        (raw_len == bytes.len() as u64).then_some(bytes)
    }

    /// Reads through `node`'s range port, if this thread may wait on it and the node has
    /// one: the bytes and the block's length. `None` leaves the read to gRPC (also when
    /// the port answers anything but verified bytes).
    fn range_port_read(
        &self,
        node: &NodeInfo,
        id: &BlockId,
        offset: u64,
        len: u64,
    ) -> Option<(Bytes, u64)> {
        if !range_port::may_wait() {
            return None;
        }
        let (request, known) = self.port_request(node, id, offset, len)?;
        let reply = range_port::call(&node.range_address, &request, self.max_block_len)?;
        self.port_checked(node, id, known, reply, offset, len)
    }

    /// A whole block through `node`'s range port, from any task (see
    /// [`range_port::call_async`]): the bytes, and the block's length (more than the bytes
    /// when the block is longer than a range read may be; the caller then reads through
    /// gRPC).
    async fn whole_through_port(&self, node: &NodeInfo, id: &BlockId) -> Option<(Bytes, u64)> {
        let len = u64::from(range_wire::MAX_RANGE.min(self.max_block_len));
        let (request, known) = self.port_request(node, id, 0, len)?;
        let (address, max_len) = (node.range_address.clone(), self.max_block_len);
        let (block, kept) = (*id, known.clone());
        // A long plaintext is hashed on the blocking pool: megabytes hashed on the
        // runtime's worker would hold back meanwhile every other fetch's request and reply
        // (a sequential reader's read-ahead waited on it, and the disks with it).
        let verified = if meridian_proto::tls::current().is_some() {
            // Over TLS decrypted as it is read: fetched and verified there in one go.
            tokio::task::spawn_blocking(move || {
                let reply = range_port::call_on_pool(&address, &request, max_len)?;
                Some(verify_apart(&block, kept.as_ref(), reply))
            })
            .await
            .ok()
            .flatten()?
        } else {
            let reply = range_port::call_async(&address, &request, max_len).await?;
            match &reply {
                Ok(RangeReply::Found { plain, .. }) if plain.len() >= VERIFY_APART => {
                    tokio::task::spawn_blocking(move || verify_apart(&block, kept.as_ref(), reply))
                        .await
                        .ok()?
                }
                _ => Err(reply),
            }
        };
        let v = match verified {
            Ok(v) => v,
            Err(other) => return self.port_checked(node, id, known, other, 0, len),
        };
        let outcome = self
            .checked_range(
                id,
                v.used_known,
                v.checked,
                v.raw_len,
                v.at,
                v.plain,
                0,
                len,
            )
            .map(|bytes| (bytes, v.raw_len));
        self.port_outcome(node, id, outcome)
    }

    /// The range-port request for a read of `node`, and the outboard known here; `None`
    /// when this client or the node has no range port.
    fn port_request(
        &self,
        node: &NodeInfo,
        id: &BlockId,
        offset: u64,
        len: u64,
    ) -> Option<(RangeRequest, Option<KnownOutboard>)> {
        // Nodes dialed through a route (a gateway, a proxy) are reached only that way; a
        // token holder's reads need its token, which the port does not carry.
        if !self.range_port
            || node.range_address.is_empty()
            || self.pool.routes(&node.address)
            || meridian_proto::token::has_client_token()
        {
            return None;
        }
        let known = self.outboards.get(id);
        let request = RangeRequest {
            block: *id,
            offset: u32::try_from(offset).ok()?,
            length: u32::try_from(len).ok()?,
            outboard_known: known.is_some(),
            volume: self.volume,
            regions: self.regions.clone(),
        };
        Some((request, known))
    }

    /// What a range port answered, verified: the bytes and the block's length, or `None`.
    fn port_checked(
        &self,
        node: &NodeInfo,
        id: &BlockId,
        known: Option<KnownOutboard>,
        reply: std::io::Result<RangeReply>,
        offset: u64,
        len: u64,
    ) -> Option<(Bytes, u64)> {
        let outcome = match reply {
            Ok(RangeReply::Found {
                raw_len,
                offset: at,
                outboard,
                plain,
            }) => self
                .check_range(
                    id,
                    known,
                    u64::from(raw_len),
                    u64::from(at),
                    &outboard,
                    plain,
                    offset,
                    len,
                )
                .map(|bytes| (bytes, u64::from(raw_len))),
            Ok(RangeReply::Missing(m) | RangeReply::Refused(m) | RangeReply::Failed(m)) => Err(m),
            Ok(RangeReply::Busy) => Err("busy".into()),
            Err(e) => Err(e.to_string()),
        };
        self.port_outcome(node, id, outcome)
    }

    /// A range port's verified answer counted, or its failure logged.
    fn port_outcome(
        &self,
        node: &NodeInfo,
        id: &BlockId,
        outcome: Result<(Bytes, u64), String>,
    ) -> Option<(Bytes, u64)> {
        match outcome {
            Ok(bytes) => {
                self.range_port_reads.fetch_add(1, Ordering::Relaxed);
                Some(bytes)
            }
            Err(e) => {
                debug!(block = %id, node = %node.id, error = %e, "range port read failed; reading through gRPC");
                None
            }
        }
    }

    /// Range reads this client had answered through a range port.
    pub fn range_port_reads(&self) -> u64 {
        self.range_port_reads.load(Ordering::Relaxed)
    }

    /// Verifies groups a node sent for a read of `[offset, offset + len)` (`at`: their
    /// offset; `outboard`: the block's, unless the client said it knows it) against the
    /// block id, and cuts the read out of them.
    #[allow(clippy::too_many_arguments)]
    fn check_range(
        &self,
        id: &BlockId,
        known: Option<KnownOutboard>,
        raw_len: u64,
        at: u64,
        outboard: &[u8],
        plain: Bytes,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, String> {
        let known = known.filter(|(l, _)| outboard.is_empty() && *l == raw_len);
        let checked = verify_sent(id, known.as_ref(), raw_len, at, outboard, &plain);
        self.checked_range(
            id,
            known.is_some(),
            checked,
            raw_len,
            at,
            plain,
            offset,
            len,
        )
    }

    /// After [`verify_sent`]: keeps the outboard the node sent (or forgets the one known
    /// here, `used_known`, when the groups failed against it), and cuts the read of
    /// `[offset, offset + len)` out of the verified groups.
    #[allow(clippy::too_many_arguments)]
    fn checked_range(
        &self,
        id: &BlockId,
        used_known: bool,
        checked: Result<Option<Outboard>, String>,
        raw_len: u64,
        at: u64,
        plain: Bytes,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, String> {
        match checked {
            Err(e) => {
                if used_known {
                    self.outboards.forget(id);
                }
                return Err(e);
            }
            Ok(Some(ob)) => self.outboards.insert(*id, (raw_len, Arc::new(ob))),
            Ok(None) => {}
        }
        let end = offset.saturating_add(len).min(raw_len);
        if offset < at || end < offset || end > at + plain.len() as u64 {
            return Err(format!(
                "sent {}+{} for a read of {offset}+{len}",
                at,
                plain.len()
            ));
        }
        Ok(plain.slice((offset - at) as usize..(end - at) as usize))
    }

    /// Reads a whole block from one node, in its encoded form, and verifies it here.
    pub async fn get_from(&self, node: &NodeInfo, id: &BlockId) -> Result<Bytes, String> {
        self.fetch_from(node, id, false)
            .await
            .map(|(_, plain)| plain)
    }

    /// Reads a whole block from one node and verifies it here: the block as stored (ready to
    /// store again) and its plaintext.
    pub async fn get_verified(
        &self,
        node: &NodeInfo,
        id: &BlockId,
    ) -> Result<(EncodedBlock, Bytes), String> {
        self.fetch_from(node, id, false).await
    }

    /// Which of `ids` `node` holds, one answer per id.
    pub async fn has(&self, node: &NodeInfo, ids: &[BlockId]) -> Result<Vec<bool>, String> {
        self.ask_has(node, ids, false).await
    }

    /// Like [`has`](Self::has), but a copy garbage collection has condemned counts as held
    /// (repair asks this way: the copy is there, whether or not it is wanted).
    pub async fn has_copies(&self, node: &NodeInfo, ids: &[BlockId]) -> Result<Vec<bool>, String> {
        self.ask_has(node, ids, true).await
    }

    async fn ask_has(
        &self,
        node: &NodeInfo,
        ids: &[BlockId],
        include_condemned: bool,
    ) -> Result<Vec<bool>, String> {
        let request = HasRequest {
            block_ids: ids
                .iter()
                .map(|id| Bytes::copy_from_slice(id.as_bytes()))
                .collect(),
            include_condemned,
        };
        let present = self
            .rpc(node)?
            .has(request)
            .await
            .map_err(|s| format!("{} ({:?})", s.message(), s.code()))?
            .into_inner()
            .present;
        if present.len() != ids.len() {
            return Err(format!("{} answers for {} ids", present.len(), ids.len()));
        }
        Ok(present)
    }

    /// Reads a whole block from one node; with `remote`, the node fetches it from another
    /// region of the volume if it has none.
    async fn fetch_from(
        &self,
        node: &NodeInfo,
        id: &BlockId,
        remote: bool,
    ) -> Result<(EncodedBlock, Bytes), String> {
        let request = GetRequest {
            block_id: Bytes::copy_from_slice(id.as_bytes()),
            encoded: true,
            regions: self.regions.clone(),
            volume: self.volume,
            fetch_remote: remote,
            // The block in one message: kept as received, not joined from 1 MiB pieces
            // (a server of an earlier version sends pieces, joined as before).
            message_len: wire::MAX_MESSAGE_LEN as u32,
            ..Default::default()
        };
        let (header, payload) = self.call_get(node, request).await?;
        let compression = Compression::from_code(header.compression).map_err(|e| e.to_string())?;
        let block = EncodedBlock {
            id: *id,
            compression,
            raw_len: header.raw_len,
            payload,
        };
        let plain = block.decode().map_err(|e| e.to_string())?;
        Ok((block, plain))
    }
}
