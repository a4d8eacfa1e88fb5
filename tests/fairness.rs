//! Fair shares of a server: one client holding all of its share waits in its own queue,
//! and another client is served meanwhile.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{Context, Result};
use common::*;
use meridian_proto::pb::chunk::chunk_service_client::ChunkServiceClient;
use meridian_proto::pb::chunk::{NodeStatusRequest, PutRequest};
use tonic::transport::Channel;

/// The value of gauge `name` on the Prometheus endpoint at `addr` (0 if not yet set).
fn gauge(addr: &str, name: &str) -> Option<f64> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0),
    )
}

#[test]
fn a_client_over_its_share_waits_and_the_others_are_served() -> Result<()> {
    let meta = MetaCluster::start(1, &[])?;
    let metrics = free_addr()?;
    let chunk = ServerProc::start(
        "chunk",
        1,
        meta.dir.path(),
        vec![
            "--zone".into(),
            "a".into(),
            "--meta".into(),
            meta.addrs().join(","),
            "--max-requests-per-client".into(),
            "2".into(),
            "--metrics-listen".into(),
            metrics.clone(),
        ],
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Plaintext: a client is a connection.
    let connect = || -> Result<ChunkServiceClient<Channel>> {
        let ch = rt
            .block_on(meridian_proto::channels::connect(&chunk.addr))
            .map_err(anyhow::Error::msg)?;
        Ok(ChunkServiceClient::new(ch))
    };
    let (noisy, mut calm) = (connect()?, connect()?);
    let count = |name: &str| gauge(&metrics, name);
    let settles = |what: &str, name: &str, want: f64| {
        wait_for(Duration::from_secs(30), what, || {
            (count(name)? == want).then_some(())
        })
    };

    // The noisy client's share: two uploads that never send their block.
    let stalled: Vec<_> = (0..2)
        .map(|_| {
            let mut c = noisy.clone();
            rt.spawn(async move {
                let _ = c.put(futures::stream::pending::<PutRequest>()).await;
            })
        })
        .collect();
    settles(
        "two stalled uploads running",
        "meridian_client_requests_running",
        2.0,
    )?;
    // Its next request waits in its queue...
    let mut third = noisy.clone();
    let waiting = rt.spawn(async move { third.node_status(NodeStatusRequest {}).await });
    settles(
        "the third request waiting",
        "meridian_client_requests_waiting",
        1.0,
    )?;
    // ...while the other client is served.
    rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(30),
            calm.node_status(NodeStatusRequest {}),
        )
        .await
    })
    .context("the calm client waited behind the noisy one")??;
    anyhow::ensure!(
        !waiting.is_finished(),
        "the noisy client's third request ran"
    );
    // Its stalled uploads given up, its waiting request goes through.
    for s in stalled {
        s.abort();
    }
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), waiting).await })
        .context("the noisy client's request stayed queued after its share freed")???;
    settles("nothing waiting", "meridian_client_requests_waiting", 0.0)?;
    Ok(())
}
