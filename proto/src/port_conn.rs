//! The connections of a chunkserver's range port (`range_wire` reads, `put_wire` puts):
//! plain TCP in a deployment without TLS, mutual TLS with the process's identity
//! ([`crate::tls`]) in one with it: the same CA, certificates and revocation list as
//! gRPC, under an ALPN of the port's own ([`ALPN`]) so that neither side mistakes one
//! service for the other.
//!
//! Both blocking streams (a chunkserver's connection threads, a mount's kernel threads,
//! a coordinator's copies to its replicas) and a runtime's ([`dial_async`]) are here. A
//! stream remembers the identity's [`crate::tls::generation`] it was made under: pools
//! drop the ones made before a rotation ([`PortStream::current`]).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConnection, ServerConnection, StreamOwned};

use crate::tls::{self, TlsIdentity};
use crate::tls_incoming::ConnInfo;
use crate::tls_stream::MaybeTls;

/// The application protocol a range port's TLS speaks (gRPC's is `h2`).
pub const ALPN: &[u8] = b"meridian-port/1";

/// A blocking connection of the range port, either side.
pub struct PortStream {
    inner: Inner,
    generation: u64,
}

enum Inner {
    Plain(TcpStream),
    Server(Box<StreamOwned<ServerConnection, TcpStream>>),
    Client(Box<StreamOwned<ClientConnection, TcpStream>>),
}

/// Who is at the other end of a connection a port accepted.
#[derive(Clone, Debug, Default)]
pub struct Peer {
    /// The roles its certificate names ([`tls::roles`]); `None` on plaintext.
    pub roles: Option<Vec<&'static str>>,
    /// Its certificate's fingerprint ([`tls::fingerprint`]).
    pub fingerprint: Option<[u8; 32]>,
}

impl Peer {
    /// Whether its certificate has been revoked since it connected (checked before each
    /// frame is answered, as gRPC checks each call).
    pub fn revoked(&self) -> bool {
        self.fingerprint.is_some_and(|fp| tls::is_revoked(&fp))
    }

    /// Whether it is one of the deployment's servers (a metaserver's or chunkserver's
    /// certificate), or anyone on plaintext, where nobody has an identity.
    pub fn server(&self) -> bool {
        self.roles.as_deref().is_none_or(tls::names_server)
    }

    /// Whether it may act without a volume access token: always when this server checks
    /// none, and otherwise for servers' and operators' certificates, as gRPC decides
    /// ([`crate::token::caller`]). The port carries no tokens, so anyone else goes to
    /// gRPC.
    pub fn unrestricted(&self) -> bool {
        crate::token::keys().is_none() || self.roles.as_deref().is_some_and(tls::names_tokenless)
    }
}

impl PortStream {
    /// The TCP connection under it (for timeouts and shutdown).
    pub fn tcp(&self) -> &TcpStream {
        match &self.inner {
            Inner::Plain(s) => s,
            Inner::Server(s) => s.get_ref(),
            Inner::Client(s) => s.get_ref(),
        }
    }

    /// Whether it was made under the identity installed now (a pool drops it otherwise:
    /// after a rotation, connections are made with the new certificates).
    pub fn current(&self) -> bool {
        self.generation == tls::generation()
    }

    /// Whether it is encrypted.
    pub fn is_tls(&self) -> bool {
        !matches!(self.inner, Inner::Plain(_))
    }
}

impl Read for PortStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Plain(s) => s.read(buf),
            Inner::Server(s) => s.read(buf),
            Inner::Client(s) => s.read(buf),
        }
    }
}

impl Write for PortStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Plain(s) => s.write(buf),
            Inner::Server(s) => s.write(buf),
            Inner::Client(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Inner::Plain(s) => s.flush(),
            Inner::Server(s) => s.flush(),
            Inner::Client(s) => s.flush(),
        }
    }
}

/// The server's side of a connection `tcp` the port accepted, with TCP_NODELAY: with
/// `identity`, the TLS handshake (a client certificate from the deployment's CA required,
/// a revoked one refused), within `timeout`; the caller sets the stream's timeouts
/// afterwards.
pub fn accept(
    tcp: TcpStream,
    identity: Option<&TlsIdentity>,
    timeout: Duration,
) -> io::Result<(PortStream, Peer)> {
    let generation = tls::generation();
    // Small replies would otherwise wait on Nagle and the client's delayed ACKs (40 ms).
    tcp.set_nodelay(true)?;
    let Some(identity) = identity else {
        let stream = PortStream {
            inner: Inner::Plain(tcp),
            generation,
        };
        return Ok((stream, Peer::default()));
    };
    let mut conn = ServerConnection::new(identity.port_server()).map_err(io::Error::other)?;
    handshake(&mut conn, &tcp, timeout)?;
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| refused("no client certificate"))?;
    let fingerprint = tls::fingerprint(leaf);
    if identity.revokes(&fingerprint) {
        metrics::counter!("meridian_tls_revoked_refused_total").increment(1);
        return Err(refused(&format!(
            "certificate {} is revoked",
            hex::encode(fingerprint)
        )));
    }
    let roles = tls::roles(leaf).map_err(|e| refused(&e))?;
    let peer = Peer {
        roles: Some(roles),
        fingerprint: Some(fingerprint),
    };
    let stream = PortStream {
        inner: Inner::Server(Box::new(StreamOwned::new(conn, tcp))),
        generation,
    };
    Ok((stream, peer))
}

