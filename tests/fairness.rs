//! Fair shares of a server: one client holding all of its share waits in its own queue,
//! and another client is served meanwhile; a request not answered in time is cut; a client
//! over its rate is held back, and another is not.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::*;
use meridian_proto::pb::chunk::chunk_service_client::ChunkServiceClient;
use meridian_proto::pb::chunk::{NodeStatusRequest, PutRequest};
use tonic::transport::Channel;

/// A region of one metaserver and one chunkserver run with `flags`, serving its metrics;
/// and the metrics' address.
fn chunkserver_with(flags: &[&str]) -> Result<(MetaCluster, ServerProc, String)> {
    let meta = MetaCluster::start(1, &[])?;
    let metrics = free_addr()?;
    let mut args: Vec<String> = vec![
        "--zone".into(),
        "a".into(),
        "--meta".into(),
        meta.addrs().join(","),
        "--metrics-listen".into(),
        metrics.clone(),
    ];
    args.extend(flags.iter().map(|f| f.to_string()));
    let chunk = ServerProc::start("chunk", 1, meta.dir.path(), args)?;
    Ok((meta, chunk, metrics))
}

/// The runtime the tests' calls run on.
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// A new client of the chunkserver at `addr`, over its own connection (in plaintext, a
/// client of its own for the fair shares).
fn client(rt: &tokio::runtime::Runtime, addr: &str) -> Result<ChunkServiceClient<Channel>> {
    let ch = rt
        .block_on(meridian_proto::channels::connect(addr))
        .map_err(anyhow::Error::msg)?;
    Ok(ChunkServiceClient::new(ch))
}

#[test]
fn a_client_over_its_share_waits_and_the_others_are_served() -> Result<()> {
    let (_meta, chunk, metrics) = chunkserver_with(&["--max-requests-per-client", "2"])?;
    let rt = runtime()?;
    // Plaintext: a client is a connection.
    let connect = || client(&rt, &chunk.addr);
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

#[test]
fn a_client_request_not_answered_in_time_is_cut_with_deadline_exceeded() -> Result<()> {
    let (_meta, chunk, metrics) = chunkserver_with(&[
        "--max-requests-per-client",
        "1",
        "--request-timeout-ms",
        "1500",
    ])?;
    let rt = runtime()?;
    let client = client(&rt, &chunk.addr)?;
    // An upload that never sends its block holds the client's whole share (one), and a
    // request waits behind it: the upload is cut at the timeout, which frees the share;
    // nothing is left waiting.
    let mut stalled = client.clone();
    let upload = rt.spawn(async move {
        stalled
            .put(futures::stream::pending::<PutRequest>())
            .await
            .map(|_| ())
    });
    wait_for(
        Duration::from_secs(30),
        "the stalled upload running",
        || (gauge(&metrics, "meridian_client_requests_running")? == 1.0).then_some(()),
    )?;
    let mut queued = client.clone();
    let behind = rt.spawn(async move { queued.node_status(NodeStatusRequest {}).await });
    wait_for(Duration::from_secs(30), "the request waiting", || {
        (gauge(&metrics, "meridian_client_requests_waiting")? == 1.0).then_some(())
    })?;
    let answer = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), upload).await })
        .context("the stalled upload was never answered")??;
    let code = answer.err().map(|s| s.code());
    anyhow::ensure!(
        code == Some(tonic::Code::DeadlineExceeded),
        "the stalled upload: {code:?}, expected DEADLINE_EXCEEDED"
    );
    // Answered, not left waiting: served once the upload is cut, or cut itself when its
    // own time ran out first (it came a moment after the upload, so it has only that
    // moment left to be served in, which a busy host may not give it).
    let behind = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), behind).await })
        .context("the request behind the upload stayed queued after it was cut")??;
    if let Err(s) = behind {
        anyhow::ensure!(
            s.code() == tonic::Code::DeadlineExceeded,
            "the request behind the upload: {s}"
        );
    }
    wait_for(Duration::from_secs(30), "nothing running", || {
        (gauge(&metrics, "meridian_client_requests_running")? == 0.0).then_some(())
    })?;
    // The client's share is free again: a quick request is answered as usual.
    let mut c = client.clone();
    rt.block_on(c.node_status(NodeStatusRequest {}))?;
    Ok(())
}

#[test]
fn a_client_over_its_rate_is_held_back_and_another_is_not() -> Result<()> {
    let (_meta, chunk, metrics) = chunkserver_with(&["--max-requests-per-client-per-sec", "2"])?;
    let rt = runtime()?;
    let connect = || client(&rt, &chunk.addr);
    let (mut noisy, mut calm) = (connect()?, connect()?);
    // A counter reads as a gauge does.
    let paced = || gauge(&metrics, "meridian_client_requests_paced_total").unwrap_or(-1.0);
    // A second's worth goes at once (three requests), the rest at two a second: of ten in
    // a row, the last seven are held back, unless a request itself takes longer than the
    // half second between two.
    rt.block_on(async {
        for _ in 0..10 {
            noisy.node_status(NodeStatusRequest {}).await?;
        }
        Ok::<_, tonic::Status>(())
    })?;
    let after_noisy = paced();
    anyhow::ensure!(after_noisy >= 5.0, "{after_noisy} of 10 requests held back");
    // Another client has its own second's worth: none of its three is held back.
    rt.block_on(async {
        for _ in 0..3 {
            calm.node_status(NodeStatusRequest {}).await?;
        }
        Ok::<_, tonic::Status>(())
    })?;
    assert_eq!(paced(), after_noisy, "the calm client was held back");
    Ok(())
}

/// A client's metadata calls on its `Calls` stream (ADR 0019) are admitted one by one as
/// unary calls are: over its rate for longer than the server's request timeout, a call is
/// refused at once (RESOURCE_EXHAUSTED), the stream staying open for the next.
#[test]
fn calls_on_one_stream_are_each_held_to_the_clients_rate() -> Result<()> {
    // One member: no Raft traffic to pace.
    let meta = MetaCluster::start(
        1,
        &[
            "--max-requests-per-client-per-sec",
            "2",
            "--request-timeout-ms",
            "300",
        ],
    )?;
    let rt = runtime()?;
    let client = meridian_client::MetaClient::new(meta.addrs());
    let changes = meridian_proto::ns::Query::Changes { from: 0, limit: 1 };
    let (mut served, mut refused) = (0, 0);
    rt.block_on(async {
        for _ in 0..12 {
            match client.query(&changes, false).await {
                Ok(_) => served += 1,
                Err(e) if e.to_string().contains("rate") => refused += 1,
                Err(e) => anyhow::bail!("{e}"),
            }
        }
        Ok(())
    })?;
    // A second's worth (three, the stream's opening among them) at once; each next one
    // would wait half a second, longer than the 300 ms it may.
    anyhow::ensure!(
        refused >= 6 && served >= 1,
        "{served} served, {refused} refused over the rate"
    );
    // Later, within its rate again, on the same client (and stream).
    std::thread::sleep(Duration::from_secs(2));
    rt.block_on(client.query(&changes, false))
        .context("a call within the rate")?;
    Ok(())
}
