//! A member's calls port from the client's side (docs/adr/0024): the `Calls` stream's
//! messages framed on a TCP connection of their own (`meridian_proto::calls_wire`), without
//! HTTP/2. A call is written by the thread that makes it (a kernel request thread's first
//! poll writes it to the socket itself); the answers are read by a task, as the stream's
//! are. With TLS on, the connection is mutual TLS with the process's identity, as the
//! range port's (`meridian_proto::port_conn`).

use std::io;
use std::time::Duration;

use meridian_proto::calls_wire;
use meridian_proto::pb::meta::Call;
use meridian_proto::port_conn::{self, AsyncPortIo};
use meridian_proto::prost::Message;
use tokio::io::{AsyncWriteExt, BufReader, ReadHalf, WriteHalf};

/// How long a connection to the port may take, and its TLS handshake.
const CONNECT: Duration = Duration::from_secs(2);
const HANDSHAKE: Duration = Duration::from_secs(5);

/// Where the answers come from.
pub(super) type Answers = BufReader<ReadHalf<AsyncPortIo>>;
/// How long a call may take to be written (a member that stopped reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the calls go.
pub(super) struct PortOut {
    write: tokio::sync::Mutex<WriteHalf<AsyncPortIo>>,
}

impl std::fmt::Debug for PortOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PortOut")
    }
}

impl PortOut {
    /// Writes `call` (one frame, whole: calls of other threads go before or after it).
    pub(super) async fn send(&self, call: &Call) -> io::Result<()> {
        let mut frame = Vec::with_capacity(4 + call.encoded_len());
        calls_wire::put(&mut frame, call);
        let mut write = self.write.lock().await;
        // Flushed: TLS may hold back what the socket did not take at once.
        let written = async {
            write.write_all(&frame).await?;
            write.flush().await
        };
        tokio::time::timeout(WRITE_TIMEOUT, written)
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
    }
}

/// The address of `member`'s calls port: its host, at `port`.
pub(super) fn address(member: &str, port: u16) -> Option<String> {
    let (host, _) = member.rsplit_once(':')?;
    Some(format!("{host}:{port}"))
}

/// Opens a connection to the calls port at `address`, its opening frame naming `token`:
/// where the answers come from, and where the calls go.
pub(super) async fn dial(address: &str, token: Option<&str>) -> io::Result<(Answers, PortOut)> {
    let stream = port_conn::dial_async(address, CONNECT, HANDSHAKE).await?;
    let (read, write) = tokio::io::split(stream.io);
    let out = PortOut {
        write: tokio::sync::Mutex::new(write),
    };
    let mut opening = Vec::new();
    calls_wire::put_bytes(&mut opening, token.unwrap_or_default().as_bytes());
    let mut write = out.write.lock().await;
    write.write_all(&opening).await?;
    write.flush().await?;
    drop(write);
    Ok((BufReader::new(read), out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_is_reached_at_the_members_host() {
        assert_eq!(
            address("10.0.0.7:7400", 41000).as_deref(),
            Some("10.0.0.7:41000")
        );
        assert_eq!(address("[::1]:7400", 41000).as_deref(), Some("[::1]:41000"));
        assert_eq!(
            address("meta-0.meta:7400", 9).as_deref(),
            Some("meta-0.meta:9")
        );
        assert_eq!(address("no-port", 9), None);
    }
}
