//! Chunkservers as real processes on loopback: replication, failover to the next
//! placement, rejection of bad blocks, corrupt copies, restart.

mod common;

use std::fs;

use anyhow::Result;
use bytes::Bytes;
use common::{ChunkCluster, random_bytes};
use meridian_proto::pb::chunk::{
    DeleteRequest, GetRequest, HasRequest, ListUnderReplicatedRequest, NodeStatusRequest,
    PutHeader, PutRole, StatRequest,
};
use meridian_proto::{BlockId, EncodedBlock, NodeId, placement, wire};
use tonic::Code;

const ZONES: [&str; 3] = ["zone-a", "zone-b", "zone-c"];

fn ids(bytes: &[u8]) -> Bytes {
    Bytes::copy_from_slice(bytes)
}

async fn node_status(
    cluster: &ChunkCluster,
    i: usize,
) -> Result<meridian_proto::pb::chunk::NodeStatusResponse> {
    Ok(cluster
        .rpc(i)
        .await?
        .node_status(NodeStatusRequest {})
        .await?
        .into_inner())
}

async fn has(cluster: &ChunkCluster, i: usize, id: &BlockId) -> Result<bool> {
    let resp = cluster
        .rpc(i)
        .await?
        .has(HasRequest {
            block_ids: vec![ids(id.as_bytes())],
            include_condemned: false,
        })
        .await?
        .into_inner();
    Ok(resp.present[0])
}

/// The error a Get ends with, whether the call or its stream reports it.
async fn get_error(
    rpc: &mut meridian_proto::pb::chunk::chunk_service_client::ChunkServiceClient<
        tonic::transport::Channel,
    >,
    req: GetRequest,
) -> tonic::Status {
    match rpc.get(req).await {
        Ok(resp) => wire::read_get(&mut resp.into_inner(), 1 << 26)
            .await
            .expect_err("the get should fail"),
        Err(e) => e,
    }
}

