//! The connections a gRPC server takes: accepted here, TLS handshakes done with the
//! identity installed at the moment each connection arrives (so a rotated certificate is
//! served from the next connection on, without a restart), and each connection's peer
//! certificates kept for the role checks ([`crate::tls::require_role`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::fair::ClientKey;
use crate::tls_stream::MaybeTls;

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a request's handler can know of its connection (a request extension).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The peer's address.
    pub remote: SocketAddr,
    /// The certificate chain the peer presented (verified against the CA); `None` on a
    /// plaintext connection.
    pub peer_certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// Who its requests count against ([`crate::fair`]); `None` for the deployment's
    /// servers, which are not limited.
    pub client: Option<ClientKey>,
    /// The fingerprint of the peer's certificate ([`crate::tls::fingerprint`]): every
    /// request is refused once it is revoked.
    pub fingerprint: Option<[u8; 32]>,
}

impl ConnInfo {
    /// A plaintext connection's, from `remote`: nobody has an identity.
    pub fn plaintext(remote: SocketAddr) -> ConnInfo {
        ConnInfo {
            remote,
            peer_certs: None,
            client: Some(ClientKey::Conn(remote)),
            fingerprint: None,
        }
    }

    /// A TLS connection's, from `remote`, made under `identity`; `None` (logged) if its
    /// certificate is revoked.
    pub fn tls(
        remote: SocketAddr,
        conn: &tokio_rustls::rustls::ServerConnection,
        identity: &crate::tls::TlsIdentity,
    ) -> Option<ConnInfo> {
        let peer_certs = conn
            .peer_certificates()
            .map(|c| Arc::new(c.iter().map(|c| c.clone().into_owned()).collect::<Vec<_>>()));
        let fingerprint = peer_certs
            .as_ref()
            .and_then(|c| c.first())
            .map(crate::tls::fingerprint);
        if let Some(fp) = &fingerprint
            && identity.revokes(fp)
        {
            metrics::counter!("meridian_tls_revoked_refused_total").increment(1);
            tracing::warn!(%remote, fingerprint = %hex::encode(fp), "a revoked certificate was refused");
            return None;
        }
        let client = match (peer_certs.as_ref().and_then(|c| c.first()), fingerprint) {
            (Some(leaf), Some(fp)) => {
                let roles = crate::tls::roles(leaf).unwrap_or_default();
                (!crate::tls::names_server(&roles)).then_some(ClientKey::Cert(fp))
            }
            _ => Some(ClientKey::Conn(remote)),
        };
        Some(ConnInfo {
            remote,
            peer_certs,
            client,
            fingerprint,
        })
    }
}

/// One accepted connection, plaintext or TLS.
pub struct Conn {
    stream: MaybeTls<tokio_rustls::server::TlsStream<TcpStream>>,
    info: ConnInfo,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// The connections arriving on `listener`, with TCP_NODELAY (Nagle and delayed ACKs stall
/// streams by 40 ms), through TLS when the process has an identity. A handshake that fails
/// (no certificate, another CA's, plaintext) is logged and the connection dropped; it
/// never stops the server. The listener closes when the stream is dropped.
pub fn incoming(listener: TcpListener) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tx.closed() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was taken.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let Some(identity) = crate::tls::current() else {
                let conn = Conn {
                    stream: MaybeTls::Plain(tcp),
                    info: ConnInfo::plaintext(remote),
                };
                if tx.send(Ok(conn)).await.is_err() {
                    return;
                }
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let handshake = identity.acceptor().accept(tcp);
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::info!(%remote, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
                let Some(info) = ConnInfo::tls(remote, tls.get_ref().1, &identity) else {
                    return;
                };
                let conn = Conn {
                    stream: MaybeTls::Tls(Box::new(tls)),
                    info,
                };
                let _ = tx.send(Ok(conn)).await;
            });
        }
    });
    ReceiverStream::new(rx)
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
