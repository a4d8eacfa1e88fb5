//! The ChunkService gRPC handlers.

use std::sync::Arc;

use crate::tasks::blocking;
use bytes::Bytes;
use meridian_proto::pb::chunk::chunk_service_server::ChunkService;
use meridian_proto::pb::chunk::{
    DeleteRequest, DeleteResponse, GetHeader, GetRequest, GetResponse, HasRequest, HasResponse,
    ListUnderReplicatedRequest, ListUnderReplicatedResponse, MaintainRequest, MaintainResponse,
    NodeStatusRequest, NodeStatusResponse, PutHeader, PutRequest, PutResponse, PutRole,
    StatRequest, StatResponse, put_request,
};
use meridian_proto::tls;
use meridian_proto::{BlockId, Compression, EncodedBlock, NodeId, Outboard, ZoneId, wire};
use tonic::{Request, Response, Status, Streaming};
use tracing::{error, info, warn};

use crate::error::ChunkError;
use crate::ledger::Ledger;
use crate::map::MapView;
use crate::replicate::{Forwarded, Replicator};
use crate::store::{BlockStore, PutOutcome};

/// Most copies one put may ask for.
pub const MAX_REPLICAS: u32 = 16;
/// Most ids one Has call may carry.
pub const MAX_HAS_IDS: usize = 10_000;

/// One chunkserver's service state.
#[derive(Debug)]
pub struct ChunkNode {
    /// This node.
    pub id: NodeId,
    /// Its zone.
    pub zone: ZoneId,
    /// Its region.
    pub region: u16,
    /// Its blocks.
    pub store: Arc<BlockStore>,
    /// Its durable bookkeeping.
    pub ledger: Arc<Ledger>,
    /// Its view of the cluster map.
    pub map: MapView,
    /// Forwards coordinated puts.
    pub replicator: Replicator,
    /// Largest plaintext accepted.
    pub max_block_len: u32,
    /// W when a put does not say.
    pub default_min_copies: u32,
    /// The other regions' chunkservers.
    pub peers: Arc<crate::ship::Peers>,
    /// Repair and scrub.
    pub maintainer: Arc<crate::maintain::Maintainer>,
    /// Copies of a block whose put does not say.
    pub default_replicas: u32,
    /// Where each volume may live, from this region's metadata.
    pub residency: Arc<crate::residency::Residency>,
    /// How long a replica leaves shipping a block to its coordinator.
    pub ship_replica_delay: std::time::Duration,
}

/// Blocks up to this long are verified on the request's own task.
const INLINE_VERIFY_MAX: u64 = 64 << 10;

/// The volume and regions a coordinated put's replicas queue the block for: a block a
/// local client put for a volume living in more regions than this one.
pub(crate) fn ship_to(header: &PutHeader, regions: &[u32]) -> Option<(u32, Vec<u32>)> {
    (header.volume != 0 && regions.len() > 1 && header.origin_region == 0)
        .then(|| (header.volume, regions.to_vec()))
}

/// What storing a verified block here takes: its store, the condemned blocks a put
/// reprieves, and the ledger that notes the copies it wants.
#[derive(Clone)]
pub(crate) struct LocalStore {
    store: Arc<BlockStore>,
    condemned: Arc<crate::gc::Condemned>,
    ledger: Arc<Ledger>,
    default_replicas: u32,
}

impl LocalStore {
    /// Stores `block` here, verifying it first unless the caller has (`outboard`), and
    /// notes that it wants `wanted` copies. Nothing is written unless it verifies.
    pub(crate) fn put(
        &self,
        block: &EncodedBlock,
        outboard: Option<Outboard>,
        wanted: u32,
    ) -> Result<PutOutcome, ChunkError> {
        let outboard = match outboard {
            Some(o) => o,
            None => block.decode_with_outboard()?.1,
        };
        self.put_many(&[(block, outboard, wanted)])
            .pop()
            .expect("one outcome per block")
    }

