//! The range port: range reads of blocks over TCP (the wire format is
//! `meridian_proto::range_wire`), beside the gRPC service, and puts of small blocks on the
//! same connections (`meridian_proto::put_wire`, answered by `put_port.rs`). With TLS on,
//! its connections are mutual TLS with the same certificates as gRPC
//! (`meridian_proto::port_conn`): a revoked certificate's frames are refused from the
//! next one on, and a caller that needs a volume access token (which the port does not
//! carry) is sent to gRPC.
//!
//! Each connection is served by a thread of its own that makes the TLS handshake if any,
//! reads a request, reads and verifies the groups from disk, and writes the reply: no
//! task, no blocking-pool hand-off.
//! The same checks as a gRPC `Get` with an outboard apply (residency, the range within the
//! block), and the same refusal to serve bytes that fail their hash (the damaged copy is
//! reported for repair, as a gRPC read does). A connection that sends anything malformed
//! is closed, as is a read longer than [`MAX_RANGE`] refused. Connections beyond
//! [`MAX_CONNECTIONS`] are answered "busy" and closed (on TLS closed at once: clients then
//! read through gRPC and leave the port alone a while), and an idle one is closed after
//! [`MAX_IDLE`].

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use meridian_proto::port_conn::{self, Peer, PortStream};
use meridian_proto::put_wire::{self, PutFrame, PutReply};
use meridian_proto::range_wire::{self, MAX_RANGE, RangeReply, RangeRequest};
use tracing::{debug, error, info, warn};

use crate::error::ChunkError;
use crate::residency::Residency;
use crate::store::BlockStore;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 512;
/// An idle connection is closed after this long.
pub const MAX_IDLE: Duration = Duration::from_secs(60);
/// A connection's thread needs little stack: a request, a reply, a read of the store.
const STACK: usize = 512 << 10;
/// How long a connection answered "busy" may take to send its request, and to take the
/// answer.
const BUSY_WAIT: Duration = Duration::from_millis(20);
/// After a failed accept (out of file descriptors), a pause before the next.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);
/// How often an idle connection looks whether the port is closing.
const TICK: Duration = Duration::from_secs(1);
/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a reply may take to be written.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a range port serves from.
pub struct RangeService {
    /// The blocks.
    pub store: Arc<BlockStore>,
    /// Which volumes live here.
    pub residency: Arc<Residency>,
    /// This chunkserver's region.
    pub region: u16,
    /// For the residency check's lookups, and reports of damaged copies.
    pub runtime: tokio::runtime::Handle,
    /// Told of a damaged copy: moves it aside and fetches a good one.
    pub maintainer: Arc<crate::maintain::Maintainer>,
    /// Puts of small blocks through the port (`None`: refused, put through gRPC).
    pub puts: Option<Arc<crate::put_port::PortPuts>>,
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

/// A place among the [`MAX_CONNECTIONS`]; given back when dropped (also when the thread
/// that was to hold it could not start).
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn accept_loop(listener: TcpListener, service: Arc<RangeService>, closing: Arc<AtomicBool>) {
    let open = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if closing.load(Ordering::Acquire) {
            return;
        }
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "range port: accept failed");
                std::thread::sleep(ACCEPT_PAUSE);
                continue;
            }
        };
        // The identity in force when the connection arrived (a rotated one from the
        // next connection on).
        let identity = meridian_proto::tls::current();
        let slot = Slot(open.clone());
        if open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            debug!("range port: too many connections, one answered busy");
            // On TLS "busy" would need a handshake first: the connection is closed.
            if identity.is_none() {
                answer_busy(&conn);
            }
            continue;
        }
        let (service, closing) = (service.clone(), closing.clone());
        let spawned = std::thread::Builder::new()
            .name("range-conn".into())
            .stack_size(STACK)
            .spawn(move || {
                let _slot = slot;
                let accepted = port_conn::accept(conn, identity.as_deref(), HANDSHAKE_TIMEOUT);
                let served =
                    accepted.and_then(|(stream, peer)| serve(stream, &peer, &service, &closing));
                if let Err(e) = served {
                    debug!(error = %e, "range port: connection closed");
                }
            });
        if let Err(e) = spawned {
            warn!(error = %e, "range port: no thread for a connection");
        }
    }
}

