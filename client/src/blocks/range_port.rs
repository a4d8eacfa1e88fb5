//! Range reads through a chunkserver's range port, from a thread that may block.
//!
//! A kernel request thread that polls a read inline (see `fuse/answer.rs`) may instead of
//! handing the read to the runtime send it itself, on a connection of its own, and wait
//! for the reply: one write and one read, no task, no hand-off. Only threads marked with
//! [`blocking_reads`] do, and only [`MAX_BLOCKED`] at once, so the mount's other kernel
//! threads stay free to take requests. Whole blocks (a sequential read's, read-ahead's)
//! come through the port from runtime tasks too, with [`call_async`] (over TLS with
//! [`call_on_pool`] from the blocking pool, where the block is decrypted as it is read):
//! the block arrives in one buffer of its size, where gRPC gathers HTTP/2 frames into a
//! growing message on both sides. Every read the port cannot answer goes through gRPC as before. Blocks
//! are put through the port from runtime tasks too ([`put_async`]), on the same
//! kept connections; a put the port does not store goes through gRPC.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{self, BufReader, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use meridian_proto::port_conn::{self, AsyncPortIo, AsyncPortStream, PortStream};
use meridian_proto::put_wire::{self, Outgoing, PutReply};
use meridian_proto::range_wire::{FOUND_LENGTHS, Found, REPLY_HEAD, RangeReply, RangeRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Kernel threads that may wait on the range port at once.
pub const MAX_BLOCKED: usize = 2;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
/// How long a kernel request thread waits for a range port's reply before it says it
/// waits (see `blocking_reads_telling`): most replies come sooner.
const QUICK_REPLY: Duration = Duration::from_micros(300);
/// A node that takes longer for one step is left to gRPC (its retries and fallbacks),
/// and its port alone for [`UNREACHABLE_FOR`].
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// A put's exchange may take a second longer for every this many bytes it sends.
const SECOND_PER: usize = 4 << 20;
/// Connections a thread keeps (one per node it read from).
const MAX_CONNECTIONS: usize = 64;

static BLOCKED: AtomicUsize = AtomicUsize::new(0);

/// A port that could not be dialed, or was busy, is left alone this long (by every
/// thread).
const UNREACHABLE_FOR: Duration = Duration::from_secs(30);
/// A port that was slow or failed a fresh connection is left alone this long: a disk busy
/// with a large flush can hold one read for seconds, and the next may be quick.
const SLOW_FOR: Duration = Duration::from_secs(3);

/// Ports left alone, and until when.
static UNREACHABLE: Mutex<Vec<(String, Instant)>> = Mutex::new(Vec::new());
/// Ports that said they take no puts, and until when puts leave them alone.
static NO_PUTS: Mutex<Vec<(String, Instant)>> = Mutex::new(Vec::new());
/// How long puts leave alone a port that takes none.
const NO_PUTS_FOR: Duration = Duration::from_secs(60);

/// Blocking connections the blocking pool's threads share, per address, for
/// [`call_on_pool`].
static POOLED: Mutex<Vec<(String, BufReader<PortStream>)>> = Mutex::new(Vec::new());
/// Connections runtime tasks keep, per address, for [`call_async`].
static IDLE: Mutex<Vec<(String, AsyncPortStream)>> = Mutex::new(Vec::new());
/// Idle connections kept for runtime tasks, per address: as many as the mount's tasks put
/// through one node at once (fewer, and every put beyond them dials a connection, and the
/// node starts a thread for it, only for both to end after one block).
pub const IDLE_PER_ADDRESS: usize = 16;

thread_local! {
    static MAY_BLOCK: Cell<bool> = const { Cell::new(false) };
    static CONNECTIONS: RefCell<HashMap<String, BufReader<PortStream>>> =
        RefCell::new(HashMap::new());
    static BEFORE_WAIT: RefCell<Option<BeforeWait>> = const { RefCell::new(None) };
}

/// What a thread calls before it waits on a range port (see [`blocking_reads_telling`]).
pub type BeforeWait = std::sync::Arc<dyn Fn() + Send + Sync>;

/// Runs `f` with this thread allowed to wait on range ports (a kernel request thread
/// polling a request inline: it has nothing else to do meanwhile).
pub fn blocking_reads<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            MAY_BLOCK.with(|m| m.set(self.0));
        }
    }
    let _reset = Reset(MAY_BLOCK.with(|m| m.replace(true)));
    f()
}

