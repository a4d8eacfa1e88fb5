//! A metaserver's calls port (docs/adr/0024) on a real three-member group: a client's
//! calls go through it and answer as they do through gRPC, a group started without it
//! serves the same calls through gRPC, and frames that are not calls (too long, cut
//! short, undecodable) end their connection and nothing else.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, Result};
use common::{MetaCluster, SlowFollowers, create_op, new_volume};
use meridian_client::MetaClient;
use meridian_proto::calls_wire;
use meridian_proto::ns::*;
use meridian_proto::pb::meta::meta_service_client::MetaServiceClient;
use meridian_proto::pb::meta::{Call, CallReply, CallsPortRequest, call_reply};
use meridian_proto::prost::Message;

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Creates a volume and `n` files in its root through `client`, then lists them: the
/// names listed.
async fn create_and_list(client: &MetaClient, n: usize) -> Result<Vec<Vec<u8>>> {
    let root = new_volume(client, "ports").await?;
    for i in 0..n {
        match client.mutate(&create_op(root, &format!("f{i}"))).await? {
            Reply::Attr(_) => {}
            other => anyhow::bail!("create f{i}: {other:?}"),
        }
    }
    match client
        .query(
            &Query::ReadDir {
                ino: root,
                after: None,
                limit: 1000,
                creds: Creds::root(),
            },
            true,
        )
        .await?
    {
        QueryReply::Dir { entries, .. } => Ok(entries.into_iter().map(|e| e.name).collect()),
        other => anyhow::bail!("readdir: {other:?}"),
    }
}

/// The port member `addr` announces (0: none).
async fn announced(addr: &str) -> Result<u16> {
    let mut c = MetaServiceClient::connect(format!("http://{addr}")).await?;
    let port = c.calls_port(CallsPortRequest {}).await?.into_inner().port;
    Ok(u16::try_from(port)?)
}

/// Early answers come through the port: with the leader's links to its followers slowed,
/// the leader's early answer and a follower's notice reach the client long before the
/// commit, whatever the host's load (a loaded host could otherwise let the commit win
/// every time).
#[test]
fn early_answers_and_notices_come_through_the_calls_port() -> Result<()> {
    let rt = runtime()?;
    let group = SlowFollowers::start(20)?;
    let client = group.client();
    rt.block_on(async {
        let root = new_volume(&client, "early").await?;
        for i in 0..10 {
            client.mutate(&create_op(root, &format!("e{i}"))).await?;
        }
        anyhow::Ok(())
    })?;
    let (heard, taken) = client.early_answers();
    assert!(
        heard > 0 && taken > 0,
        "early answers through the port: {heard} / {taken}"
    );
    assert!(
        client.calls_through_port() >= 11,
        "calls through the port: {}",
        client.calls_through_port()
    );
    Ok(())
}

#[test]
fn a_clients_calls_go_through_the_calls_port_and_answer_as_through_grpc() -> Result<()> {
    let rt = runtime()?;
    let mut names = Vec::new();
    for flags in [&[][..], &["--no-calls-port"][..]] {
        let mut cluster = MetaCluster::start(3, flags)?;
        cluster.wait_leader()?;
        let ports = rt.block_on(async {
            let mut ports = Vec::new();
            for a in cluster.addrs() {
                ports.push(announced(&a).await?);
            }
            anyhow::Ok(ports)
        })?;
        let client = cluster.client();
        let listed = rt.block_on(create_and_list(&client, 20))?;
        assert_eq!(listed.len(), 20, "{flags:?}: {listed:?}");
        if flags.is_empty() {
            assert!(
                ports.iter().all(|&p| p != 0),
                "every member has a port: {ports:?}"
            );
            // The creates, the volume and the listing, at least.
            assert!(
                client.calls_through_port() >= 22,
                "calls through the port: {}",
                client.calls_through_port()
            );
        } else {
            assert_eq!(ports, vec![0, 0, 0], "no member has a port");
            assert_eq!(
                client.calls_through_port(),
                0,
                "calls went through the port"
            );
        }
        names.push(listed);
    }
    assert_eq!(names[0], names[1], "the same answers either way");
    Ok(())
}