    /// [`put`](Self::put) of each of `blocks` (each verified, and wanting its copies), the
    /// small ones made durable together (`BlockStore::put_many`): one outcome per block.
    pub(crate) fn put_many(
        &self,
        blocks: &[(&EncodedBlock, Outboard, u32)],
    ) -> Vec<Result<PutOutcome, ChunkError>> {
        let mut out: Vec<Option<Result<PutOutcome, ChunkError>>> = Vec::new();
        let mut storing = Vec::new();
        for (i, (block, _, _)) in blocks.iter().enumerate() {
            out.push(None);
            // Stored again: no longer garbage (decided before the copy counts as present).
            match self.condemned.reprieve(&block.id) {
                Ok(true) => info!(block = %block.id, "a put reprieved a condemned block"),
                Ok(false) => {}
                Err(e) => {
                    out[i] = Some(Err(e));
                    continue;
                }
            }
            storing.push(i);
        }
        let stored = self.store.put_many(
            &storing
                .iter()
                .map(|&i| (blocks[i].0, &blocks[i].1))
                .collect::<Vec<_>>(),
        );
        for (&i, outcome) in storing.iter().zip(stored) {
            let (block, _, wanted) = &blocks[i];
            out[i] = Some(outcome.and_then(|outcome| {
                self.ledger.note_replicas(
                    &block.id,
                    (*wanted).min(MAX_REPLICAS),
                    self.default_replicas,
                    outcome == PutOutcome::Written,
                )?;
                metrics::counter!("meridian_chunk_put_bytes_total")
                    .increment(u64::from(block.raw_len));
                Ok(outcome)
            }));
        }
        out.into_iter()
            .map(|o| o.expect("every block has an outcome"))
            .collect()
    }
}

/// A token holder, with the keys to check its capabilities; `None`: unrestricted.
type Restricted = Option<(
    std::sync::Arc<meridian_proto::token::Claims>,
    std::sync::Arc<meridian_proto::token::TokenKeys>,
)>;

fn restricted<T>(request: &Request<T>) -> Result<Restricted, Status> {
    match meridian_proto::token::caller(request)? {
        meridian_proto::token::Caller::Unrestricted => Ok(None),
        meridian_proto::token::Caller::Token(c) => {
            Ok(meridian_proto::token::keys().map(|k| (c, k)))
        }
    }
}

/// Refuses token holders: `what` is for the deployment's servers and operators.
fn servers_only<T>(request: &Request<T>, what: &str) -> Result<(), Status> {
    match restricted(request)? {
        None => Ok(()),
        Some((claims, _)) => Err(Status::permission_denied(format!(
            "{what}: for servers and admins, not for the token of {:?}",
            claims.subject
        ))),
    }
}

fn block_id(bytes: &[u8]) -> Result<BlockId, Status> {
    BlockId::from_slice(bytes).map_err(|e| Status::invalid_argument(e.to_string()))
}

impl ChunkNode {
    /// The regions the block a put carries may live in, by this region's metadata; refuses
    /// a block whose volume does not live here. A replica put comes from a coordinator of
    /// this region, which checked: only its own claim is checked.
    pub(crate) async fn put_regions(
        &self,
        id: &BlockId,
        header: &PutHeader,
        role: PutRole,
    ) -> Result<Vec<u32>, Status> {
        if header.volume != 0 && role == PutRole::Coordinator {
            return Ok(self
                .residency
                .check(header.volume, &format!("block {id}"))
                .await?);
        }
        if header.regions.is_empty() {
            return Ok(Vec::new()); // a block of no volume's: it stays in this region
        }
        if !header.regions.contains(&u32::from(self.region)) {
            metrics::counter!("meridian_chunk_residency_refusals_total").increment(1);
            return Err(ChunkError::Residency(format!(
                "block {id} belongs to a volume living in regions {:?}, not in region {}",
                header.regions, self.region
            ))
            .into());
        }
        if role == PutRole::Replica {
            return Ok(Vec::new());
        }
        if header.origin_region == 0 {
            return Err(Status::invalid_argument(format!(
                "block {id}: a put naming regions must name its volume"
            )));
        }
        // Shipped by a chunkserver of an earlier version (a shipment queued before an
        // upgrade names no volume): its word is all there is.
        warn!(block = %id, origin = header.origin_region, "a shipped block names no volume (an earlier version's shipment)");
        Ok(header.regions.clone())
    }

    /// Queues a block a local client put (`origin_region` 0) for every peer region among
    /// `regions`, to be shipped after `delay`.
    pub(crate) async fn queue_ship(
        &self,
        id: &BlockId,
        header: &PutHeader,
        regions: &[u32],
        delay: std::time::Duration,
    ) -> Result<(), ChunkError> {
        if header.origin_region != 0 || header.volume == 0 {
            return Ok(());
        }
        let to: Vec<u16> = self
            .peers
            .ids()
            .into_iter()
            .filter(|r| regions.contains(&u32::from(*r)))
            .collect();
        if to.is_empty() {
            return Ok(());
        }
        let replicas = header.replicas.max(1);
        let now = meridian_proto::physical_ms();
        let shipment = crate::ledger::Shipment {
            block: *id,
            replicas,
            min_copies: match header.min_copies {
                0 => self.default_min_copies.min(replicas),
                w => w.min(replicas),
            },
            regions: regions.to_vec(),
            queued_ms: now,
            volume: header.volume,
            attempts: 0,
            not_before_ms: now + delay.as_millis() as u64,
            standby: !delay.is_zero(),
        };
        let ledger = self.ledger.clone();
        blocking(move || ledger.enqueue_ship(&to, &shipment)).await
    }