/// Files in a node's temp folder (should be none once a put has finished).
fn temp_files(cluster: &ChunkCluster, i: usize) -> usize {
    fs::read_dir(cluster.nodes[i].data.join("tmp"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_with_three_replicas_lands_verified_copies_on_all_three() -> Result<()> {
    let cluster = ChunkCluster::start(&ZONES)?;
    let client = cluster.client();

    // A full 4 MiB block of noise (stored raw) and a compressible one (stored lz4).
    let noise = random_bytes(1, 4 << 20);
    let mut text = Vec::new();
    while text.len() < 3 << 20 {
        text.extend_from_slice(b"the quick brown fox jumps over the lazy dog; ");
    }
    for data in [noise, text] {
        let block = EncodedBlock::encode(&data)?;
        let receipt = client.put(&block, 3, 2).await?;
        assert!(!receipt.degraded);
        let mut on: Vec<_> = receipt.stored_on.clone();
        on.sort();
        assert_eq!(on, vec![NodeId(1), NodeId(2), NodeId(3)]);
        assert_eq!(
            receipt.stored_on[0],
            placement(&block.id, &cluster.map, 1)[0],
            "the first placement coordinates the put"
        );

        for (i, node) in cluster.map.nodes.iter().enumerate() {
            assert!(has(&cluster, i, &block.id).await?);
            // Each copy, read from that node alone and verified here, is the original.
            let got = client
                .get_from(node, &block.id)
                .await
                .map_err(anyhow::Error::msg)?;
            assert_eq!(
                blake3::hash(&got),
                blake3::hash(&data),
                "copy on {}",
                node.id
            );
            let st = cluster
                .rpc(i)
                .await?
                .stat(StatRequest {
                    block_id: ids(block.id.as_bytes()),
                })
                .await?;
            let st = st.into_inner();
            assert!(st.present);
            assert_eq!(st.raw_len as usize, data.len());
            assert_eq!(st.compression, block.compression.code());
            // A large stored form is a file where the layout says, a small one (the
            // compressed text) is packed; no temp file is left behind.
            let hex = block.id.to_hex();
            let file = common::block_file(&cluster.nodes[i].data, &hex);
            if st.stored_len > meridian_chunkserver::packs::MAX_PACKED {
                assert_eq!(fs::metadata(&file)?.len(), st.stored_len);
            } else {
                assert!(!file.exists());
                assert!(common::packed_blocks(&cluster.nodes[i].data).contains(&hex));
            }
            assert_eq!(temp_files(&cluster, i), 0);
        }

        // A second put of the same bytes stores nothing new.
        let again = client.put(&block, 3, 2).await?;
        assert!(again.already_present);
    }

    // Ranged reads return exactly the asked plaintext; a range past the end is refused.
    let data = random_bytes(2, 1 << 20);
    let block = EncodedBlock::encode(&data)?;
    client.put(&block, 3, 2).await?;
    let mut rpc = cluster.rpc(1).await?;
    let req = GetRequest {
        block_id: ids(block.id.as_bytes()),
        offset: 1000,
        length: 5000,
        encoded: false,
        ..Default::default()
    };
    let (header, payload) = wire::read_get(&mut rpc.get(req).await?.into_inner(), 1 << 26).await?;
    assert_eq!((header.offset, header.payload_len), (1000, 5000));
    assert_eq!(&payload[..], &data[1000..6000]);
    let past = GetRequest {
        block_id: ids(block.id.as_bytes()),
        offset: (1 << 20) - 10,
        length: 11,
        encoded: false,
        ..Default::default()
    };
    let err = get_error(&mut rpc, past).await;
    assert_eq!(err.code(), Code::OutOfRange);

    for i in 0..3 {
        let s = node_status(&cluster, i).await?;
        assert_eq!(s.block_count, 3, "node {} block count", s.node_id);
        assert!(s.used_bytes > 0 && s.free_bytes > 0 && s.capacity_bytes == 8 << 30);
        assert_eq!(s.under_replicated, 0);
    }

    // Delete removes one node's copy only, and says whether there was one.
    let used_before = node_status(&cluster, 1).await?.used_bytes;
    let del = DeleteRequest {
        block_id: ids(block.id.as_bytes()),
    };
    assert!(rpc.delete(del.clone()).await?.into_inner().existed);
    assert!(!rpc.delete(del).await?.into_inner().existed);
    assert!(!has(&cluster, 1, &block.id).await?);
    let after = node_status(&cluster, 1).await?;
    assert_eq!(after.block_count, 2);
    assert!(after.used_bytes < used_before);
    assert!(has(&cluster, 0, &block.id).await? && has(&cluster, 2, &block.id).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_skip_a_killed_chunkserver_for_the_next_placement() -> Result<()> {
    let mut cluster = ChunkCluster::start(&ZONES)?;
    let client = cluster.client();
    cluster.nodes[1].kill();
    let dead = NodeId(cluster.nodes[1].id);

    // R=2: every put still gets two full copies, on live nodes; blocks whose home placement
    // included the dead node land on the next placement in the list.
    let mut rerouted = 0;
    for seed in 0..24 {
        let data = random_bytes(100 + seed, 64 << 10);
        let block = EncodedBlock::encode(&data)?;
        let receipt = client.put(&block, 2, 2).await?;
        assert!(!receipt.degraded, "R=2 with two live nodes is not degraded");
        assert_eq!(receipt.stored_on.len(), 2);
        assert!(!receipt.stored_on.contains(&dead));
        let home = placement(&block.id, &cluster.map, 2);
        if home.contains(&dead) {
            let next = placement(&block.id, &cluster.map, 3)[2];
            assert!(
                receipt.stored_on.contains(&next),
                "block went to the next placement"
            );
            rerouted += 1;
        }
        assert_eq!(client.get(&block.id, 2).await?, data);
    }
    assert!(
        rerouted > 0,
        "some blocks had the dead node in their home placement"
    );

    // R=3 with one node dead: degraded but durable on the two live nodes, and recorded.
    let data = random_bytes(7, 256 << 10);
    let block = EncodedBlock::encode(&data)?;
    let receipt = client.put(&block, 3, 2).await?;
    assert!(receipt.degraded);
    assert_eq!(receipt.stored_on.len(), 2);
    let coordinator = cluster.index_of(receipt.stored_on[0]);
    let listed = cluster
        .rpc(coordinator)
        .await?
        .list_under_replicated(ListUnderReplicatedRequest { limit: 0 })
        .await?
        .into_inner()
        .blocks;
    let entry = listed
        .iter()
        .find(|b| b.block_id.as_ref() == block.id.as_bytes())
        .expect("degraded block recorded for repair");
    assert_eq!((entry.copies, entry.wanted), (2, 3));
    assert_eq!(
        node_status(&cluster, coordinator).await?.under_replicated,
        1
    );

    // With two of three dead, W=2 cannot be met: a clear error, never a silent success.
    let survivor = 3 - 1 - coordinator;
    let (kill, keep) = if survivor == 1 {
        (coordinator, 2 - coordinator)
    } else {
        (survivor, coordinator)
    };
    cluster.nodes[kill].kill();
    assert!(cluster.nodes[keep].is_running());
    let lonely = EncodedBlock::encode(&random_bytes(8, 1000))?;
    let err = client.put(&lonely, 3, 2).await.unwrap_err().to_string();
    assert!(
        err.contains("only 1 of the required 2 copies"),
        "unexpected error: {err}"
    );
    // W=1 is an explicit choice to accept a single copy.
    let single = client.put(&lonely, 3, 1).await?;
    assert!(single.degraded);
    assert_eq!(single.stored_on, vec![NodeId(cluster.nodes[keep].id)]);
    Ok(())
}

/// Sends a raw put (header + payload) to node `i`.
async fn raw_put(
    cluster: &ChunkCluster,
    i: usize,
    header: PutHeader,
    payload: Vec<u8>,
) -> std::result::Result<(), tonic::Status> {
    use meridian_proto::pb::chunk::{PutRequest, put_request};
    let mut msgs = vec![PutRequest {
        msg: Some(put_request::Msg::Header(header)),
    }];
    if !payload.is_empty() {
        msgs.push(PutRequest {
            msg: Some(put_request::Msg::Data(Bytes::from(payload))),
        });
    }
    let mut rpc = cluster
        .rpc(i)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    rpc.put(tokio_stream::iter(msgs)).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_mismatched_and_malformed_puts_are_rejected_and_change_nothing() -> Result<()> {
    let cluster = ChunkCluster::start(&ZONES)?;
    let data = random_bytes(3, 100_000);
    let claimed = BlockId::of(b"something else entirely");
    // A small block is verified on the request's task, a larger one on the blocking pool.
    for (role, data) in [PutRole::Coordinator, PutRole::Replica]
        .into_iter()
        .flat_map(|role| [(role, random_bytes(4, 10_000)), (role, data.clone())])
    {
        let header = PutHeader {
            block_id: ids(claimed.as_bytes()),
            compression: 0,
            raw_len: data.len() as u32,
            encoded_len: data.len() as u32,
            role: role as i32,
            replicas: 3,
            min_copies: 2,
            map_epoch: 1,
            ..Default::default()
        };
        let err = raw_put(&cluster, 0, header, data).await.unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{role:?}: {}",
            err.message()
        );
        assert!(err.message().contains("hashes to"), "{}", err.message());
    }

    // Data residency: a block of a volume that lives only in region 2 is refused here
    // (region 1), by coordinators and replicas alike, and nothing is stored.
    let real = BlockId::of(&data);
    for role in [PutRole::Coordinator, PutRole::Replica] {
        let header = PutHeader {
            block_id: ids(real.as_bytes()),
            raw_len: data.len() as u32,
            encoded_len: data.len() as u32,
            role: role as i32,
            replicas: 3,
            min_copies: 2,
            regions: vec![2],
            ..Default::default()
        };
        let err = raw_put(&cluster, 0, header, data.clone())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
        assert!(err.message().contains("residency"), "{}", err.message());
    }
    let good = |raw_len: u32, encoded_len: u32| PutHeader {
        block_id: ids(real.as_bytes()),
        compression: 0,
        raw_len,
        encoded_len,
        role: PutRole::Coordinator as i32,
        replicas: 3,
        min_copies: 2,
        map_epoch: 1,
        ..Default::default()
    };
    let n = data.len() as u32;
    // Fewer bytes than announced, more bytes than announced, an oversized block, a bad
    // compression code, W > R: each refused before anything is stored.
    let cases: Vec<(PutHeader, Vec<u8>)> = vec![
        (good(n + 10, n + 10), data.clone()),
        (good(n - 10, n - 10), data.clone()),
        (good(100 << 20, 100 << 20), Vec::new()),
        (
            PutHeader {
                compression: 9,
                ..good(n, n)
            },
            data.clone(),
        ),
        (
            PutHeader {
                min_copies: 4,
                ..good(n, n)
            },
            data.clone(),
        ),
        (
            PutHeader {
                block_id: ids(&[1, 2, 3]),
                ..good(n, n)
            },
            data.clone(),
        ),
    ];
    for (header, payload) in cases {
        let err = raw_put(&cluster, 0, header.clone(), payload)
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{header:?}: {}",
            err.message()
        );
    }

    for i in 0..3 {
        assert!(!has(&cluster, i, &claimed).await?);
        assert!(!has(&cluster, i, &real).await?);
        assert_eq!(node_status(&cluster, i).await?.block_count, 0);
        assert_eq!(temp_files(&cluster, i), 0);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_copy_fails_its_reads_while_another_replica_serves() -> Result<()> {
    let cluster = ChunkCluster::start(&ZONES)?;
    let client = cluster.client();
    let data = random_bytes(4, 2 << 20);
    let block = EncodedBlock::encode(&data)?;
    client.put(&block, 3, 2).await?;

    // Damage the copy a reader tries first.
    let first = client.read_order(&block.id, 3)[0].clone();
    let i = cluster.index_of(first.id);
    let hex = block.id.to_hex();
    let file = common::block_file(&cluster.nodes[i].data, &hex);
    let mut bytes = fs::read(&file)?;
    let at = bytes.len() - 1000;
    bytes[at] ^= 0x01;
    fs::write(&file, &bytes)?;

    // That node refuses to serve it, even in part.
    let mut rpc = cluster.rpc(i).await?;
    let req = GetRequest {
        block_id: ids(block.id.as_bytes()),
        offset: 0,
        length: 10,
        encoded: false,
        ..Default::default()
    };
    let status = get_error(&mut rpc, req).await;
    assert_eq!(status.code(), Code::DataLoss);

    // It moves the bad copy aside and fetches a good one; it never serves wrong bytes.
    let quarantine = cluster.nodes[i].data.join("quarantine");
    let mut restored = false;
    for _ in 0..200 {
        match client.get_from(&first, &block.id).await {
            Ok(got) => {
                assert_eq!(blake3::hash(&got), blake3::hash(&data));
                restored = true;
                break;
            }
            Err(e) => assert!(e.contains("corrupt") || e.contains("not stored"), "{e}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(restored, "the node restored a good copy");
    assert_eq!(
        fs::read_dir(&quarantine)?.count(),
        1,
        "the bad copy is kept aside"
    );

    // A reader falls back to another replica and gets the right bytes.
    let got = client.get(&block.id, 3).await?;
    assert_eq!(blake3::hash(&got), blake3::hash(&data));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_a_restart_keeps_every_block() -> Result<()> {
    let mut cluster = ChunkCluster::start(&ZONES)?;
    let client = cluster.client();
    let mut blocks = Vec::new();
    for seed in 0..5 {
        let data = random_bytes(200 + seed, 300_000);
        let block = EncodedBlock::encode(&data)?;
        client.put(&block, 3, 2).await?;
        blocks.push((block.id, data));
    }
    let before = node_status(&cluster, 0).await?;
    assert_eq!(before.block_count, 5);

    let status = cluster.nodes[0].terminate()?;
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    // A write that was cut off mid-way leaves a temp file; start-up removes it.
    fs::write(
        cluster.nodes[0].data.join("tmp").join("interrupted.tmp"),
        b"half a block",
    )?;
    cluster.restart(0)?;

    let after = node_status(&cluster, 0).await?;
    assert_eq!(after.block_count, 5);
    assert_eq!(after.used_bytes, before.used_bytes);
    assert_eq!(temp_files(&cluster, 0), 0);
    let node = cluster
        .map
        .node(NodeId(cluster.nodes[0].id))
        .unwrap()
        .clone();
    for (id, data) in &blocks {
        assert_eq!(
            &client
                .get_from(&node, id)
                .await
                .map_err(anyhow::Error::msg)?[..],
            &data[..]
        );
    }
    Ok(())
}

#[test]
fn admin_chunk_status_reports_every_node_as_json() -> Result<()> {
    let cluster = ChunkCluster::start(&ZONES)?;
    let out = std::process::Command::new(common::MERIDIAN)
        .args(["admin", "chunk-status", "--json"])
        .args(cluster.nodes.iter().map(|n| n.addr.clone()))
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let rows = rows.as_array().expect("a JSON array");
    assert_eq!(rows.len(), 3);
    for (row, node) in rows.iter().zip(&cluster.nodes) {
        assert_eq!(row["node"], node.id);
        assert_eq!(row["zone"], node.zone.as_str());
        assert_eq!(row["map_epoch"], 1);
    }
    // An unreachable node is reported, and the command fails.
    let out = std::process::Command::new(common::MERIDIAN)
        .args(["admin", "chunk-status", "127.0.0.1:1"])
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("unreachable"));
    Ok(())
}

/// Sends `frame` to the range port at `port` and reads everything it answers until it
/// closes the connection.
fn ask_port(port: &str, frame: &[u8]) -> Result<Vec<u8>> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(port)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    s.write_all(frame)?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

/// Range reads through the chunkservers' range ports: only a thread that may wait on one
/// (a kernel request thread) uses it, and what it returns is verified like a gRPC read. A
/// copy that fails its hash is never returned: the read goes on through gRPC to a good
/// one. The port refuses blocks of regions it does not serve and closes connections that
/// send anything but its frames, and serves on after both.
#[test]
fn range_ports_serve_verified_reads_to_threads_that_may_wait_and_refuse_bad_input() -> Result<()> {
    use meridian_client::blocks::{BlockClient, blocking_reads};
    use meridian_proto::range_wire::{RangeReply, RangeRequest};

    let region = common::Region::start()?;
    let map = common::cluster_map(&region.meta_addrs()).expect("cluster map");
    assert!(
        map.nodes.iter().all(|n| !n.range_address.is_empty()),
        "every chunkserver announces its range port: {map:?}"
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let client = BlockClient::with_map(map.clone(), None);
    let data = random_bytes(11, 1 << 20);
    let block = EncodedBlock::encode(&data)?;
    rt.block_on(client.put(&block, 3, 3))?;
    let read = |offset: u64, len: u64| rt.block_on(client.get_range(&block.id, 3, offset, len));

    // A runtime task reads ranges through gRPC.
    assert_eq!(read(100_000, 4096)?, data[100_000..104_096]);
    assert_eq!(client.range_port_reads(), 0);
    // A whole block comes through the port from any task, verified.
    assert_eq!(rt.block_on(client.get(&block.id, 3))?, data);
    assert_eq!(client.range_port_reads(), 1);
    // A thread that may wait reads through the port: first with the outboard sent along,
    // then (known) without.
    let other = BlockClient::with_map(map.clone(), None);
    let got = blocking_reads(|| rt.block_on(other.get_range(&block.id, 3, 200_000, 5000)))?;
    assert_eq!(got, data[200_000..205_000]);
    let got = blocking_reads(|| rt.block_on(other.get_range(&block.id, 3, 0, 1)))?;
    assert_eq!(got, data[..1]);
    assert_eq!(other.range_port_reads(), 2);
    // A small block whole (a small file's), when the caller's length is all of it.
    let small = random_bytes(12, 20_000);
    let small_block = EncodedBlock::encode(&small)?;
    rt.block_on(client.put(&small_block, 3, 3))?;
    assert_eq!(
        other.get_small(&small_block.id, 3, 20_000),
        None,
        "not here"
    );
    let whole = blocking_reads(|| other.get_small(&small_block.id, 3, 20_000));
    assert_eq!(whole.as_deref(), Some(&small[..]));
    let part = blocking_reads(|| other.get_small(&small_block.id, 3, 10_000));
    assert_eq!(part, None, "longer than the caller thought: not whole");
    assert_eq!(other.range_port_reads(), 4);

    // Damage the copy read first: the port never returns it, and the read is still right.
    let first = other.read_order(&block.id, 3)[0].clone();
    let node = &region.chunks[(first.id.0 - 1) as usize];
    let file = common::block_file(&node.data, &block.id.to_hex());
    let mut bytes = fs::read(&file)?;
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle - 64..middle + 64] {
        *b ^= 0x5a;
    }
    fs::write(&file, &bytes)?;
    let got = blocking_reads(|| rt.block_on(other.get_range(&block.id, 3, 400_000, 250_000)))?;
    assert_eq!(got, data[400_000..650_000]);
    assert_eq!(
        other.range_port_reads(),
        4,
        "the damaged copy was not taken"
    );
    // Nor whole (the copy may be repaired meanwhile: what matters is the bytes).
    let fresh = BlockClient::with_map(map.clone(), None);
    assert_eq!(rt.block_on(fresh.get(&block.id, 3))?, data, "a whole block");

    // Hostile input, straight to a port.
    let port = map.nodes[0].range_address.clone();
    let ask = |frame: &[u8]| ask_port(&port, frame);
    assert!(
        ask(b"GET / HTTP/1.1\r\n\r\n")?.is_empty(),
        "not a frame: closed"
    );
    let mut huge = 0x3152_524du32.to_le_bytes().to_vec();
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(ask(&huge)?.is_empty(), "a body too large: closed");
    let request = |regions: Vec<u32>, block: BlockId| RangeRequest {
        block,
        offset: 0,
        length: 10,
        outboard_known: false,
        volume: 0,
        regions,
    };
    let reply = |r: RangeRequest| -> Result<RangeReply> {
        let out = ask(&r.encode()?)?;
        Ok(RangeReply::read(&mut &out[..], 1 << 23)?)
    };
    assert!(
        matches!(reply(request(vec![7], block.id))?, RangeReply::Refused(m) if m.contains("regions")),
        "a block of a volume living in another region"
    );
    assert!(matches!(
        reply(request(vec![], BlockId::of(b"never stored")))?,
        RangeReply::Missing(_)
    ));
    let long = RangeRequest {
        length: meridian_proto::range_wire::MAX_RANGE + 1,
        ..request(vec![], block.id)
    };
    assert!(matches!(reply(long)?, RangeReply::Refused(m) if m.contains("at most")));
    // Connections beyond the port's limit are answered busy, and it serves on after.
    let idle: Vec<std::net::TcpStream> = (0..meridian_chunkserver::range_port::MAX_CONNECTIONS)
        .map(|_| std::net::TcpStream::connect(&port))
        .collect::<Result<_, _>>()?;
    let busy = common::wait_for(std::time::Duration::from_secs(30), "a busy answer", || {
        reply(request(vec![], block.id))
            .ok()
            .filter(|r| *r == RangeReply::Busy)
    })?;
    assert_eq!(busy, RangeReply::Busy);
    drop(idle);
    let served = common::wait_for(std::time::Duration::from_secs(30), "a place again", || {
        reply(request(vec![], block.id))
            .ok()
            .filter(|r| *r != RangeReply::Busy)
    })?;
    match served {
        RangeReply::Found { plain, offset, .. } => {
            assert_eq!(offset, 0);
            assert_eq!(&plain[..10], &data[..10]);
        }
        other if first.id == map.nodes[0].id => {
            assert!(matches!(other, RangeReply::Missing(_)), "{other:?}")
        }
        other => panic!("a good copy: {other:?}"),
    }
    Ok(())
}

/// A region, its cluster map, a runtime for a block client's calls, and the client.
fn port_rig() -> Result<(
    common::Region,
    meridian_proto::ClusterMap,
    tokio::runtime::Runtime,
    meridian_client::blocks::BlockClient,
)> {
    let region = common::Region::start()?;
    let map = common::cluster_map(&region.meta_addrs()).expect("cluster map");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let client = meridian_client::blocks::BlockClient::with_map(map.clone(), None);
    Ok((region, map, rt, client))
}

/// Blocks put through the chunkservers' range ports (the put port), small ones and a
/// whole 4 MiB block: the block is durable on its placements and reads back right. The
/// port refuses what it may not store (bytes that do not match their id, shipments, bad
/// copy counts) with nothing written, closes a connection announcing too large a put,
/// and serves on after. A replica that cannot be reached makes the coordinator forward
/// through gRPC (here: degraded to the copies it could make).
#[test]
fn puts_go_through_the_put_port_checked_as_through_grpc() -> Result<()> {
    use meridian_client::blocks::BlockClient;
    use meridian_proto::put_wire::{MAGIC, MAX_PUT, PutFrame, PutReply};
    use prost::Message;

    let (mut region, map, rt, client) = port_rig()?;
    let holders = |id: &BlockId| -> Result<usize> {
        let mut n = 0;
        for node in &map.nodes {
            if rt.block_on(client.has(node, &[*id])).unwrap_or_default() == [true] {
                n += 1;
            }
        }
        Ok(n)
    };

    let small = random_bytes(31, 16 << 10);
    let block = EncodedBlock::encode(&small)?;
    let receipt = rt.block_on(client.put(&block, 3, 3))?;
    assert_eq!(client.put_port_puts(), 1, "through the port");
    assert_eq!(receipt.stored_on.len(), 3);
    assert!(!receipt.degraded && !receipt.already_present);
    assert_eq!(holders(&block.id)?, 3);
    let fresh = BlockClient::with_map(map.clone(), None);
    assert_eq!(rt.block_on(fresh.get(&block.id, 3))?, small);
    // Again: already there.
    let again = rt.block_on(client.put(&block, 3, 3))?;
    assert!(again.already_present);
    assert_eq!(client.put_port_puts(), 2);
    // A whole 4 MiB block (a sequential write's) goes through the port as well, sent as
    // it is held, and is stored on every placement.
    let large = random_bytes(32, 4 << 20);
    let large_block = EncodedBlock::encode(&large)?;
    assert!(large_block.payload.len() > meridian_proto::put_wire::COPIED_PAYLOAD);
    assert_eq!(
        rt.block_on(client.put(&large_block, 3, 3))?.stored_on.len(),
        3
    );
    assert_eq!(client.put_port_puts(), 3, "through the port");
    assert_eq!(holders(&large_block.id)?, 3);
    assert_eq!(rt.block_on(fresh.get(&large_block.id, 3))?, large);

    // Hostile input, straight to a port.
    let port = map.nodes[0].range_address.clone();
    let ask = |frame: &[u8]| ask_port(&port, frame);
    let frame = |bytes: &[u8], f: &dyn Fn(&mut PutHeader)| -> PutFrame {
        let b = EncodedBlock::encode(bytes).expect("encodes");
        let mut header = PutHeader {
            block_id: ids(b.id.as_bytes()),
            compression: b.compression.code(),
            raw_len: b.raw_len,
            encoded_len: b.payload.len() as u32,
            role: PutRole::Coordinator as i32,
            replicas: 3,
            min_copies: 2,
            ..Default::default()
        };
        f(&mut header);
        PutFrame {
            header,
            payload: b.payload,
        }
    };
    let reply = |f: PutFrame| -> Result<PutReply> {
        let out = ask(&f.encode()?)?;
        Ok(PutReply::read(&mut &out[..])?)
    };
    let forged = random_bytes(33, 5000);
    let claimed = BlockId::of(b"something else");
    for (what, f) in [
        (
            "bytes that do not match their id",
            frame(&forged, &|h| h.block_id = ids(claimed.as_bytes())),
        ),
        (
            "a replica's copy that does not match its id",
            frame(&forged, &|h| {
                h.block_id = ids(claimed.as_bytes());
                h.role = PutRole::Replica as i32;
            }),
        ),
        (
            "a shipment from another region",
            frame(&forged, &|h| h.origin_region = 9),
        ),
        ("too many copies", frame(&forged, &|h| h.replicas = 17)),
        ("an unknown role", frame(&forged, &|h| h.role = 7)),
    ] {
        match reply(f)? {
            PutReply::Refused(m) => assert!(!m.is_empty(), "{what}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    assert_eq!(holders(&claimed)?, 0, "nothing stored under a forged id");
    assert_eq!(
        holders(&BlockId::of(&forged))?,
        0,
        "nothing stored from the refused puts"
    );
    // A put announcing more than the port takes: closed before its bytes are read.
    let header = PutHeader {
        encoded_len: MAX_PUT + 1,
        raw_len: MAX_PUT + 1,
        ..frame(&forged, &|_| {}).header
    };
    let mut big = MAGIC.to_le_bytes().to_vec();
    big.extend_from_slice(&(header.encoded_len() as u32).to_le_bytes());
    header.encode(&mut big)?;
    assert!(ask(&big)?.is_empty(), "too large: closed");
    // The port serves on.
    match reply(frame(&forged, &|_| {}))? {
        PutReply::Stored(r) => assert_eq!(r.stored_on.len(), 3),
        other => panic!("a good put: {other:?}"),
    }
    assert_eq!(holders(&BlockId::of(&forged))?, 3);

    // One of a block's replicas down: the coordinator forwards through gRPC, and the put
    // is stored degraded on the two copies it could make (W = 2).
    let next = random_bytes(34, 12_000);
    let next_block = EncodedBlock::encode(&next)?;
    let order = placement(&next_block.id, &map, 3);
    let down = region
        .chunks
        .iter()
        .position(|c| c.id == order[1].0)
        .expect("a placement");
    region.chunks[down].kill();
    let receipt = rt.block_on(client.put(&next_block, 3, 2))?;
    assert_eq!(client.put_port_puts(), 4, "through the port");
    assert!(receipt.degraded, "{receipt:?}");
    assert_eq!(receipt.stored_on.len(), 2);
    assert!(!receipt.stored_on.contains(&order[1]));
    assert_eq!(rt.block_on(fresh.get(&next_block.id, 3))?, next);
    Ok(())
}

/// Blocks gathered by a mount go to their first placement together, as one batch on its
/// put port: each is checked as alone, stored on every placement and answered in order;
/// a forged one among them is refused with nothing stored under it while the others are
/// stored; a batch announcing no puts or too many is closed before anything is read; and
/// with a replica down the coordinator forwards the batch's blocks through gRPC, degraded.
#[test]
fn a_batch_of_puts_is_stored_on_every_placement_and_answered_in_order() -> Result<()> {
    use meridian_client::blocks::BlockClient;
    use meridian_proto::put_wire::{BATCH_MAGIC, BATCH_MAX, PutFrame, PutReply, batch_head};

    let (mut region, map, rt, client) = port_rig()?;
    let fresh = BlockClient::with_map(map.clone(), None);
    let holders = |id: &BlockId| -> usize {
        map.nodes
            .iter()
            .filter(|n| rt.block_on(client.has(n, &[*id])).unwrap_or_default() == [true])
            .count()
    };
    let datas: Vec<Vec<u8>> = (0..24)
        .map(|i| random_bytes(200 + i, 4096 + 37 * i as usize))
        .collect();
    let blocks: Vec<EncodedBlock> = datas
        .iter()
        .map(|d| EncodedBlock::encode(d))
        .collect::<std::result::Result<_, _>>()?;
    let receipts = rt.block_on(client.put_batched(&blocks, 3, 3));
    let first = |b: &EncodedBlock| placement(&b.id, &map, 1)[0];
    for (b, r) in blocks.iter().zip(&receipts) {
        let shared = blocks.iter().filter(|o| first(o) == first(b)).count() > 1;
        match r {
            Some(r) => {
                assert!(shared, "a block alone at its node is not batched");
                assert_eq!(r.id, b.id, "answered in order");
                assert_eq!(r.stored_on.len(), 3);
                assert_eq!(r.stored_on[0], first(b), "its first placement coordinated");
                assert!(!r.degraded && !r.already_present);
                assert_eq!(holders(&b.id), 3);
            }
            None => assert!(!shared, "a batched block not stored: {:?}", b.id),
        }
    }
    let batched = receipts.iter().filter(|r| r.is_some()).count();
    assert!(
        batched >= 20,
        "most of 24 blocks share a node of three: {batched}"
    );
    assert_eq!(client.put_port_puts(), batched as u64);
    for (b, d) in blocks
        .iter()
        .zip(&datas)
        .filter(|(b, _)| holders(&b.id) == 3)
    {
        assert_eq!(&rt.block_on(fresh.get(&b.id, 3))?, d);
    }
    // Again: already there, each.
    let again = rt.block_on(client.put_batched(&blocks, 3, 3));
    assert!(again.iter().flatten().all(|r| r.already_present));

    // Straight to a port: a forged block between two good ones.
    let port = map.nodes[0].range_address.clone();
    let frame = |bytes: &[u8], id: Option<BlockId>| -> Result<Vec<u8>> {
        let b = EncodedBlock::encode(bytes)?;
        let header = PutHeader {
            block_id: ids(id.unwrap_or(b.id).as_bytes()),
            compression: b.compression.code(),
            raw_len: b.raw_len,
            encoded_len: b.payload.len() as u32,
            role: PutRole::Coordinator as i32,
            replicas: 3,
            min_copies: 3,
            ..Default::default()
        };
        Ok(PutFrame {
            header,
            payload: b.payload,
        }
        .encode()?)
    };
    let (good1, forged, good2) = (
        random_bytes(301, 5000),
        random_bytes(302, 6000),
        random_bytes(303, 7000),
    );
    let claimed = BlockId::of(b"not these bytes");
    let mut batch = batch_head(3)?.to_vec();
    batch.extend(frame(&good1, None)?);
    batch.extend(frame(&forged, Some(claimed))?);
    batch.extend(frame(&good2, None)?);
    let out = ask_port(&port, &batch)?;
    let mut r = &out[..];
    let replies: Vec<PutReply> = (0..3)
        .map(|_| PutReply::read(&mut r))
        .collect::<std::io::Result<_>>()?;
    assert!(r.is_empty(), "one reply per put");
    assert!(
        matches!(&replies[0], PutReply::Stored(s) if s.stored_on.len() == 3),
        "{:?}",
        replies[0]
    );
    assert!(
        matches!(&replies[1], PutReply::Refused(m) if !m.is_empty()),
        "{:?}",
        replies[1]
    );
    assert!(
        matches!(&replies[2], PutReply::Stored(s) if s.stored_on.len() == 3),
        "{:?}",
        replies[2]
    );
    assert_eq!(holders(&BlockId::of(&good1)), 3);
    assert_eq!(holders(&BlockId::of(&good2)), 3);
    assert_eq!(holders(&claimed), 0, "nothing stored under a forged id");
    assert_eq!(holders(&BlockId::of(&forged)), 0, "nor under its own");
    // Batches announcing no puts, or more than a batch holds: closed, nothing answered.
    for count in [0u32, BATCH_MAX as u32 + 1] {
        let mut head = BATCH_MAGIC.to_le_bytes().to_vec();
        head.extend_from_slice(&count.to_le_bytes());
        head.extend(frame(&random_bytes(304, 3000), None)?);
        assert!(ask_port(&port, &head)?.is_empty(), "{count} puts: closed");
    }
    assert_eq!(holders(&BlockId::of(&random_bytes(304, 3000))), 0);

    // A replica down: the coordinator forwards the batch's blocks through gRPC, and they
    // are stored degraded on the two copies it could make (W = 2).
    let datas: Vec<Vec<u8>> = (0..12)
        .map(|i| random_bytes(400 + i, 3000 + i as usize))
        .collect();
    let blocks: Vec<EncodedBlock> = datas
        .iter()
        .map(|d| EncodedBlock::encode(d))
        .collect::<std::result::Result<_, _>>()?;
    let down_id = map.nodes[2].id;
    let down = region
        .chunks
        .iter()
        .position(|c| c.id == down_id.0)
        .expect("a chunkserver");
    region.chunks[down].kill();
    let receipts = rt.block_on(client.put_batched(&blocks, 3, 2));
    let mut seen = 0;
    for ((b, d), r) in blocks.iter().zip(&datas).zip(&receipts) {
        let Some(r) = r else { continue };
        seen += 1;
        assert_ne!(
            r.stored_on[0], down_id,
            "a coordinator that is down answers nothing"
        );
        assert!(r.degraded, "{r:?}");
        assert_eq!(r.stored_on.len(), 2);
        assert!(!r.stored_on.contains(&down_id));
        assert_eq!(&rt.block_on(fresh.get(&b.id, 3))?, d);
    }
    assert!(
        seen > 0,
        "some of twelve blocks batched on the two live nodes"
    );
    Ok(())
}

/// Chunkservers started with `--put-port false` answer a put on their port "closed": the
/// client puts through gRPC, then and afterwards, and every block is stored.
#[test]
fn a_port_closed_to_puts_sends_them_through_grpc() -> Result<()> {
    use meridian_client::blocks::BlockClient;

    let meta = common::MetaCluster::start(3, &[])?;
    let chunks = common::start_chunkservers_with(
        &meta,
        300,
        8 << 30,
        &["--put-port".to_string(), "false".to_string()],
    )?;
    let addrs = meta.addrs().join(",");
    let map = common::wait_for(
        std::time::Duration::from_secs(30),
        "three chunkservers with range ports in the map",
        || {
            common::cluster_map(&addrs).filter(|m| {
                m.nodes.len() == 3 && m.nodes.iter().all(|n| !n.range_address.is_empty())
            })
        },
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let client = BlockClient::with_map(map.clone(), None);
    for seed in 0..3 {
        let data = random_bytes(40 + seed, 16 << 10);
        let block = EncodedBlock::encode(&data)?;
        let receipt = rt.block_on(client.put(&block, 3, 3))?;
        assert_eq!(receipt.stored_on.len(), 3);
        assert_eq!(rt.block_on(client.get(&block.id, 3))?, data);
    }
    assert_eq!(client.put_port_puts(), 0, "no put through a closed port");
    drop(chunks);
    Ok(())
}