/// A connection to the port at `address`, dialed within `connect` and with `io` as its
/// read and write timeouts (also the handshake's): TLS with the installed identity, if
/// the process has one.
pub fn dial(address: &str, connect: Duration, io: Duration) -> io::Result<PortStream> {
    let generation = tls::generation();
    let tcp = TcpStream::connect_timeout(&resolve(address)?, connect)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(io))?;
    tcp.set_write_timeout(Some(io))?;
    let Some(identity) = tls::current() else {
        return Ok(PortStream {
            inner: Inner::Plain(tcp),
            generation,
        });
    };
    let mut conn =
        ClientConnection::new(identity.port_client(), server_name()).map_err(io::Error::other)?;
    handshake(&mut conn, &tcp, io)?;
    Ok(PortStream {
        inner: Inner::Client(Box::new(StreamOwned::new(conn, tcp))),
        generation,
    })
}

/// Runs a handshake to its end on `tcp`, within `timeout` for each step.
fn handshake<S: rustls::SideData>(
    conn: &mut rustls::ConnectionCommon<S>,
    tcp: &TcpStream,
    timeout: Duration,
) -> io::Result<()> {
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let mut io = tcp;
    while conn.is_handshaking() {
        conn.complete_io(&mut io)?;
    }
    Ok(())
}

fn resolve(address: &str) -> io::Result<SocketAddr> {
    address
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))
}

fn server_name() -> ServerName<'static> {
    ServerName::try_from(tls::SERVER_NAME).expect("the servers' name is a DNS name")
}

fn refused(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, why.to_string())
}

/// A runtime's connection to a range port.
pub struct AsyncPortStream {
    /// What is read and written.
    pub io: AsyncPortIo,
    generation: u64,
}

/// The stream of an [`AsyncPortStream`].
pub type AsyncPortIo = MaybeTls<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl AsyncPortStream {
    /// As [`PortStream::current`].
    pub fn current(&self) -> bool {
        self.generation == tls::generation()
    }
}

/// A connection to the port at `address` from a runtime task, dialed within `connect`
/// and (with the installed identity) through its handshake within `handshake`.
pub async fn dial_async(
    address: &str,
    connect: Duration,
    handshake: Duration,
) -> io::Result<AsyncPortStream> {
    let generation = tls::generation();
    let tcp = within(connect, "connect", tokio::net::TcpStream::connect(address)).await?;
    tcp.set_nodelay(true)?;
    let io = match tls::current() {
        None => MaybeTls::Plain(tcp),
        Some(identity) => {
            let connector = tokio_rustls::TlsConnector::from(identity.port_client());
            let tls = within(
                handshake,
                "TLS handshake",
                connector.connect(server_name(), tcp),
            );
            MaybeTls::Tls(Box::new(tls.await?))
        }
    };
    Ok(AsyncPortStream { io, generation })
}

/// A runtime's side of a connection `tcp` (from `remote`) that a port accepted: with the
/// installed identity, through its TLS handshake within `handshake` (a client certificate
/// from the deployment's CA required, a revoked one refused); and who is at the other end,
/// as gRPC's connections tell their handlers ([`ConnInfo`]).
pub async fn accept_async(
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
    handshake: Duration,
) -> io::Result<(AsyncServerIo, ConnInfo)> {
    tcp.set_nodelay(true)?;
    let Some(identity) = tls::current() else {
        return Ok((MaybeTls::Plain(tcp), ConnInfo::plaintext(remote)));
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(identity.port_server());
    let tls = within(handshake, "TLS handshake", acceptor.accept(tcp)).await?;
    let info = ConnInfo::tls(remote, tls.get_ref().1, &identity)
        .ok_or_else(|| refused("a revoked certificate"))?;
    Ok((MaybeTls::Tls(Box::new(tls)), info))
}

/// The stream of a connection [`accept_async`] took.
pub type AsyncServerIo = MaybeTls<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>;

/// `step`'s outcome, or a timeout after `limit`.
async fn within<T>(
    limit: Duration,
    what: &str,
    step: impl Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(limit, step).await.unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what} timed out"),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ends of a plaintext connection send at once: a small reply held back by
    /// Nagle's algorithm waits for the peer's delayed ACK (40 ms a read).
    #[test]
    fn both_ends_of_a_connection_send_without_delay() -> io::Result<()> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?.to_string();
        let client = dial(&address, Duration::from_secs(2), Duration::from_secs(2))?;
        let (tcp, _) = listener.accept()?;
        let (server, peer) = accept(tcp, None, Duration::from_secs(2))?;
        assert!(client.tcp().nodelay()?, "the client's end");
        assert!(server.tcp().nodelay()?, "the server's end");
        assert!(!server.is_tls() && peer.server() && peer.roles.is_none());
        Ok(())
    }
}