    /// What storing a block here takes, for a thread of the blocking pool or the put port.
    pub(crate) fn local(&self) -> LocalStore {
        LocalStore {
            store: self.store.clone(),
            condemned: self.maintainer.condemned.clone(),
            ledger: self.ledger.clone(),
            default_replicas: self.default_replicas,
        }
    }

    /// Stores a block here and notes the copies its put wants, verifying it first unless
    /// the caller has (`outboard`): one trip to the blocking pool, not one per step.
    async fn store_verified(
        &self,
        block: &EncodedBlock,
        outboard: Option<Outboard>,
        wanted: u32,
    ) -> Result<PutOutcome, ChunkError> {
        let (local, stored) = (self.local(), block.clone());
        blocking(move || local.put(&stored, outboard, wanted)).await
    }

    /// The checks of a put's header that need neither its payload nor its caller: the
    /// block's size, the role, and the copies it asks for. Gives the role, R and W.
    pub(crate) fn put_limits(
        &self,
        id: &BlockId,
        header: &PutHeader,
    ) -> Result<(PutRole, u32, u32), Status> {
        if header.raw_len > self.max_block_len {
            return Err(ChunkError::Invalid(format!(
                "block {id} of {} bytes exceeds this node's limit of {} bytes",
                header.raw_len, self.max_block_len
            ))
            .into());
        }
        let role = PutRole::try_from(header.role)
            .map_err(|_| Status::invalid_argument(format!("unknown put role {}", header.role)))?;
        let replicas = header.replicas.max(1);
        let min_copies = match header.min_copies {
            0 => self.default_min_copies.min(replicas),
            w => w,
        };
        if role == PutRole::Coordinator && (replicas > MAX_REPLICAS || min_copies > replicas) {
            return Err(Status::invalid_argument(format!(
                "block {id}: replicas {replicas} and min_copies {min_copies} must satisfy 1 <= min_copies <= replicas <= {MAX_REPLICAS}"
            )));
        }
        Ok((role, replicas, min_copies))
    }

    /// A replica's put once its copy is stored: queued for the volume's other regions
    /// (after the coordinator's turn: any holder can ship), and the answer.
    pub(crate) async fn finish_replica(
        &self,
        id: &BlockId,
        header: &PutHeader,
        outcome: PutOutcome,
    ) -> Result<PutResponse, ChunkError> {
        self.queue_ship(id, header, &header.regions, self.ship_replica_delay)
            .await?;
        Ok(PutResponse {
            stored_on: vec![self.id.0],
            degraded: false,
            already_present: outcome == PutOutcome::AlreadyPresent,
            cap: Bytes::new(),
        })
    }

    /// A coordinated put once its copies are written: too few fails it, fewer than asked is
    /// recorded for repair, a block of a volume living in other regions is queued for them
    /// (durably, before the put is acknowledged), and the answer (without a capability).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn finish_coordinated(
        &self,
        id: &BlockId,
        header: &PutHeader,
        regions: &[u32],
        (replicas, min_copies): (u32, u32),
        outcome: PutOutcome,
        forwarded: Forwarded,
    ) -> Result<PutResponse, ChunkError> {
        let mut stored_on = vec![self.id];
        stored_on.extend(&forwarded.stored_on);
        let copies = stored_on.len();
        let degraded = copies < replicas as usize;
        if copies < min_copies as usize {
            return Err(ChunkError::TooFewCopies {
                id: *id,
                copies,
                min_copies,
                wanted: replicas,
                failures: forwarded.failure_summary(),
            });
        }
        if degraded {
            let (ledger, nodes, id) = (self.ledger.clone(), stored_on.clone(), *id);
            blocking(move || ledger.record_under_replicated(&id, &nodes, replicas)).await?;
            metrics::counter!("meridian_chunk_degraded_puts_total").increment(1);
            warn!(block = %id, copies, wanted = replicas, reason = %forwarded.failure_summary(), "stored degraded; recorded for repair");
        }
        self.queue_ship(id, header, regions, std::time::Duration::ZERO)
            .await?;
        Ok(PutResponse {
            stored_on: stored_on.iter().map(|n| n.0).collect(),
            degraded,
            already_present: outcome == PutOutcome::AlreadyPresent,
            cap: Bytes::new(),
        })
    }

    async fn read_verified(&self, id: BlockId) -> Result<(EncodedBlock, Bytes), ChunkError> {
        let store = self.store.clone();
        let got = blocking(move || store.read(&id)).await;
        if let Err(e @ ChunkError::Corrupt { .. }) = &got {
            metrics::counter!("meridian_chunk_corrupt_reads_total").increment(1);
            error!(block = %id, error = %e, "stored copy is damaged; refusing to serve it");
            // Move it aside and fetch a good copy, without holding up this read.
            let m = self.maintainer.clone();
            tokio::spawn(async move { m.bad_copy(id).await });
        }
        got
    }
}

