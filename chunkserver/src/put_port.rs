//! Puts of blocks through the range port (the wire format is
//! `meridian_proto::put_wire`), answered on the connection's thread.
//!
//! A coordinated put is checked as a gRPC put is (the header's limits, the volume's
//! residency) and verified before anything is written; then the block is written to the
//! replicas' ports, this node's copy stored meanwhile, and the replicas' answers read:
//! one thread, no task, no blocking-pool hand-off. Whatever the port cannot do alike is
//! left to the gRPC path: the node answers "refused" to shipments from other regions, to
//! puts when volume tokens are checked (the port has no caller to check), and to larger
//! blocks, and the client puts those through gRPC; a replica whose port fails or refuses
//! makes the coordinator forward through gRPC instead (with its fallbacks to the next
//! placements), the copies already made answering "already present" there.

use std::collections::HashMap;
use std::io::{self, BufReader};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_proto::pb::chunk::{PutHeader, PutResponse, PutRole};
use meridian_proto::put_wire::{MAX_PUT, Outgoing, PutFrame, PutReply};
use meridian_proto::{EncodedBlock, NodeInfo, placement, wire};
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
    kept: Mutex<HashMap<String, Vec<BufReader<TcpStream>>>>,
}

/// A replica's copy on its way: the node, and the connection its answer comes on.
struct Sent {
    node: NodeInfo,
    address: String,
    conn: Option<BufReader<TcpStream>>,
    /// The connection was kept from an earlier put (the node may have closed it since).
    kept: bool,
}

fn refused(e: impl std::fmt::Display) -> PutReply {
    PutReply::Refused(e.to_string())
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

    /// The answer to one put.
    pub fn answer(&self, frame: PutFrame) -> PutReply {
        match self.put(frame) {
            Ok(response) => {
                metrics::counter!("meridian_chunk_put_port_puts_total").increment(1);
                PutReply::Stored(response)
            }
            Err(reply) => reply,
        }
    }

    fn put(&self, frame: PutFrame) -> Result<PutResponse, PutReply> {
        let node = &*self.node;
        if meridian_proto::token::keys().is_some() {
            return Err(PutReply::Closed(
                "volume tokens are checked: put through gRPC".into(),
            ));
        }
        let header = &frame.header;
        if header.origin_region != 0 {
            return Err(refused("shipments from other regions go through gRPC"));
        }
        let (id, compression) = wire::parse_put_header(header).map_err(|s| refused(s.message()))?;
        let (role, replicas, min_copies) = node
            .put_limits(&id, header)
            .map_err(|s| refused(s.message()))?;
        let regions = self
            .runtime
            .block_on(node.put_regions(&id, header, role))
            .map_err(|s| refused(s.message()))?;
        let block = EncodedBlock {
            id,
            compression,
            raw_len: header.raw_len,
            payload: frame.payload,
        };
        let failed = |e: ChunkError| match e {
            ChunkError::Rejected(_) => {
                metrics::counter!("meridian_chunk_rejected_puts_total").increment(1);
                warn!(block = %id, error = %e, "rejected a block that does not match its id");
                refused(e)
            }
            e @ (ChunkError::Invalid(_) | ChunkError::Residency(_)) => refused(e),
            e => PutReply::Failed(e.to_string()),
        };
        if role == PutRole::Replica {
            let outcome = node
                .local()
                .put(&block, None, header.replicas)
                .map_err(failed)?;
            return self
                .runtime
                .block_on(node.finish_replica(&id, header, outcome))
                .map_err(failed);
        }
        // Verified before anything touches the disk or the network.
        let outboard = block
            .decode_with_outboard()
            .map(|(_, ob)| ob)
            .map_err(|e| failed(e.into()))?;
        let ship = ship_to(header, &regions);
        let wanted = replicas as usize - 1;
        // The copies go out first and this node's is stored while they are.
        let sent = self.send_copies(&block, wanted, replicas, &ship);
        let outcome = node.local().put(&block, Some(outboard), header.replicas);
        let forwarded = match sent.map(|(frame, s)| self.collect(&block, &frame, s)) {
            Some(Some(f)) => f,
            _ => self
                .runtime
                .block_on(node.replicator.forward(&block, wanted, replicas, ship)),
        };
        let outcome: PutOutcome = outcome.map_err(failed)?;
        self.runtime
            .block_on(node.finish_coordinated(
                &id,
                header,
                &regions,
                (replicas, min_copies),
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
        let targets: Vec<NodeInfo> = placement(&block.id, &map, usize::MAX)
            .into_iter()
            .filter(|id| *id != self.node.id)
            .filter_map(|id| map.node(id).cloned())
            .take(wanted)
            .collect();
        if targets.len() < wanted || targets.iter().any(|n| n.range_address.is_empty()) {
            return None;
        }
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
        let frame = PutFrame {
            header: wire::put_header(block, header),
            payload: block.payload.clone(),
        }
        .outgoing()
        .ok()?;
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

    /// Sends one frame on a kept connection to `address` (dialing again once if the node
    /// closed it since) or a new one; whether the connection was kept.
    fn send(&self, address: &str, frame: &Outgoing) -> (Option<BufReader<TcpStream>>, bool) {
        if let Some(mut conn) = self.take(address)
            && frame.write_to(conn.get_mut()).is_ok()
        {
            return (Some(conn), true);
        }
        (fresh(address, frame), false)
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

    fn take(&self, address: &str) -> Option<BufReader<TcpStream>> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.get_mut(address)?.pop()
    }

    fn keep(&self, address: &str, conn: BufReader<TcpStream>) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let here = kept.entry(address.to_string()).or_default();
        if here.len() < KEPT_PER_ADDRESS {
            here.push(conn);
        }
    }
}

/// A new connection to `address` with `frame` written on it.
fn fresh(address: &str, frame: &Outgoing) -> Option<BufReader<TcpStream>> {
    let mut conn = match dial(address) {
        Ok(c) => BufReader::new(c),
        Err(e) => {
            debug!(%address, error = %e, "put port: a replica's port could not be dialed");
            return None;
        }
    };
    frame.write_to(conn.get_mut()).ok().map(|_| conn)
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

fn dial(address: &str) -> io::Result<TcpStream> {
    let addr = address
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))?;
    let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}
