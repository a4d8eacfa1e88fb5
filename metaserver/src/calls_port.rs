//! The calls port: a client's `Calls` stream on a TCP connection of its own, framed by
//! `meridian_proto::calls_wire`, without HTTP/2 (docs/adr/0024).
//!
//! Each connection is served as a `Calls` stream is (`calls.rs`): its first frame, the
//! client's token, stands for the stream's opening metadata; every call waits for the
//! client's share of the server as a gRPC call does (the same [`FairLayer`]); the
//! answers go back as frames, those ready together in one write. With TLS on, a
//! connection is mutual TLS with the identity installed when it arrives (the range port's
//! configuration and ALPN, `meridian_proto::port_conn`), and its certificate stands for
//! its calls as a gRPC connection's does: roles, revocation (checked at every call), and
//! the client's share.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meridian_proto::calls_wire;
use meridian_proto::fair::FairLayer;
use meridian_proto::pb::meta::{Call, CallReply};
use meridian_proto::port_conn;
use meridian_proto::tls_incoming::ConnInfo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Extensions, Status};
use tracing::{debug, info, warn};

use crate::service::MetaNode;

/// How long a client may take over its TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// How long a client may take to send its token frame.
const OPENING: Duration = Duration::from_secs(10);
/// After a failed accept (out of file descriptors), a pause before the next.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);
/// How long answers may take to be written (a client that stopped reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(20);
/// Most bytes of answers gathered into one write.
const GATHER: usize = 256 << 10;

/// Listens at `at` (IP:PORT; port 0: one the system chooses).
pub async fn listen(at: &str) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(at).await?;
    info!(addr = %listener.local_addr()?, "calls port listening");
    Ok(listener)
}

/// Serves the connections arriving on `listener` until the member stops.
pub async fn serve(node: Arc<MetaNode>, listener: TcpListener, fair: FairLayer) {
    let mut stopping = node.stopping.subscribe();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stopping.wait_for(|s| *s) => return,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "calls port: accept failed");
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        tokio::spawn(open(node.clone(), tcp, remote, fair.clone()));
    }
}

/// Makes the TLS handshake on `tcp` if the member has an identity, then serves it.
async fn open(node: Arc<MetaNode>, tcp: TcpStream, remote: SocketAddr, fair: FairLayer) {
    match port_conn::accept_async(tcp, remote, HANDSHAKE).await {
        Ok((stream, info)) => connection(node, stream, remote, info, fair).await,
        Err(e) => info!(%remote, error = %e, "calls port: a connection refused"),
    }
}

/// Serves one connection until either side ends it.
async fn connection(
    node: Arc<MetaNode>,
    stream: impl AsyncRead + AsyncWrite + Send + 'static,
    remote: SocketAddr,
    info: ConnInfo,
    fair: FairLayer,
) {
    let (read, write) = tokio::io::split(stream);
    let mut read = BufReader::new(read);
    let Some(metadata) = opening(&mut read, remote).await else {
        return;
    };
    let mut extensions = Extensions::new();
    extensions.insert(fair.admission(&info));
    extensions.insert(info);
    // The calls as a stream: a frame that is not a call ends it (the calls running still
    // answer, as on a stream whose client broke).
    let calls = Box::pin(futures::stream::unfold(read, move |mut read| async move {
        match calls_wire::read_message::<Call, _>(&mut read).await {
            Ok(Some(call)) => Some((Ok(call), read)),
            Ok(None) => None,
            Err(e) => {
                debug!(%remote, error = %e, "calls port: the connection broke");
                Some((Err(Status::unavailable(e.to_string())), read))
            }
        }
    }));
    let answers = crate::calls::serve_parts(node, metadata, extensions, calls);
    if let Err(why) = write_answers(answers, write).await {
        debug!(%remote, %why, "calls port: the connection ends");
    }
}

/// The connection's opening frame as a stream's opening metadata (its token, if any);
/// `None` (logged) if it is malformed or does not come in time.
async fn opening(read: &mut (impl AsyncRead + Unpin), remote: SocketAddr) -> Option<MetadataMap> {
    let token = tokio::time::timeout(OPENING, calls_wire::read(read, calls_wire::TOKEN_MAX)).await;
    let token = match token {
        Ok(Ok(Some(token))) => token,
        Ok(Ok(None)) => return None,
        Ok(Err(e)) => {
            debug!(%remote, error = %e, "calls port: a bad opening");
            return None;
        }
        Err(_) => {
            debug!(%remote, "calls port: no opening in time");
            return None;
        }
    };
    let mut metadata = MetadataMap::new();
    if token.is_empty() {
        return Some(metadata);
    }
    let header = std::str::from_utf8(&token)
        .ok()
        .and_then(|t| MetadataValue::try_from(format!("Bearer {t}")).ok());
    let Some(header) = header else {
        debug!(%remote, "calls port: an unreadable token");
        return None;
    };
    metadata.insert(meridian_proto::token::HEADER, header);
    Some(metadata)
}

/// Writes `answers` to `write` as they come, those ready together in one write, until
/// they end; why it stopped early otherwise.
async fn write_answers(
    mut answers: tokio::sync::mpsc::Receiver<Result<CallReply, Status>>,
    mut write: impl AsyncWrite + Unpin,
) -> Result<(), String> {
    let mut out = Vec::new();
    while let Some(answer) = answers.recv().await {
        out.clear();
        let mut next = Some(answer);
        while let Some(answer) = next.take() {
            // The stream failed as a whole: the connection ends with it.
            let reply = answer.map_err(|s| s.message().to_string())?;
            calls_wire::put(&mut out, &reply);
            if out.len() < GATHER {
                next = answers.try_recv().ok();
            }
        }
        // Flushed: TLS may hold back what the socket did not take at once.
        let written = async {
            write.write_all(&out).await?;
            write.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, written).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("an answer could not be written: {e}")),
            Err(_) => return Err("the client takes no answers".into()),
        }
    }
    Ok(())
}