#[tonic::async_trait]
impl ChunkService for ChunkNode {
    async fn put(
        &self,
        request: Request<Streaming<PutRequest>>,
    ) -> Result<Response<PutResponse>, Status> {
        let restricted = restricted(&request)?;
        let mut stream = request.into_inner();
        let header = match wire::next(&mut stream).await {
            Some(Ok(PutRequest {
                msg: Some(put_request::Msg::Header(h)),
            })) => h,
            Some(Err(e)) => return Err(e),
            _ => return Err(Status::invalid_argument("a put must start with a header")),
        };
        let (id, compression) = wire::parse_put_header(&header)?;
        let (role, replicas, min_copies) = self.put_limits(&id, &header)?;
        if let Some((claims, _)) = &restricted {
            if role != PutRole::Coordinator || header.origin_region != 0 {
                return Err(Status::permission_denied(format!(
                    "block {id}: replica puts and shipments are for chunkservers"
                )));
            }
            self.check_grant(claims, header.volume, true, &id).await?;
        }
        // Where the block may live is this region's knowledge of its volume's policy, not
        // the sender's word.
        if header.origin_region != 0
            && !self
                .peers
                .ids()
                .iter()
                .any(|r| u32::from(*r) == header.origin_region)
        {
            return Err(Status::permission_denied(format!(
                "block {id}: region {} is not a peer of region {}",
                header.origin_region, self.region
            )));
        }
        let regions = self.put_regions(&id, &header, role).await?;
        let payload = wire::read_payload(
            &mut stream,
            header.encoded_len,
            self.max_block_len,
            |m: PutRequest| match m.msg {
                Some(put_request::Msg::Data(d)) => Some(d),
                _ => None,
            },
        )
        .await?;
        let block = EncodedBlock {
            id,
            compression,
            raw_len: header.raw_len,
            payload,
        };

        let rejected = |e: ChunkError| {
            if matches!(e, ChunkError::Rejected(_)) {
                metrics::counter!("meridian_chunk_rejected_puts_total").increment(1);
                warn!(block = %id, error = %e, "rejected a block that does not match its id");
            }
            Status::from(e)
        };
        if role == PutRole::Replica {
            // Verified, stored and noted in one go: nothing is written unless it verifies.
            let outcome = self.store_verified(&block, None, header.replicas).await;
            let outcome = outcome.map_err(rejected)?;
            return Ok(Response::new(
                self.finish_replica(&id, &header, outcome).await?,
            ));
        }
        // Verify before anything touches the disk or the network: a mismatch changes nothing.
        // A small block is hashed here (microseconds), not through the blocking pool: its
        // two thread hand-offs cost more than the hash, on every small file's put.
        let outboard = if u64::from(block.raw_len) <= INLINE_VERIFY_MAX {
            block
                .decode_with_outboard()
                .map(|(_, ob)| ob)
                .map_err(ChunkError::from)
        } else {
            let check = block.clone();
            blocking(move || Ok(check.decode_with_outboard()?.1)).await
        }
        .map_err(rejected)?;
        // The local copy is written while the other copies are (a coordinator forwards the
        // verified block at once): a put costs one disk write's latency, not two.
        let local = self.store_verified(&block, Some(outboard), header.replicas);
        let (outcome, forwarded) = tokio::join!(
            local,
            self.replicator.forward(
                &block,
                replicas as usize - 1,
                replicas,
                ship_to(&header, &regions)
            )
        );
        let mut response = self
            .finish_coordinated(
                &id,
                &header,
                &regions,
                (replicas, min_copies),
                outcome?,
                forwarded,
            )
            .await?;
        // Whether some volume already holds these bytes is not a token holder's to know.
        response.already_present &= restricted.is_none();
        if let Some((_, keys)) = restricted {
            response.cap = Bytes::copy_from_slice(&keys.cap(&id, header.volume));
        }
        Ok(Response::new(response))
    }

