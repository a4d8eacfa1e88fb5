//! Puts of blocks through the range port (the wire format is
//! `meridian_proto::put_wire`), answered on the connection's thread.
//!
//! A coordinated put is checked as a gRPC put is (the header's limits, the volume's
//! residency) and verified before anything is written; then the block is written to the
//! replicas' ports, this node's copy stored meanwhile, and the replicas' answers read:
//! one thread, no task, no blocking-pool hand-off. Whatever the port cannot do alike is
//! left to the gRPC path: the node answers "refused" to shipments from other regions, to
//! puts from callers that need a volume token when tokens are checked (the port carries
//! none), and to larger blocks, and the client puts those through gRPC; a replica whose port fails or refuses
//! makes the coordinator forward through gRPC instead (with its fallbacks to the next
//! placements), the copies already made answering "already present" there.

use std::collections::HashMap;
use std::io::{self, BufReader, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_proto::pb::chunk::{PutHeader, PutResponse, PutRole};
use meridian_proto::port_conn::{self, Peer, PortStream};
use meridian_proto::put_wire::{self, MAX_PUT, Outgoing, PutFrame, PutReply};
use meridian_proto::{ClusterMap, EncodedBlock, NodeInfo, placement, wire};
use tokio::runtime::Handle;
use tracing::{debug, warn};

use crate::error::ChunkError;
use crate::replicate::Forwarded;
use crate::service::{ChunkNode, ship_to};
use crate::store::PutOutcome;

const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
/// A replica slower than this for one step is left to the gRPC path.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections to replicas kept per address: as many as a mount puts here at once
/// (fewer, and the puts beyond them dial a replica anew each time).
const KEPT_PER_ADDRESS: usize = 16;

/// Puts through the port, for one node.
pub struct PortPuts {
    node: Arc<ChunkNode>,
    runtime: Handle,
    /// Idle connections to other nodes' ports, by address.
    kept: Mutex<HashMap<String, Vec<BufReader<PortStream>>>>,
}

/// A replica's copy on its way: the node, and the connection its answer comes on.
struct Sent {
    node: NodeInfo,
    address: String,
    conn: Option<BufReader<PortStream>>,
    /// The connection was kept from an earlier put (the node may have closed it since).
    kept: bool,
}

fn refused(e: impl std::fmt::Display) -> PutReply {
    PutReply::Refused(e.to_string())
}

/// The reply to a put that failed with `e`.
fn failed(e: ChunkError) -> PutReply {
    match e {
        ChunkError::Rejected(_) => {
            metrics::counter!("meridian_chunk_rejected_puts_total").increment(1);
            warn!(error = %e, "rejected a block that does not match its id");
            refused(e)
        }
        e @ (ChunkError::Invalid(_) | ChunkError::Residency(_)) => refused(e),
        e => PutReply::Failed(e.to_string()),
    }
}

/// A batch of copies on its way to a replica: where, the connection its answers come on
/// (kept from an earlier put or not), and each frame with its block's place.
struct BatchSent {
    address: String,
    conn: Option<BufReader<PortStream>>,
    kept: bool,
    frames: Vec<(usize, Outgoing)>,
}

/// A put checked and verified, ready to store.
struct Checked {
    block: EncodedBlock,
    header: PutHeader,
    role: PutRole,
    replicas: u32,
    min_copies: u32,
    regions: Vec<u32>,
    /// Taken when it is stored.
    outboard: Option<meridian_proto::Outboard>,
    ship: Option<(u32, Vec<u32>)>,
}

impl PortPuts {
    /// Puts for `node`, whose async parts (residency lookups, the gRPC fallbacks) run on
    /// `runtime`.
    pub fn new(node: Arc<ChunkNode>, runtime: Handle) -> Self {
        PortPuts {
            node,
            runtime,
            kept: Mutex::default(),
        }
    }

    /// The longest payload this node takes through the port.
    pub fn max_payload(&self) -> u32 {
        self.node.max_block_len.min(MAX_PUT)
    }

    /// The answer to one put from `peer`.
    pub fn answer(&self, frame: PutFrame, peer: &Peer) -> PutReply {
        match self.put(frame, peer) {
            Ok(response) => {
                metrics::counter!("meridian_chunk_put_port_puts_total").increment(1);
                PutReply::Stored(response)
            }
            Err(reply) => reply,
        }
    }

    fn put(&self, frame: PutFrame, peer: &Peer) -> Result<PutResponse, PutReply> {
        let node = &*self.node;
        let mut c = self.check(frame, peer)?;
        let outboard = c.outboard.take();
        if c.role == PutRole::Replica {
            let outcome = node
                .local()
                .put(&c.block, outboard, c.header.replicas)
                .map_err(failed)?;
            return self.finish(&c, outcome, Forwarded::default());
        }
        let wanted = c.replicas as usize - 1;
        // The copies go out first and this node's is stored while they are.
        let sent = self.send_copies(&c.block, wanted, c.replicas, &c.ship);
        let outcome = node.local().put(&c.block, outboard, c.header.replicas);
        let forwarded = match sent.map(|(frame, s)| self.collect(&c.block, &frame, s)) {
            Some(Some(f)) => f,
            _ => self.runtime.block_on(node.replicator.forward(
                &c.block,
                wanted,
                c.replicas,
                c.ship.clone(),
            )),
        };
        self.finish(&c, outcome.map_err(failed)?, forwarded)
    }

    /// The answers to a batch of puts, in order. Each is checked and verified as alone;
    /// the copies for each replica go to it as one batch, this node's are stored together
    /// under one fdatasync meanwhile, and then the replicas' answers are read. A block
    /// whose copies did not all go through the ports is forwarded through gRPC, as alone.
    pub fn answer_batch(&self, frames: Vec<PutFrame>, peer: &Peer) -> Vec<PutReply> {
        let node = &*self.node;
        let mut replies: Vec<Option<PutReply>> = frames.iter().map(|_| None).collect();
        let mut checked = Vec::new();
        for (i, frame) in frames.into_iter().enumerate() {
            match self.check(frame, peer) {
                Ok(c) => checked.push((i, c)),
                Err(reply) => replies[i] = Some(reply),
            }
        }
        // Each coordinated block's replicas, and what goes to each replica's port.
        let map = node.map.borrow().clone();
        let mut targets: Vec<Option<Vec<NodeInfo>>> = Vec::new();
        let mut to: HashMap<String, Vec<(usize, Outgoing)>> = HashMap::new();
        for (k, (_, c)) in checked.iter().enumerate() {
            let wanted = c.replicas as usize - 1;
            let nodes = (c.role == PutRole::Coordinator)
                .then(|| self.copy_targets(&map, &c.block, wanted))
                .flatten();
            let frame = nodes
                .as_ref()
                .and_then(|_| self.copy_frame(&map, &c.block, c.replicas, &c.ship));
            // Without a frame its copies are forwarded through gRPC.
            let nodes = nodes.filter(|_| frame.is_some());
            if let (Some(nodes), Some(frame)) = (&nodes, &frame) {
                for n in nodes {
                    to.entry(n.range_address.clone())
                        .or_default()
                        .push((k, frame.clone()));
                }
            }
            targets.push(nodes);
        }
        let sent: Vec<BatchSent> = to
            .into_iter()
            .map(|(address, frames)| {
                let (conn, kept) = self.send_batch(&address, &frames);
                BatchSent {
                    address,
                    conn,
                    kept,
                    frames,
                }
            })
            .collect();
        let local: Vec<(&EncodedBlock, meridian_proto::Outboard, u32)> = checked
            .iter_mut()
            .map(|(_, c)| {
                let outboard = c.outboard.take().expect("checked puts hold their outboard");
                (&c.block, outboard, c.header.replicas)
            })
            .collect();
        let outcomes = node.local().put_many(&local);
        // The replicas' answers: block -> nodes holding its copy.
        let mut copies: Vec<Vec<meridian_proto::NodeId>> =
            checked.iter().map(|_| Vec::new()).collect();
        for BatchSent {
            address,
            conn,
            kept,
            frames,
        } in sent
        {
            let holder = map
                .nodes
                .iter()
                .find(|n| n.range_address == address)
                .map(|n| n.id);
            let Some(holder) = holder else { continue };
            for (k, stored) in self.collect_batch(&address, conn, kept, &frames) {
                if stored {
                    copies[k].push(holder);
                }
            }
        }
        for (k, ((i, c), outcome)) in checked.iter().zip(outcomes).enumerate() {
            let reply = match outcome {
                Err(e) => failed(e),
                Ok(outcome) => {
                    let forwarded = if c.role == PutRole::Replica {
                        Forwarded::default()
                    } else {
                        let wanted = c.replicas as usize - 1;
                        match &targets[k] {
                            Some(nodes) if copies[k].len() == nodes.len() => Forwarded {
                                stored_on: std::mem::take(&mut copies[k]),
                                failures: Vec::new(),
                            },
                            _ => self.runtime.block_on(node.replicator.forward(
                                &c.block,
                                wanted,
                                c.replicas,
                                c.ship.clone(),
                            )),
                        }
                    };
                    match self.finish(c, outcome, forwarded) {
                        Ok(response) => {
                            metrics::counter!("meridian_chunk_put_port_puts_total").increment(1);
                            PutReply::Stored(response)
                        }
                        Err(reply) => reply,
                    }
                }
            };
            replies[*i] = Some(reply);
        }
        replies
            .into_iter()
            .map(|r| r.expect("every put has an answer"))
            .collect()
    }

    /// What a put through the port checks before anything is written: the caller, the
    /// node's limits, the volume's residency, and the bytes against their id.
    fn check(&self, frame: PutFrame, peer: &Peer) -> Result<Checked, PutReply> {
        let node = &*self.node;
        if !peer.unrestricted() {
            return Err(PutReply::Closed(
                "volume tokens are checked: put through gRPC".into(),
            ));
        }
        let header = frame.header;
        if header.origin_region != 0 {
            return Err(refused("shipments from other regions go through gRPC"));
        }
        let (id, compression) =
            wire::parse_put_header(&header).map_err(|s| refused(s.message()))?;
        let (role, replicas, min_copies) = node
            .put_limits(&id, &header)
            .map_err(|s| refused(s.message()))?;
        if role == PutRole::Replica && !peer.server() {
            return Err(refused(format!(
                "block {id}: replica puts are for chunkservers"
            )));
        }
        let regions = self
            .runtime
            .block_on(node.put_regions(&id, &header, role))
            .map_err(|s| refused(s.message()))?;
        let block = EncodedBlock {
            id,
            compression,
            raw_len: header.raw_len,
            payload: frame.payload,
        };
        // Verified before anything touches the disk or the network.
        let outboard = block
            .decode_with_outboard()
            .map(|(_, ob)| ob)
            .map_err(|e| failed(e.into()))?;
        let ship = ship_to(&header, &regions);
        Ok(Checked {
            block,
            header,
            role,
            replicas,
            min_copies,
            regions,
            outboard: Some(outboard),
            ship,
        })
    }

    /// The answer to a put stored here (`outcome`) and on the replicas `forwarded` names.
    fn finish(
        &self,
        c: &Checked,
        outcome: PutOutcome,
        forwarded: Forwarded,
    ) -> Result<PutResponse, PutReply> {
        let node = &*self.node;
        if c.role == PutRole::Replica {
            return self
                .runtime
                .block_on(node.finish_replica(&c.block.id, &c.header, outcome))
                .map_err(failed);
        }
        self.runtime
            .block_on(node.finish_coordinated(
                &c.block.id,
                &c.header,
                &c.regions,
                (c.replicas, c.min_copies),
                outcome,
                forwarded,
            ))
            .map_err(failed)
    }

    /// Writes `block` to the ports of its first `wanted` placements other than this node:
    /// the frame, and where each went. `None` when one of them has no port (the
    /// gRPC path forwards then).
    fn send_copies(
        &self,
        block: &EncodedBlock,
        wanted: usize,
        replicas: u32,
        ship: &Option<(u32, Vec<u32>)>,
    ) -> Option<(Outgoing, Vec<Sent>)> {
        if wanted == 0 {
            return Some((Outgoing::default(), Vec::new()));
        }
        let map = self.node.map.borrow().clone();
        let targets = self.copy_targets(&map, block, wanted)?;
        let frame = self.copy_frame(&map, block, replicas, ship)?;
        let sent = targets
            .into_iter()
            .map(|node| {
                let address = node.range_address.clone();
                let (conn, kept) = self.send(&address, &frame);
                Sent {
                    node,
                    address,
                    conn,
                    kept,
                }
            })
            .collect();
        Some((frame, sent))
    }

    /// The first `wanted` placements of `block` other than this node, if each has a port.
    fn copy_targets(
        &self,
        map: &ClusterMap,
        block: &EncodedBlock,
        wanted: usize,
    ) -> Option<Vec<NodeInfo>> {
        let targets: Vec<NodeInfo> = placement(&block.id, map, usize::MAX)
            .into_iter()
            .filter(|id| *id != self.node.id)
            .filter_map(|id| map.node(id).cloned())
            .take(wanted)
            .collect();
        (targets.len() == wanted && targets.iter().all(|n| !n.range_address.is_empty()))
            .then_some(targets)
    }

    /// The frame that puts `block`'s copy on a replica.
    fn copy_frame(
        &self,
        map: &ClusterMap,
        block: &EncodedBlock,
        replicas: u32,
        ship: &Option<(u32, Vec<u32>)>,
    ) -> Option<Outgoing> {
        let (volume, regions) = ship.clone().unwrap_or_default();
        let header = PutHeader {
            role: PutRole::Replica as i32,
            map_epoch: map.epoch,
            replicas,
            volume,
            regions,
            ..Default::default()
        };
        // The payload goes to every replica as it arrived, not copied into each frame.
        PutFrame {
            header: wire::put_header(block, header),
            payload: block.payload.clone(),
        }
        .outgoing()
        .ok()
    }

    /// Sends a batch of frames to `address` as [`send`](Self::send) sends one.
    fn send_batch(
        &self,
        address: &str,
        frames: &[(usize, Outgoing)],
    ) -> (Option<BufReader<PortStream>>, bool) {
        self.send_with(address, |w| write_batch(w, frames))
    }

    /// The replicas' answers to a batch sent by [`send_batch`](Self::send_batch): for
    /// each frame (by its block's place in the batch), whether the copy is stored. A kept
    /// connection the node closed since is noticed here: the batch goes again on a new
    /// one, once. A node that does not know batches closes the connection: nothing is
    /// stored through it, and the blocks are forwarded through gRPC.
    fn collect_batch(
        &self,
        address: &str,
        conn: Option<BufReader<PortStream>>,
        kept: bool,
        frames: &[(usize, Outgoing)],
    ) -> Vec<(usize, bool)> {
        let read_all = |conn: &mut BufReader<PortStream>| -> io::Result<Vec<PutReply>> {
            frames.iter().map(|_| PutReply::read(conn)).collect()
        };
        let mut answer = match conn {
            Some(mut c) => read_all(&mut c).map(|r| (c, r)),
            None => Err(io::ErrorKind::NotConnected.into()),
        };
        if kept && answer.as_ref().is_err_and(|e| !timed_out(e)) {
            answer = match fresh_with(address, |w| write_batch(w, frames)) {
                Some(mut c) => read_all(&mut c).map(|r| (c, r)),
                None => Err(io::ErrorKind::NotConnected.into()),
            };
        }
        match answer {
            Ok((conn, replies)) => {
                self.keep(address, conn);
                frames
                    .iter()
                    .zip(replies)
                    .map(|((k, _), r)| (*k, matches!(r, PutReply::Stored(_))))
                    .collect()
            }
            Err(e) => {
                debug!(%address, error = %e, "put port: a replica's batch failed; forwarding through gRPC");
                frames.iter().map(|(k, _)| (*k, false)).collect()
            }
        }
    }

    /// Sends one frame on a kept connection to `address` (dialing again once if the node
    /// closed it since) or a new one; whether the connection was kept.
    fn send(&self, address: &str, frame: &Outgoing) -> (Option<BufReader<PortStream>>, bool) {
        self.send_with(address, |w| frame.write_to(w))
    }

    /// What `write` writes, on a kept connection to `address` (dialing again once if the
    /// node closed it since) or a new one; whether the connection was kept.
    fn send_with(
        &self,
        address: &str,
        write: impl Fn(&mut PortStream) -> io::Result<()>,
    ) -> (Option<BufReader<PortStream>>, bool) {
        if let Some(mut conn) = self.take(address)
            && sent(conn.get_mut(), &write).is_ok()
        {
            return (Some(conn), true);
        }
        (fresh_with(address, write), false)
    }

    /// The replicas' answers; `None` unless every copy is stored. A kept connection the
    /// node closed since is noticed here at the latest: the copy is sent again on a new
    /// one, once.
    fn collect(
        &self,
        block: &EncodedBlock,
        frame: &Outgoing,
        sent: Vec<Sent>,
    ) -> Option<Forwarded> {
        let mut out = Forwarded::default();
        let mut all = true;
        for s in sent {
            let Some(mut conn) = s.conn else {
                all = false;
                continue;
            };
            let mut reply = PutReply::read(&mut conn);
            if s.kept && reply.as_ref().is_err_and(|e| !timed_out(e)) {
                match fresh(&s.address, frame) {
                    Some(c) => {
                        conn = c;
                        reply = PutReply::read(&mut conn);
                    }
                    None => reply = Err(io::ErrorKind::NotConnected.into()),
                }
            }
            match reply {
                Ok(PutReply::Stored(_)) => {
                    out.stored_on.push(s.node.id);
                    self.keep(&s.address, conn);
                }
                Ok(other) => {
                    debug!(block = %block.id, peer = %s.node.id, reply = ?other, "put port: a replica did not store; forwarding through gRPC");
                    // A busy or closed port closes the connection, or will not take puts.
                    if matches!(other, PutReply::Refused(_) | PutReply::Failed(_)) {
                        self.keep(&s.address, conn);
                    }
                    all = false;
                }
                Err(e) => {
                    debug!(block = %block.id, peer = %s.node.id, error = %e, "put port: a replica failed; forwarding through gRPC");
                    all = false;
                }
            }
        }
        all.then_some(out)
    }

    /// A connection kept for `address`, made under the identity in force (those made
    /// before a rotation are dropped).
    fn take(&self, address: &str) -> Option<BufReader<PortStream>> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let here = kept.get_mut(address)?;
        here.retain(|c| c.get_ref().current());
        here.pop()
    }

    fn keep(&self, address: &str, conn: BufReader<PortStream>) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let here = kept.entry(address.to_string()).or_default();
        if here.len() < KEPT_PER_ADDRESS {
            here.push(conn);
        }
    }
}

