//! The range port: range reads of blocks over plain TCP (the wire format is
//! `meridian_proto::range_wire`), beside the gRPC service.
//!
//! Each connection is served by a thread of its own that reads a request, reads and
//! verifies the groups from disk, and writes the reply: no task, no blocking-pool hand-off.
//! The same checks as a gRPC `Get` with an outboard apply (residency, the range within the
//! block), and the same refusal to serve bytes that fail their hash. A connection that
//! sends anything malformed is closed. Connections beyond [`MAX_CONNECTIONS`] are closed at
//! once (clients then read through gRPC), and an idle one after [`MAX_IDLE`].

use std::io::{self, BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use meridian_proto::range_wire::{RangeReply, RangeRequest};
use tracing::{debug, info, warn};

use crate::error::ChunkError;
use crate::residency::Residency;
use crate::store::BlockStore;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// An idle connection is closed after this long.
pub const MAX_IDLE: Duration = Duration::from_secs(120);
/// How often an idle connection looks whether the port is closing.
const TICK: Duration = Duration::from_secs(1);

/// What a range port serves from.
pub struct RangeService {
    /// The blocks.
    pub store: Arc<BlockStore>,
    /// Which volumes live here.
    pub residency: Arc<Residency>,
    /// This chunkserver's region.
    pub region: u16,
    /// For the residency check's lookups.
    pub runtime: tokio::runtime::Handle,
}

/// A listening range port; closed when dropped.
pub struct RangePort {
    addr: SocketAddr,
    closing: Arc<AtomicBool>,
}

impl RangePort {
    /// Listens on `at` (port 0: one the system chooses), and serves there the service
    /// `service` brings once it comes (connections wait in the backlog until then).
    pub fn start(at: SocketAddr, service: mpsc::Receiver<RangeService>) -> io::Result<RangePort> {
        let listener = TcpListener::bind(at)?;
        let addr = listener.local_addr()?;
        let closing = Arc::new(AtomicBool::new(false));
        let stop = closing.clone();
        std::thread::Builder::new()
            .name("range-port".into())
            .spawn(move || {
                if let Ok(service) = service.recv() {
                    accept_loop(listener, Arc::new(service), stop);
                }
            })?;
        info!(%addr, "range port listening");
        Ok(RangePort { addr, closing })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for RangePort {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Release);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn accept_loop(listener: TcpListener, service: Arc<RangeService>, closing: Arc<AtomicBool>) {
    let open = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if closing.load(Ordering::Acquire) {
            return;
        }
        let Ok(conn) = conn else { continue };
        if open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::AcqRel);
            debug!("range port: too many connections, one closed");
            continue;
        }
        let (service, closing, open) = (service.clone(), closing.clone(), open.clone());
        let spawned = std::thread::Builder::new()
            .name("range-conn".into())
            .spawn(move || {
                if let Err(e) = serve(conn, &service, &closing) {
                    debug!(error = %e, "range port: connection closed");
                }
                open.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            warn!(error = %e, "range port: no thread for a connection");
        }
    }
}

/// Serves one connection until the client closes it, sends something malformed, stays
/// idle too long, or the port closes.
fn serve(conn: TcpStream, service: &RangeService, closing: &AtomicBool) -> io::Result<()> {
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(TICK))?;
    conn.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(&conn);
    let mut idle = Duration::ZERO;
    loop {
        match reader.fill_buf() {
            Ok([]) => return Ok(()),
            Ok(_) => idle = Duration::ZERO,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                idle += TICK;
                if closing.load(Ordering::Acquire) || idle >= MAX_IDLE {
                    return Ok(());
                }
                continue;
            }
            Err(e) => return Err(e),
        }
        let Some(request) = RangeRequest::read(&mut reader)? else {
            return Ok(());
        };
        service.answer(&request).write(&mut &conn)?;
    }
}

impl RangeService {
    /// The reply to one request.
    pub fn answer(&self, req: &RangeRequest) -> RangeReply {
        let id = req.block;
        if req.volume != 0 {
            let checked = self
                .runtime
                .block_on(self.residency.check(req.volume, &format!("block {id}")));
            if let Err(e) = checked {
                return RangeReply::Refused(e.to_string());
            }
        } else if !req.regions.is_empty() && !req.regions.contains(&u32::from(self.region)) {
            return RangeReply::Refused(format!(
                "block {id} belongs to a volume living in regions {:?}, not in region {}",
                req.regions, self.region
            ));
        }
        match self
            .store
            .read_range(&id, u64::from(req.offset), u64::from(req.length))
        {
            Ok(r) => {
                metrics::counter!("meridian_chunk_get_bytes_total").increment(r.plain.len() as u64);
                metrics::counter!("meridian_chunk_range_port_reads_total").increment(1);
                RangeReply::Found {
                    raw_len: r.raw_len,
                    offset: r.offset as u32,
                    outboard: if req.outboard_known {
                        Vec::new()
                    } else {
                        r.outboard.to_bytes()
                    },
                    plain: r.plain.to_vec(),
                }
            }
            Err(e @ (ChunkError::NotFound(_) | ChunkError::Corrupt { .. })) => {
                RangeReply::Missing(e.to_string())
            }
            Err(e @ ChunkError::OutOfRange { .. }) => RangeReply::Refused(e.to_string()),
            Err(e) => RangeReply::Failed(e.to_string()),
        }
    }
}