    type GetStream = tokio_stream::Iter<std::vec::IntoIter<Result<GetResponse, Status>>>;

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<Self::GetStream>, Status> {
        let restricted = restricted(&request)?;
        let req = request.into_inner();
        let id = block_id(&req.block_id)?;
        if let Some((claims, keys)) = &restricted {
            self.check_get(claims, keys, &id, req.volume, &req.cap)
                .await?;
        }
        if req.volume != 0 {
            self.residency
                .check(req.volume, &format!("block {id}"))
                .await?;
        } else if !req.regions.is_empty() && !req.regions.contains(&u32::from(self.region)) {
            return Err(ChunkError::Residency(format!(
                "block {id} belongs to a volume living in regions {:?}, not in region {}",
                req.regions, self.region
            ))
            .into());
        }
        if req.with_outboard {
            let store = self.store.clone();
            let (offset, length) = (u64::from(req.offset), u64::from(req.length));
            let got = blocking(move || store.read_range(&id, offset, length)).await;
            match got {
                Ok(r) => {
                    let header = GetHeader {
                        compression: Compression::None.code(),
                        raw_len: r.raw_len,
                        offset: r.offset as u32,
                        payload_len: r.plain.len() as u32,
                        outboard: if req.outboard_known {
                            Bytes::new()
                        } else {
                            r.outboard.to_bytes().into()
                        },
                    };
                    metrics::counter!("meridian_chunk_get_bytes_total")
                        .increment(r.plain.len() as u64);
                    let msgs: Vec<_> =
                        wire::get_messages(header, r.plain, wire::message_len(req.message_len))
                            .into_iter()
                            .map(Ok)
                            .collect();
                    return Ok(Response::new(tokio_stream::iter(msgs)));
                }
                // Not here (a remote fetch stores it whole) or damaged (repaired meanwhile):
                // the whole-block path below knows what to do.
                Err(ChunkError::NotFound(_) | ChunkError::Corrupt { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let (block, plain) = match self.read_verified(id).await {
            Err(ChunkError::NotFound(_)) if req.fetch_remote && req.volume != 0 => {
                // Not shipped here yet: fetch it from a region that has it, keep it, serve
                // it; only from the regions this region knows the volume to live in (the
                // check above made sure this is one of them).
                let others: Vec<u32> = self
                    .residency
                    .check(req.volume, &format!("block {id}"))
                    .await?
                    .into_iter()
                    .filter(|r| *r != u32::from(self.region))
                    .collect();
                // Verified by the fetch: stored as received, served from memory.
                let (fetched, plain) = self.peers.fetch(&id, &others).await?;
                let store = self.store.clone();
                let kept = fetched.clone();
                let (_, outboard) = Outboard::compute(&plain);
                blocking(move || store.put(&kept, &outboard)).await?;
                info!(block = %id, "fetched a block not shipped here yet from another region");
                (fetched, plain)
            }
            other => other?,
        };
        let whole = req.offset == 0 && (req.length == 0 || req.length == block.raw_len);
        let (header, payload) = if req.encoded && whole {
            let header = GetHeader {
                compression: block.compression.code(),
                raw_len: block.raw_len,
                offset: 0,
                payload_len: block.payload.len() as u32,
                ..Default::default()
            };
            (header, block.payload)
        } else {
            let end = if req.length == 0 {
                Some(block.raw_len)
            } else {
                req.offset.checked_add(req.length)
            };
            let end = end
                .filter(|e| *e <= block.raw_len && req.offset <= *e)
                .ok_or(ChunkError::OutOfRange {
                    id,
                    len: block.raw_len,
                    offset: req.offset,
                    length: req.length,
                })?;
            let header = GetHeader {
                compression: Compression::None.code(),
                raw_len: block.raw_len,
                offset: req.offset,
                payload_len: end - req.offset,
                ..Default::default()
            };
            (header, plain.slice(req.offset as usize..end as usize))
        };
        metrics::counter!("meridian_chunk_get_bytes_total").increment(payload.len() as u64);
        let msgs: Vec<_> = wire::get_messages(header, payload, wire::message_len(req.message_len))
            .into_iter()
            .map(Ok)
            .collect();
        Ok(Response::new(tokio_stream::iter(msgs)))
    }

    async fn has(&self, request: Request<HasRequest>) -> Result<Response<HasResponse>, Status> {
        servers_only(&request, "which blocks a node holds")?;
        let req = request.into_inner();
        if req.block_ids.len() > MAX_HAS_IDS {
            return Err(Status::invalid_argument(format!(
                "has: {} ids in one call, at most {MAX_HAS_IDS}",
                req.block_ids.len()
            )));
        }
        let ids = req
            .block_ids
            .iter()
            .map(|b| block_id(b))
            .collect::<Result<Vec<_>, _>>()?;
        let store = self.store.clone();
        let condemned = self.maintainer.condemned.clone();
        let everything = req.include_condemned;
        let present = blocking(move || {
            Ok(ids
                .iter()
                .map(|id| store.has(id) && (everything || !condemned.contains(id)))
                .collect())
        })
        .await?;
        Ok(Response::new(HasResponse { present }))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        tls::require_role(&request, &[tls::CHUNK, tls::META])?;
        let id = block_id(&request.into_inner().block_id)?;
        let (store, ledger) = (self.store.clone(), self.ledger.clone());
        let existed = blocking(move || {
            let existed = store.delete(&id)?;
            ledger.clear(&id)?;
            Ok(existed)
        })
        .await?;
        Ok(Response::new(DeleteResponse { existed }))
    }

    async fn stat(&self, request: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        servers_only(&request, "facts about stored blocks")?;
        let id = block_id(&request.into_inner().block_id)?;
        let store = self.store.clone();
        let st = blocking(move || store.stat(&id)).await?;
        Ok(Response::new(match st {
            Some(s) => StatResponse {
                present: true,
                compression: s.compression.code(),
                raw_len: s.raw_len,
                stored_len: s.stored_len,
            },
            None => StatResponse::default(),
        }))
    }

    async fn node_status(
        &self,
        _request: Request<NodeStatusRequest>,
    ) -> Result<Response<NodeStatusResponse>, Status> {
        // Open to every certificate of the deployment: it names no volume or block.
        let (store, ledger) = (self.store.clone(), self.ledger.clone());
        let regions = self.peers.ids();
        let (usage, under, queues) = blocking(move || {
            let now = meridian_proto::physical_ms();
            let mut queues = Vec::new();
            for r in regions {
                let (blocks, oldest_ms) = ledger.ship_backlog(r, now)?;
                queues.push(meridian_proto::pb::chunk::ShipQueue {
                    region: u32::from(r),
                    blocks,
                    oldest_ms,
                });
            }
            Ok((store.usage(), ledger.count()?, queues))
        })
        .await?;
        let map = self.map.borrow().clone();
        let (repair, scrub, gc) = self.maintainer.status();
        Ok(Response::new(NodeStatusResponse {
            node_id: self.id.0,
            zone: self.zone.0.clone(),
            region: u32::from(self.region),
            capacity_bytes: usage.capacity,
            used_bytes: usage.used,
            free_bytes: usage.free,
            block_count: usage.blocks,
            under_replicated: under,
            map_epoch: map.epoch,
            map_nodes: map.nodes.len() as u32,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ship_queues: queues,
            repair: Some(repair),
            scrub: Some(scrub),
            gc: Some(gc),
        }))
    }

    async fn maintain(
        &self,
        request: Request<MaintainRequest>,
    ) -> Result<Response<MaintainResponse>, Status> {
        tls::require_role(&request, &[tls::ADMIN, tls::CHUNK, tls::META])?;
        let r = request.into_inner();
        self.maintainer.trigger(r.repair_now, r.scrub_now, r.gc_now);
        let (repair, scrub, gc) = self.maintainer.status();
        Ok(Response::new(MaintainResponse {
            repair: Some(repair),
            scrub: Some(scrub),
            gc: Some(gc),
        }))
    }

    async fn list_under_replicated(
        &self,
        request: Request<ListUnderReplicatedRequest>,
    ) -> Result<Response<ListUnderReplicatedResponse>, Status> {
        tls::require_role(&request, &[tls::ADMIN, tls::CHUNK, tls::META])?;
        let limit = request.into_inner().limit as usize;
        let ledger = self.ledger.clone();
        let blocks = blocking(move || ledger.list(limit)).await?;
        Ok(Response::new(ListUnderReplicatedResponse { blocks }))
    }
}