/// A new connection to `address` with `frame` written on it.
fn fresh(address: &str, frame: &Outgoing) -> Option<BufReader<PortStream>> {
    fresh_with(address, |w| frame.write_to(w))
}

/// A new connection to `address`, with what `write` writes on it.
fn fresh_with(
    address: &str,
    write: impl FnOnce(&mut PortStream) -> io::Result<()>,
) -> Option<BufReader<PortStream>> {
    let mut conn = match port_conn::dial(address, CONNECT_TIMEOUT, IO_TIMEOUT) {
        Ok(c) => BufReader::new(c),
        Err(e) => {
            debug!(%address, error = %e, "put port: a replica's port could not be dialed");
            return None;
        }
    };
    sent(conn.get_mut(), write).ok().map(|_| conn)
}

/// What `write` writes on `conn`, sent (a TLS stream may hold the last of it until
/// flushed).
fn sent(
    conn: &mut PortStream,
    write: impl FnOnce(&mut PortStream) -> io::Result<()>,
) -> io::Result<()> {
    write(conn)?;
    conn.flush()
}

/// Writes a batch's head and its frames, in one buffer up to the payloads sent apart.
fn write_batch(w: &mut impl Write, frames: &[(usize, Outgoing)]) -> io::Result<()> {
    let mut buf = put_wire::batch_head(frames.len())?.to_vec();
    for (_, f) in frames {
        buf.extend_from_slice(&f.head);
        if !f.payload.is_empty() {
            w.write_all(&buf)?;
            buf.clear();
            w.write_all(&f.payload)?;
        }
    }
    if !buf.is_empty() {
        w.write_all(&buf)?;
    }
    Ok(())
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}