/// [`blocking_reads`], calling `before_wait` each time the thread is about to wait on a
/// range port (a kernel request thread tells the others, `fuse/standby.rs`).
pub fn blocking_reads_telling<R>(before_wait: &BeforeWait, f: impl FnOnce() -> R) -> R {
    struct Reset(Option<BeforeWait>);
    impl Drop for Reset {
        fn drop(&mut self) {
            BEFORE_WAIT.with(|b| *b.borrow_mut() = self.0.take());
        }
    }
    let _reset = Reset(BEFORE_WAIT.with(|b| b.borrow_mut().replace(before_wait.clone())));
    blocking_reads(f)
}

/// Holds one of the [`MAX_BLOCKED`] places while a thread waits.
struct Place;

impl Place {
    fn take() -> Option<Place> {
        BLOCKED
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_BLOCKED).then_some(n + 1)
            })
            .ok()
            .map(|_| Place)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        BLOCKED.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether this thread may wait on a range port now (a caller can skip preparing a
/// request it would not send).
pub fn may_wait() -> bool {
    MAY_BLOCK.with(Cell::get) && BLOCKED.load(Ordering::Acquire) < MAX_BLOCKED
}

/// Sends `request` to the range port at `address` and waits for the reply, if this thread
/// may block and a place is free; `None` otherwise (the caller goes through gRPC).
pub fn call(address: &str, request: &RangeRequest, max_len: u32) -> Option<io::Result<RangeReply>> {
    if !MAY_BLOCK.with(Cell::get) {
        return None;
    }
    let _place = Place::take()?;
    Some(exchange_on_thread(address, request, max_len))
}

/// Sends `request` to the range port at `address` from a thread of the runtime's blocking
/// pool and waits for the reply, on a connection the pool's threads share (at most
/// [`IDLE_PER_ADDRESS`] kept per node, as for tasks): a whole block over TLS is decrypted
/// as it is read, there rather than on the runtime's worker (a mount has one, and every
/// other request waits behind a block's decryption). `None` when the port is left alone
/// lately (the caller goes through gRPC).
pub fn call_on_pool(
    address: &str,
    request: &RangeRequest,
    max_len: u32,
) -> Option<io::Result<RangeReply>> {
    check_reachable(address).ok()?;
    let kept = {
        let mut pooled = POOLED.lock().unwrap_or_else(|p| p.into_inner());
        pooled.retain(|(_, c)| c.get_ref().current());
        let at = pooled.iter().rposition(|(a, _)| a == address);
        at.map(|at| pooled.swap_remove(at).1)
    };
    let (reply, conn) = exchange_blocking(address, request, max_len, kept);
    if let Some(conn) = conn {
        let mut pooled = POOLED.lock().unwrap_or_else(|p| p.into_inner());
        let here = pooled.iter().filter(|(a, _)| a == address).count();
        if here < IDLE_PER_ADDRESS && pooled.len() < MAX_CONNECTIONS {
            pooled.push((address.to_string(), conn));
        }
    }
    Some(reply)
}

/// One exchange on this thread's connection to `address` (or a new one).
fn exchange_on_thread(
    address: &str,
    request: &RangeRequest,
    max_len: u32,
) -> io::Result<RangeReply> {
    CONNECTIONS.with(|c| {
        let mut conns = c.borrow_mut();
        // One made before the identity rotated is dropped.
        let kept = conns.remove(address).filter(|c| c.get_ref().current());
        let (reply, conn) = exchange_blocking(address, request, max_len, kept);
        if let Some(conn) = conn
            && conns.len() < MAX_CONNECTIONS
        {
            conns.insert(address.to_string(), conn);
        }
        reply
    })
}

/// One exchange on the connection `kept` (or a new one): the reply, and the connection to
/// keep if it is fit for the next.
fn exchange_blocking(
    address: &str,
    request: &RangeRequest,
    max_len: u32,
    kept: Option<BufReader<PortStream>>,
) -> (io::Result<RangeReply>, Option<BufReader<PortStream>>) {
    let frame = match request.encode() {
        Ok(f) => f,
        Err(e) => return (Err(e), kept),
    };
    let was_kept = kept.is_some();
    let conn = match kept {
        Some(conn) => conn,
        None => match connect(address) {
            Ok(c) => BufReader::new(c),
            Err(e) => return (Err(e), None),
        },
    };
    let exchanged = match exchange(conn, &frame, max_len) {
        // A kept connection the node has closed since (a restart, an idle limit) fails at
        // once: dial again, once.
        Err(e) if was_kept && !timed_out(&e) => {
            tracing::debug!(%address, error = %e, "range port: dialing again");
            connect(address).and_then(|c| exchange(BufReader::new(c), &frame, max_len))
        }
        other => other,
    };
    match exchanged {
        Ok((_, RangeReply::Busy)) => {
            leave_alone(address, UNREACHABLE_FOR, "busy");
            (Ok(RangeReply::Busy), None)
        }
        Ok((conn, reply)) => (Ok(reply), Some(conn)),
        // A timeout, or a fresh connection that failed: the node is slow or in trouble,
        // and gRPC copes better meanwhile.
        Err(e) => {
            leave_alone(address, SLOW_FOR, &e.to_string());
            (Err(e), None)
        }
    }
}

/// Leaves the port at `address` alone for `period` (reads go through gRPC meanwhile).
fn leave_alone(address: &str, period: Duration, why: &str) {
    if list(&UNREACHABLE, address, period) {
        tracing::info!(%address, ?period, reason = %why, "range port left alone; reading through gRPC");
    }
}

/// Puts `address` on `list` for `period`, unless it is there already (or the list is
/// full); whether it was put there.
fn list(list: &Mutex<Vec<(String, Instant)>>, address: &str, period: Duration) -> bool {
    let mut l = list.lock().unwrap_or_else(|p| p.into_inner());
    let new = l.len() < MAX_CONNECTIONS && !l.iter().any(|(a, _)| a == address);
    if new {
        l.push((address.to_string(), Instant::now() + period));
    }
    new
}

/// Whether `address` is on `list` now (entries past their time are dropped).
fn listed(list: &Mutex<Vec<(String, Instant)>>, address: &str) -> bool {
    let now = Instant::now();
    let mut l = list.lock().unwrap_or_else(|p| p.into_inner());
    l.retain(|(_, until)| *until > now);
    l.iter().any(|(a, _)| a == address)
}

/// A dial's outcome: a port that could not be dialed is left alone a while.
fn left_alone_if_failed<T>(address: &str, dialed: io::Result<T>) -> io::Result<T> {
    dialed.inspect_err(|e| leave_alone(address, UNREACHABLE_FOR, &e.to_string()))
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// An error if the port at `address` is left alone now.
fn check_reachable(address: &str) -> io::Result<()> {
    if listed(&UNREACHABLE, address) {
        return Err(io::Error::new(
            io::ErrorKind::NotConnected,
            "unreachable lately",
        ));
    }
    Ok(())
}

/// Dials `address` (through a TLS handshake when this process has an identity), unless it
/// failed to be dialed lately (a firewall that drops the port would otherwise cost every
/// read the connect timeout; a port that refuses our certificate, every read a
/// handshake).
fn connect(address: &str) -> io::Result<PortStream> {
    check_reachable(address)?;
    left_alone_if_failed(
        address,
        port_conn::dial(address, CONNECT_TIMEOUT, IO_TIMEOUT),
    )
}

fn exchange(
    mut conn: BufReader<PortStream>,
    frame: &[u8],
    max_len: u32,
) -> io::Result<(BufReader<PortStream>, RangeReply)> {
    conn.get_mut().write_all(frame)?;
    conn.get_mut().flush()?;
    // Most replies come within a few hundred µs; a thread told to (a kernel request
    // thread, see `blocking_reads_telling`) says so before it waits longer.
    BEFORE_WAIT.with(|b| {
        if let Some(tell) = &*b.borrow()
            && conn.buffer().is_empty()
            && !readable_within(conn.get_ref().tcp(), QUICK_REPLY)
        {
            tell();
        }
    });
    let reply = RangeReply::read(&mut conn, max_len)?;
    Ok((conn, reply))
}

/// Whether `tcp` has bytes to read within `wait` (false on any failure to tell).
fn readable_within(tcp: &std::net::TcpStream, wait: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let mut fd = libc::pollfd {
        fd: tcp.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: wait.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd, a valid timespec, and no signal mask.
    unsafe { libc::ppoll(&mut fd, 1, &ts, std::ptr::null()) > 0 }
}

/// Sends `request` to the range port at `address` from a runtime task and waits for the
/// reply, on a connection kept for tasks (a kernel thread's are its own). `None` when the
/// port is left alone lately (the caller goes through gRPC).
pub async fn call_async(
    address: &str,
    request: &RangeRequest,
    max_len: u32,
) -> Option<io::Result<RangeReply>> {
    check_reachable(address).ok()?;
    let frame = match request.encode() {
        Ok(f) => f,
        Err(e) => return Some(Err(e)),
    };
    Some(
        match exchange_kept(address, &[&frame], Wanted::Range(max_len)).await {
            Ok(Reply::Range(r)) => Ok(r),
            Ok(_) => unreachable!("a range read's answer is read as one"),
            Err(e) => Err(e),
        },
    )
}

/// Puts a block through the port at `address` from a runtime task (`frame`: see
/// `meridian_proto::put_wire`). `None` when the port is left alone lately, or takes no
/// puts (the caller puts through gRPC).
pub async fn put_async(address: &str, frame: &Outgoing) -> Option<io::Result<PutReply>> {
    check_reachable(address).ok()?;
    if listed(&NO_PUTS, address) {
        return None;
    }
    Some(
        match exchange_kept(address, &frame.parts(), Wanted::Put).await {
            Ok(Reply::Put(r)) => {
                note_closed(address, &r);
                Ok(r)
            }
            Ok(_) => unreachable!("a put's answer is read as one"),
            Err(e) => Err(e),
        },
    )
}

/// Puts a batch of blocks through the port at `address` from a runtime task (`frames`:
/// see `meridian_proto::put_wire`): one reply per frame, in order (fewer when the node is
/// busy). `None` as for [`put_async`]; an error when the node does not take batches
/// (one older than them closes the connection).
pub async fn put_batch_async(
    address: &str,
    frames: &[Outgoing],
) -> Option<io::Result<Vec<PutReply>>> {
    check_reachable(address).ok()?;
    if listed(&NO_PUTS, address) {
        return None;
    }
    let head = match put_wire::batch_head(frames.len()) {
        Ok(h) => h,
        Err(e) => return Some(Err(e)),
    };
    let mut parts: Vec<&[u8]> = vec![&head];
    for f in frames {
        parts.extend(f.parts().into_iter().filter(|p| !p.is_empty()));
    }
    Some(
        match exchange_kept(address, &parts, Wanted::Puts(frames.len())).await {
            Ok(Reply::Puts(r)) => {
                if let Some(first) = r.first() {
                    note_closed(address, first);
                }
                Ok(r)
            }
            Ok(_) => unreachable!("a batch's answers are read as one"),
            Err(e) => Err(e),
        },
    )
}

/// A port that answers a put "closed" takes no puts: left alone for puts a while.
fn note_closed(address: &str, reply: &PutReply) {
    if matches!(reply, PutReply::Closed(_)) && list(&NO_PUTS, address, NO_PUTS_FOR) {
        tracing::info!(%address, "range port takes no puts; putting through gRPC");
    }
}

/// Which reply a frame's sender reads.
#[derive(Clone, Copy)]
enum Wanted {
    /// A range read's, with plaintexts up to this long.
    Range(u32),
    /// A put's.
    Put,
    /// A batch of this many puts'.
    Puts(usize),
}

/// A reply of either kind.
enum Reply {
    Range(RangeReply),
    Put(PutReply),
    Puts(Vec<PutReply>),
}

impl Reply {
    fn busy(&self) -> bool {
        match self {
            Reply::Range(r) => *r == RangeReply::Busy,
            Reply::Put(r) => *r == PutReply::Busy,
            Reply::Puts(r) => r.first() == Some(&PutReply::Busy),
        }
    }
}

/// One exchange on a connection kept for tasks (or a new one): `frame` written,
/// the `wanted` reply read. A kept connection the node has closed since is dialed again,
/// once; a timeout or a failed fresh connection leaves the port alone a while, a "busy"
/// longer.
async fn exchange_kept(address: &str, frame: &[&[u8]], wanted: Wanted) -> io::Result<Reply> {
    let kept = take_idle(address);
    let was_kept = kept.is_some();
    let first = match kept {
        Some(conn) => Ok(conn),
        None => connect_async(address).await,
    };
    let exchanged = match first {
        Ok(conn) => exchange_async(conn, frame, wanted).await,
        Err(e) => Err(e),
    };
    let exchanged = match exchanged {
        Err(e) if was_kept && !timed_out(&e) => match connect_async(address).await {
            Ok(conn) => exchange_async(conn, frame, wanted).await,
            Err(e) => Err(e),
        },
        other => other,
    };
    match exchanged {
        Ok((_, reply)) if reply.busy() => {
            leave_alone(address, UNREACHABLE_FOR, "busy");
            Ok(reply)
        }
        Ok((conn, reply)) => {
            keep_idle(address, conn);
            Ok(reply)
        }
        Err(e) => {
            leave_alone(address, SLOW_FOR, &e.to_string());
            Err(e)
        }
    }
}

/// A connection kept for `address`, made under the identity in force (those made before
/// a rotation are dropped).
fn take_idle(address: &str) -> Option<AsyncPortStream> {
    let mut idle = IDLE.lock().unwrap_or_else(|p| p.into_inner());
    idle.retain(|(_, c)| c.current());
    let at = idle.iter().rposition(|(a, _)| a == address)?;
    Some(idle.swap_remove(at).1)
}

fn keep_idle(address: &str, conn: AsyncPortStream) {
    let mut idle = IDLE.lock().unwrap_or_else(|p| p.into_inner());
    let here = idle.iter().filter(|(a, _)| a == address).count();
    if here < IDLE_PER_ADDRESS && idle.len() < MAX_CONNECTIONS {
        idle.push((address.to_string(), conn));
    }
}

async fn connect_async(address: &str) -> io::Result<AsyncPortStream> {
    let dialed = port_conn::dial_async(address, CONNECT_TIMEOUT, IO_TIMEOUT).await;
    left_alone_if_failed(address, dialed)
}

/// One request (its parts written in order) and its reply, within [`IO_TIMEOUT`] and a
/// second more for every [`SECOND_PER`] bytes sent (a block of megabytes is stored on
/// every replica before its answer comes).
async fn exchange_async(
    mut conn: AsyncPortStream,
    frame: &[&[u8]],
    wanted: Wanted,
) -> io::Result<(AsyncPortStream, Reply)> {
    let sent: usize = frame.iter().map(|p| p.len()).sum();
    let limit = IO_TIMEOUT + Duration::from_secs((sent / SECOND_PER) as u64);
    let stream = &mut conn.io;
    let exchange = async {
        for part in frame {
            stream.write_all(part).await?;
        }
        // A TLS stream may hold the last record until flushed.
        stream.flush().await?;
        match wanted {
            Wanted::Range(max_len) => read_reply(stream, max_len).await.map(Reply::Range),
            Wanted::Put => read_put_reply(stream).await.map(Reply::Put),
            Wanted::Puts(n) => {
                let mut replies = Vec::with_capacity(n);
                while replies.len() < n {
                    let reply = read_put_reply(stream).await?;
                    // A busy node answers once and closes the connection.
                    let busy = reply == PutReply::Busy;
                    replies.push(reply);
                    if busy {
                        break;
                    }
                }
                Ok(Reply::Puts(replies))
            }
        }
    };
    match tokio::time::timeout(limit, exchange).await {
        Ok(reply) => Ok((conn, reply?)),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "no reply in time")),
    }
}

/// Reads one put reply (the checks of `PutReply::read`).
async fn read_put_reply(conn: &mut AsyncPortIo) -> io::Result<PutReply> {
    let mut head = [0u8; put_wire::REPLY_HEAD];
    conn.read_exact(&mut head).await?;
    let status = PutReply::status(&head)?;
    if status == 4 {
        return Ok(PutReply::Busy);
    }
    let len = PutReply::body_len(status, conn.read_u32_le().await?)?;
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).await?;
    PutReply::from_body(status, &body)
}

/// Reads one reply (the checks of `RangeReply::read`), the outboard and plaintext into one
/// buffer of their size: the plaintext is kept as it arrived.
async fn read_reply(conn: &mut AsyncPortIo, max_len: u32) -> io::Result<RangeReply> {
    let mut head = [0u8; REPLY_HEAD];
    conn.read_exact(&mut head).await?;
    match RangeReply::status(&head)? {
        0 => {
            let mut lengths = [0u8; FOUND_LENGTHS];
            conn.read_exact(&mut lengths).await?;
            let found = Found::parse(&lengths, max_len)?;
            let total = found.outboard_len as usize + found.plain_len as usize;
            let mut body = BytesMut::with_capacity(total);
            while body.len() < total {
                let want = total - body.len();
                if conn.read_buf(&mut (&mut body).limit(want)).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            let outboard = body.split_to(found.outboard_len as usize).to_vec();
            Ok(found.reply(outboard, body.freeze()))
        }
        4 => Ok(RangeReply::Busy),
        status => {
            let len = RangeReply::message_len(conn.read_u32_le().await?)?;
            let mut message = vec![0u8; len];
            conn.read_exact(&mut message).await?;
            RangeReply::message(status, &message)
        }
    }
}