/// Answers "busy" on a connection there is no place for. The request the client sent
/// with the connection is read first (briefly), so that closing sends the answer (in the
/// request's kind of frame) and an orderly end rather than a reset that would lose it.
fn answer_busy(conn: &TcpStream) {
    let _ = conn.set_read_timeout(Some(BUSY_WAIT));
    let _ = conn.set_write_timeout(Some(BUSY_WAIT));
    let mut request = [0u8; range_wire::MAX_REQUEST + 8];
    let read = (&*conn).read(&mut request).unwrap_or(0);
    let _ = if read >= 4 && request[..4] == put_wire::MAGIC.to_le_bytes() {
        PutReply::Busy.write(&mut &*conn)
    } else {
        RangeReply::Busy.write(&mut &*conn)
    };
    let _ = conn.shutdown(std::net::Shutdown::Write);
}

/// Serves one connection until the client closes it, sends something malformed, stays
/// idle too long, or the port closes (or, on TLS, its certificate is revoked).
fn serve(
    conn: PortStream,
    peer: &Peer,
    service: &RangeService,
    closing: &AtomicBool,
) -> io::Result<()> {
    conn.tcp().set_read_timeout(Some(TICK))?;
    conn.tcp().set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut reader = BufReader::new(conn);
    let mut idle = Duration::ZERO;
    loop {
        if closing.load(Ordering::Acquire) {
            return Ok(());
        }
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
                if idle >= MAX_IDLE {
                    return Ok(());
                }
                continue;
            }
            Err(e) => return Err(e),
        }
        if peer.revoked() {
            metrics::counter!("meridian_tls_revoked_refused_total").increment(1);
            warn!("range port: a revoked certificate's connection closed");
            return Ok(());
        }
        let mut head = [0u8; 8];
        reader.read_exact(&mut head)?;
        let (magic, len) = (
            u32::from_le_bytes([head[0], head[1], head[2], head[3]]),
            u32::from_le_bytes([head[4], head[5], head[6], head[7]]),
        );
        let reply = match magic {
            range_wire::MAGIC => {
                let request = RangeRequest::read_body(&mut reader, len)?;
                let reply = match peer.unrestricted() {
                    true => service.answer(&request),
                    false => RangeReply::Refused(TOKENS_CHECKED.into()),
                };
                reply.write(reader.get_mut())
            }
            put_wire::MAGIC => {
                let Some(puts) = &service.puts else {
                    // Not read: the connection closes, the client puts through gRPC.
                    return closed(reader.get_mut());
                };
                let frame = PutFrame::read_rest(&mut reader, len, puts.max_payload())?;
                puts.answer(frame, peer).write(reader.get_mut())
            }
            put_wire::BATCH_MAGIC => {
                let Some(puts) = &service.puts else {
                    return closed(reader.get_mut());
                };
                let frames = put_wire::read_batch_rest(&mut reader, len, puts.max_payload())?;
                let mut out = Vec::new();
                for reply in puts.answer_batch(frames, peer) {
                    out.extend(reply.encode());
                }
                reader.get_mut().write_all(&out)
            }
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("not a range-port frame (magic {other:#x})"),
                ));
            }
        };
        reply.and_then(|()| reader.get_mut().flush())?;
    }
}

/// What a range read is answered when volume tokens are checked and the caller's
/// certificate is not a server's or an operator's.
const TOKENS_CHECKED: &str = "volume tokens are checked: read through gRPC";

/// Answers a put on a port that takes none (the connection then closes).
fn closed(conn: &mut PortStream) -> io::Result<()> {
    PutReply::Closed("this port takes no puts".into()).write(conn)?;
    conn.flush()
}

impl RangeService {
    /// The reply to one request.
    pub fn answer(&self, req: &RangeRequest) -> RangeReply {
        let id = req.block;
        if req.length > MAX_RANGE {
            return RangeReply::Refused(format!(
                "a range of {} bytes: at most {MAX_RANGE} through the range port",
                req.length
            ));
        }
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
                    plain: r.plain,
                }
            }
            Err(e @ ChunkError::NotFound(_)) => RangeReply::Missing(e.to_string()),
            Err(e @ ChunkError::Corrupt { .. }) => {
                metrics::counter!("meridian_chunk_corrupt_reads_total").increment(1);
                error!(block = %id, error = %e, "stored copy is damaged; refusing to serve it");
                let m = self.maintainer.clone();
                self.runtime.spawn(async move { m.bad_copy(id).await });
                RangeReply::Missing(e.to_string())
            }
            Err(e @ ChunkError::OutOfRange { .. }) => RangeReply::Refused(e.to_string()),
            Err(e) => RangeReply::Failed(e.to_string()),
        }
    }
}