/// A connection to `port` on loopback whose opening frame carries no token.
fn opened(port: u16) -> Result<TcpStream> {
    let mut c = TcpStream::connect(("127.0.0.1", port))?;
    c.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut opening = Vec::new();
    calls_wire::put_bytes(&mut opening, b"");
    c.write_all(&opening)?;
    Ok(c)
}

/// Whether the server closed `c` without an answer (a reset counts: it closed with our
/// bytes unread); not if it answered, or kept it open past the read timeout.
fn closed(mut c: TcpStream) -> bool {
    let mut got = Vec::new();
    match c.read_to_end(&mut got) {
        Ok(_) => got.is_empty(),
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[test]
fn frames_that_are_not_calls_end_their_connection_and_nothing_else() -> Result<()> {
    let rt = runtime()?;
    let mut cluster = MetaCluster::start(3, &[])?;
    let leader = cluster.wait_leader()?;
    let addr = cluster.addrs()[leader].clone();
    let port = rt.block_on(announced(&addr))?;
    anyhow::ensure!(port != 0, "the leader announces no port");

    // An opening frame longer than any token.
    let mut c = TcpStream::connect(("127.0.0.1", port))?;
    c.set_read_timeout(Some(Duration::from_secs(20)))?;
    c.write_all(&(1u32 << 20).to_le_bytes())?;
    assert!(closed(c), "a 1 MiB token frame was taken");

    // A frame claiming 4 GiB, one of bytes that decode as no call, one cut short.
    let mut c = opened(port)?;
    c.write_all(&u32::MAX.to_le_bytes())?;
    assert!(closed(c), "a 4 GiB frame was taken");
    let mut c = opened(port)?;
    let mut junk = Vec::new();
    calls_wire::put_bytes(&mut junk, &[0xff; 17]);
    c.write_all(&junk)?;
    assert!(closed(c), "an undecodable frame was taken");
    let mut c = opened(port)?;
    c.write_all(&100u32.to_le_bytes())?;
    c.write_all(&[0; 10])?;
    c.shutdown(std::net::Shutdown::Write)?;
    assert!(closed(c), "a frame cut short was answered");

    // A well-formed call naming no method is answered with an error, under its id.
    let mut c = opened(port)?;
    let mut frame = Vec::new();
    calls_wire::put(
        &mut frame,
        &Call {
            id: 41,
            ..Default::default()
        },
    );
    c.write_all(&frame)?;
    let mut head = [0u8; 4];
    c.read_exact(&mut head)?;
    let mut body = vec![0u8; u32::from_le_bytes(head) as usize];
    c.read_exact(&mut body)?;
    let reply = CallReply::decode(body.as_slice())?;
    assert_eq!(reply.id, 41);
    match reply.reply {
        Some(call_reply::Reply::Error(e)) => {
            assert_eq!(e.code, tonic::Code::InvalidArgument as i32, "{e:?}");
            assert!(e.message.contains("no method"), "{e:?}");
        }
        other => anyhow::bail!("a call naming no method was answered {other:?}"),
    }

    // The member serves on, through the port.
    let client = cluster.client();
    let listed = rt.block_on(create_and_list(&client, 3))?;
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(client.calls_through_port() > 0);
    let status = cluster.status(leader).context("the leader's status")?;
    assert!(status.leader != 0, "{status:?}");
    Ok(())
}

#[test]
fn a_member_told_where_listens_there_and_announces_it() -> Result<()> {
    let rt = runtime()?;
    let at = common::listen_port()?;
    let port: u16 = at.rsplit_once(':').context("IP:PORT")?.1.parse()?;
    let mut cluster = MetaCluster::start(1, &["--calls-listen", &at])?;
    cluster.wait_leader()?;
    let addr = cluster.addrs()[0].clone();
    assert_eq!(rt.block_on(announced(&addr))?, port);
    let client = cluster.client();
    let listed = rt.block_on(create_and_list(&client, 2))?;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(
        client.calls_through_port() > 0,
        "no call went through the port"
    );
    Ok(())
}
