//! Two regions as real processes (three metaservers and three chunkservers each, see
//! `common::pair`), with a fault proxy on every link between them (metadata and blocks),
//! and a FUSE mount on each side.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use common::pair::{Pair, Side};
use common::{MERIDIAN, Mount, ServerProc, block_files, wait_for};
use meridian_proto::BlockId;

fn wait_same(a: &Path, b: &Path, deadline: Duration) -> Result<BTreeMap<String, String>> {
    common::wait_same_tree(a, b, deadline, "both regions to show the same tree")
}

#[test]
fn two_regions_replicate_keep_serving_when_cut_and_converge() -> Result<()> {
    let mut pair = Pair::start()?;
    pair.a
        .admin(&["volume-create", "shared", "--regions", "1,2"])?;
    wait_for(
        Duration::from_secs(30),
        "the volume to reach region 2",
        || {
            pair.b
                .admin(&["volumes"])
                .ok()?
                .contains("shared")
                .then_some(())
        },
    )?;
    let ma = pair.a.mount("shared", "mnt-a")?;
    let mb = pair.b.mount("shared", "mnt-b")?;

    // A file written in one region appears, with its content, in the other.
    let hello = common::random_bytes(1, 300_000);
    fs::write(ma.path.join("hello"), &hello)?;
    fs::write(mb.path.join("from-b"), b"written in region 2")?;
    fs::write(ma.path.join("doc"), b"version 0")?;
    fs::create_dir(ma.path.join("d1"))?;
    fs::create_dir(ma.path.join("d2"))?;
    wait_same(&ma.path, &mb.path, Duration::from_secs(60))?;
    assert_eq!(fs::read(mb.path.join("hello"))?, hello);

    // Cut: both sides keep reading and writing, the same names and files included.
    pair.cut(true)?;
    fs::write(ma.path.join("same"), b"created in region 1")?;
    fs::write(mb.path.join("same"), b"created in region 2")?;
    fs::write(ma.path.join("doc"), b"version A, written in region 1")?;
    fs::write(mb.path.join("doc"), b"version B, written in region 2")?;
    fs::rename(ma.path.join("d1"), ma.path.join("d2/d1"))?;
    fs::rename(mb.path.join("d2"), mb.path.join("d1/d2"))?;
    let big = common::random_bytes(2, 5 << 20);
    fs::write(mb.path.join("big"), &big)?;
    assert_eq!(fs::read(ma.path.join("hello"))?, hello);
    assert_eq!(fs::read(mb.path.join("big"))?, big);
    let status = pair.a.admin(&["regions", "--json"])?;
    let status: serde_json::Value = serde_json::from_str(&status)?;
    assert!(
        status["peers"][0]["ops_behind"].as_u64().unwrap_or(0) > 0,
        "a cut grows the lag: {status}"
    );
    let status: serde_json::Value = serde_json::from_str(&pair.b.admin(&["regions", "--json"])?)?;
    assert!(
        status["peers"][0]["blocks_queued"].as_u64().unwrap_or(0) > 0,
        "the cut holds back blocks too: {status}"
    );

    // Heal: the same tree on both sides, every version kept.
    pair.cut(false)?;
    let tree = wait_same(&ma.path, &mb.path, Duration::from_secs(90))?;
    let contents: Vec<Vec<u8>> = tree
        .keys()
        .filter(|k| !k.contains('/') && (k.starts_with("same") || k.starts_with("doc")))
        .map(|k| fs::read(ma.path.join(k)))
        .collect::<std::io::Result<_>>()?;
    for want in [
        &b"created in region 1"[..],
        b"created in region 2",
        b"version A, written in region 1",
        b"version B, written in region 2",
    ] {
        assert!(
            contents.iter().any(|c| c == want),
            "{:?} is lost; tree: {tree:#?}",
            String::from_utf8_lossy(want)
        );
    }
    // The crossing moves made no cycle: one folder holds the other.
    let nested = tree.contains_key("d1/d2") ^ tree.contains_key("d2/d1");
    assert!(nested, "{tree:#?}");
    assert_eq!(fs::read(ma.path.join("big"))?, big);
    let conflicts = pair.b.admin(&["conflicts"])?;
    assert!(
        conflicts.contains("create") && conflicts.contains("write"),
        "{conflicts}"
    );

    // A whole region dies: the other keeps serving.
    drop(ma);
    pair.a.kill();
    fs::write(mb.path.join("after-a-died"), b"still here")?;
    assert_eq!(fs::read(mb.path.join("after-a-died"))?, b"still here");
    assert_eq!(fs::read(mb.path.join("hello"))?, hello);
    drop(mb);
    Ok(())
}

#[test]
fn a_volume_pinned_to_one_region_never_leaves_it() -> Result<()> {
    let pair = Pair::start()?;
    pair.a
        .admin(&["volume-create", "pinned", "--regions", "1"])?;
    pair.a
        .admin(&["volume-create", "both", "--regions", "1,2"])?;
    wait_for(
        Duration::from_secs(30),
        "the shared volume to reach region 2",
        || {
            pair.b
                .admin(&["volumes"])
                .ok()?
                .contains("both")
                .then_some(())
        },
    )?;
    let pinned = pair.a.mount("pinned", "mnt-pinned")?;
    let mut written = Vec::new();
    for i in 0..8 {
        let data = common::random_bytes(100 + i, 1 << 20);
        written.push(BlockId::of(&data).to_hex());
        fs::write(pinned.path.join(format!("f{i}")), &data)?;
    }
    pair.cut(true)?;
    fs::write(pinned.path.join("during-cut"), b"still pinned")?;
    pair.cut(false)?;
    // Region 2 catches up with everything else, and has nothing of the pinned volume.
    let both = pair.a.mount("both", "mnt-both")?;
    fs::write(both.path.join("marker"), b"sync point")?;
    let other = pair.b.mount("both", "mnt-both-b")?;
    wait_for(Duration::from_secs(60), "the marker in region 2", || {
        (fs::read(other.path.join("marker")).ok()? == b"sync point").then_some(())
    })?;
    let volumes = pair.b.admin(&["volumes"])?;
    assert!(!volumes.contains("pinned"), "{volumes}");
    for c in &pair.b.chunks {
        let files = block_files(&c.data);
        for id in &written {
            assert!(
                !files.iter().any(|f| f.starts_with(id.as_str())),
                "block {id} of the pinned volume is in region 2 at {}",
                c.data.display()
            );
        }
    }
    // And no metadata of it: no record of it in region 2's conflicts or volumes, and a
    // direct lookup fails.
    let err = Command::new(MERIDIAN)
        .args([
            "mount",
            "--meta",
            &pair.b.addrs(),
            "--volume",
            "pinned",
            "/nonexistent-mnt",
        ])
        .output()?;
    assert!(!err.status.success());

    // Chunkservers go by their own region's knowledge of the volume, not by what a request
    // claims: region 2 refuses a "shipped" block and a remote fetch for the pinned volume
    // even when the request says it lives in both, and region 1 queues nothing for region
    // 2 when a put claims so.
    let vols: serde_json::Value = serde_json::from_str(&pair.a.admin(&["volumes", "--json"])?)?;
    let pinned_id = vols
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "pinned"))
        .and_then(|v| v["id"].as_u64())
        .context("the pinned volume's id")? as u32;
    let rt = tokio::runtime::Runtime::new()?;
    let claimed = common::random_bytes(77, 64 << 10);
    let block = meridian_proto::EncodedBlock::encode(&claimed)?;
    let header = |origin: u32, volume: u32| meridian_proto::pb::chunk::PutHeader {
        role: meridian_proto::pb::chunk::PutRole::Coordinator as i32,
        replicas: 3,
        min_copies: 1,
        regions: vec![1, 2],
        origin_region: origin,
        volume,
        ..Default::default()
    };
    let put_block = |addr: &str, block: &meridian_proto::EncodedBlock, h| {
        let msgs = meridian_proto::wire::put_messages(block, h);
        let addr = format!("http://{addr}");
        rt.block_on(async move {
            let mut c =
                meridian_proto::pb::chunk::chunk_service_client::ChunkServiceClient::connect(addr)
                    .await?;
            anyhow::Ok(c.put(tokio_stream::iter(msgs)).await)
        })
    };
    let put = |addr: &str, h| put_block(addr, &block, h);
    let b_chunk = pair.b.chunks[0].addr.clone();
    let shipped = put(&b_chunk, header(1, pinned_id))?.expect_err("region 2 took a pinned block");
    assert_eq!(
        shipped.code(),
        tonic::Code::FailedPrecondition,
        "{shipped:?}"
    );
    let unnamed = put(&b_chunk, header(0, 0))?.expect_err("a put naming regions but no volume");
    assert_eq!(unnamed.code(), tonic::Code::InvalidArgument, "{unnamed:?}");
    // A region that is not a peer is refused, for blocks and for records.
    let stranger = put(&b_chunk, header(9, 0))?.expect_err("a block from region 9");
    assert_eq!(
        stranger.code(),
        tonic::Code::PermissionDenied,
        "{stranger:?}"
    );
    let meta_addr = format!("http://{}", pair.a.meta.addrs()[0]);
    let pulled = rt.block_on(async move {
        let mut c =
            meridian_proto::pb::meta::meta_service_client::MetaServiceClient::connect(meta_addr)
                .await?;
        anyhow::Ok(
            c.pull_changes(meridian_proto::pb::meta::PullChangesRequest {
                region: 9,
                from: 1,
                limit: 10,
                wait_ms: 0,
                ..Default::default()
            })
            .await,
        )
    })?;
    let pulled = pulled.expect_err("region 9 pulled region 1's change log");
    assert_eq!(pulled.code(), tonic::Code::PermissionDenied, "{pulled:?}");
    let fetch = rt.block_on(async {
        let mut c = meridian_proto::pb::chunk::chunk_service_client::ChunkServiceClient::connect(
            format!("http://{b_chunk}"),
        )
        .await?;
        anyhow::Ok(
            c.get(meridian_proto::pb::chunk::GetRequest {
                // The pinned volume's first file (seed 100).
                block_id: BlockId::of(&common::random_bytes(100, 1 << 20))
                    .as_bytes()
                    .to_vec()
                    .into(),
                regions: vec![1, 2],
                volume: pinned_id,
                fetch_remote: true,
                ..Default::default()
            })
            .await,
        )
    })?;
    let fetch = fetch.expect_err("region 2 fetched a pinned block");
    assert_eq!(fetch.code(), tonic::Code::FailedPrecondition, "{fetch:?}");
    let claimed_id = BlockId::of(&claimed).to_hex();
    for c in &pair.b.chunks {
        let files = block_files(&c.data);
        for id in written.iter().chain([&claimed_id]) {
            assert!(
                !files.iter().any(|f| f.starts_with(id.as_str())),
                "block {id} of the pinned volume reached region 2 at {}",
                c.data.display()
            );
        }
    }
    // Region 1 stores it (the volume lives there) and ships it nowhere: a block of the
    // shared volume put after it through the same node reaches region 2, and once that
    // node's queue is empty again, the claimed block is still not there.
    put(&pair.a.chunks[0].addr, header(0, pinned_id))??;
    let both_id = vols
        .as_array()
        .and_then(|v| v.iter().find(|v| v["name"] == "both"))
        .and_then(|v| v["id"].as_u64())
        .context("the shared volume's id")? as u32;
    let marker = common::random_bytes(78, 64 << 10);
    let marker_block = meridian_proto::EncodedBlock::encode(&marker)?;
    put_block(&pair.a.chunks[0].addr, &marker_block, header(0, both_id))??;
    let marker_id = BlockId::of(&marker).to_hex();
    let a_chunk = format!("http://{}", pair.a.chunks[0].addr);
    let queued = || -> Option<u64> {
        let addr = a_chunk.clone();
        let status = rt
            .block_on(async move {
                let mut c =
                    meridian_proto::pb::chunk::chunk_service_client::ChunkServiceClient::connect(
                        addr,
                    )
                    .await?;
                anyhow::Ok(
                    c.node_status(meridian_proto::pb::chunk::NodeStatusRequest::default())
                        .await?
                        .into_inner(),
                )
            })
            .ok()?;
        Some(status.ship_queues.iter().map(|q| q.blocks).sum())
    };
    wait_for(
        Duration::from_secs(60),
        "the shared block shipped and the queue empty",
        || (!holders_in(&pair.b, &marker_id).is_empty() && queued()? == 0).then_some(()),
    )?;
    assert!(
        holders_in(&pair.b, &claimed_id).is_empty(),
        "a block put for the pinned volume reached region 2"
    );
    Ok(())
}

#[test]
fn a_file_deleted_in_one_region_has_its_blocks_collected_in_both() -> Result<()> {
    let pair = Pair::start_with(&["--gc-grace-ms", "1000", "--gc-interval-ms", "300"])?;
    pair.shared_volume("shared")?;
    let ma = pair.a.mount("shared", "mnt-a")?;
    let mb = pair.b.mount("shared", "mnt-b")?;
    let doomed = common::random_bytes(41, 1 << 20);
    let kept = common::random_bytes(42, 1 << 20);
    fs::write(ma.path.join("doomed"), &doomed)?;
    fs::write(ma.path.join("kept"), &kept)?;
    wait_same(&ma.path, &mb.path, Duration::from_secs(60))?;
    let all: Vec<&ServerProc> = pair.a.chunks.iter().chain(&pair.b.chunks).collect();
    let holders = |data: &[u8]| {
        let id = meridian_proto::BlockId::of(data).to_hex();
        all.iter()
            .filter(|c| block_files(&c.data.join("blocks")).contains(&id))
            .count()
    };
    wait_for(Duration::from_secs(60), "3 copies in each region", || {
        (holders(&doomed) == 6 && holders(&kept) == 6).then_some(())
    })?;

    // Removed in region 1: the tombstone each region keeps goes once both have settled
    // past the removal, and then garbage collection takes the block everywhere.
    fs::remove_file(ma.path.join("doomed"))?;
    wait_same(&ma.path, &mb.path, Duration::from_secs(60))?;
    wait_for(
        Duration::from_secs(90),
        "the block collected in both regions",
        || (holders(&doomed) == 0).then_some(()),
    )
    .with_context(|| {
        format!(
            "copies left: {}\nregion 1 gc: {:?}\nregion 2 gc: {:?}",
            holders(&doomed),
            pair.a.admin(&["gc", "--json"]),
            pair.b.admin(&["gc", "--json"])
        )
    })?;
    assert_eq!(holders(&kept), 6, "a block still in use was collected");
    assert_eq!(fs::read(mb.path.join("kept"))?, kept);
    drop(mb);
    drop(ma);
    Ok(())
}

/// A truncate over many extents in a volume of two regions (a database file cut short in
/// one of them) leaves the extents to steps in each region (`namespace/trim.rs`), as in a
/// volume of one: both read the file cut at once, fsck is clean in both at every look, and
/// in the end each holds only the extents the file keeps.
#[test]
fn a_truncate_of_many_extents_in_two_regions_is_dropped_in_steps_in_each() -> Result<()> {
    let pair = Pair::start()?;
    pair.shared_volume("shared")?;
    let ma = pair.a.mount("shared", "mnt-a")?;
    let mb = pair.b.mount("shared", "mnt-b")?;
    let f = common::scattered(&ma.path, "db", 1_500)?;
    wait_same(&ma.path, &mb.path, Duration::from_secs(60))?;
    // Into the third piece: it keeps 100 bytes.
    let cut = 2 * 8192 + 100;
    f.set_len(cut)?;
    f.sync_all()?;
    drop(f);
    let mut expected = vec![0u8; cut as usize];
    for i in 0..3u64 {
        let at = (i * 8192) as usize;
        let len = if i == 2 { 100 } else { 512 };
        expected[at..at + len].fill(common::piece_byte(i));
    }
    assert!(fs::read(ma.path.join("db"))? == expected);
    wait_same(&ma.path, &mb.path, Duration::from_secs(60))?;
    assert!(fs::read(mb.path.join("db"))? == expected);
    for side in [&pair.a, &pair.b] {
        wait_for(Duration::from_secs(90), "the cut extents dropped", || {
            let (report, clean) = common::fsck(&side.addrs()).ok()?;
            assert!(clean, "{report}");
            (report["extents"] == 3).then_some(())
        })?;
    }
    assert!(fs::read(ma.path.join("db"))? == expected);
    assert!(fs::read(mb.path.join("db"))? == expected);
    drop(mb);
    drop(ma);
    Ok(())
}

/// A mount answers lookups of absent names alone only where the feed brings every change:
/// in a volume of two regions, a name the other region makes in a directory this mount
/// made is found here once it arrives (another region's records do not pass through the
/// change log the feed reads; answering from what the mount knew would be stale forever).
#[test]
fn a_name_made_in_another_region_is_found_in_a_directory_made_here() -> Result<()> {
    let pair = Pair::start()?;
    pair.shared_volume("shared")?;
    let ma = pair.a.mount("shared", "mnt-a")?;
    let mb = pair.b.mount("shared", "mnt-b")?;
    let here = ma.path.join("made-here");
    fs::create_dir(&here)?;
    assert!(!here.join("x").exists());
    let there = mb.path.join("made-here");
    wait_for(Duration::from_secs(60), "the directory in region 2", || {
        there.is_dir().then_some(())
    })?;
    fs::write(there.join("x"), b"from region 2")?;
    wait_for(Duration::from_secs(60), "the name made in region 2", || {
        fs::read(here.join("x"))
            .ok()
            .filter(|b| b == b"from region 2")
    })?;
    Ok(())
}

/// Writes `bytes` at `offset` of an existing file, without truncating it (`dd conv=notrunc`).
fn patch(path: &Path, offset: u64, bytes: &[u8]) -> Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = fs::OpenOptions::new().write(true).open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    f.write_all(bytes)?;
    Ok(())
}

fn append(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    fs::OpenOptions::new()
        .append(true)
        .open(path)?
        .write_all(bytes)?;
    Ok(())
}

/// The contents of every file of a listing.
fn contents(root: &Path, tree: &BTreeMap<String, String>) -> Result<Vec<(String, Vec<u8>)>> {
    tree.iter()
        .filter(|(_, v)| v.starts_with("file "))
        .map(|(k, _)| Ok((k.clone(), fs::read(root.join(k))?)))
        .collect()
}

#[test]
fn concurrent_everyday_writes_across_a_cut_lose_nothing() -> Result<()> {
    let mut pair = Pair::start()?;
    for vol in ["shared", "w"] {
        pair.a.admin(&["volume-create", vol, "--regions", "1,2"])?;
    }
    wait_for(
        Duration::from_secs(30),
        "the volumes to reach region 2",
        || {
            let v = pair.b.admin(&["volumes"]).ok()?;
            (v.contains("shared") && v.lines().any(|l| l.starts_with("w "))).then_some(())
        },
    )?;
    let ma = pair.a.mount("shared", "mnt-a")?;
    let mb = pair.b.mount("shared", "mnt-b")?;
    let wa = pair.a.mount("w", "w-a")?;
    let wb = pair.b.mount("w", "w-b")?;
    let (a, b) = (&ma.path, &mb.path);
    let log: Vec<u8> = vec![b'L'; 1000];
    fs::write(a.join("f"), b"f original")?;
    fs::write(a.join("g"), b"0123456789")?;
    fs::write(a.join("log"), &log)?;
    fs::write(a.join("r"), b"r original")?;
    fs::write(a.join("r2"), b"r2 content")?;
    fs::write(a.join("d"), b"d original")?;
    fs::write(wb.path.join("x"), b"x original")?;
    wait_same(a, b, Duration::from_secs(60))?;
    wait_same(&wa.path, &wb.path, Duration::from_secs(60))?;

    pair.cut(true)?;
    // 1. An atomic save (write a temporary file, rename it over) against a write.
    fs::write(a.join("f.tmp"), b"saved by region 1")?;
    fs::rename(a.join("f.tmp"), a.join("f"))?;
    fs::write(b.join("f"), b"written in region 2")?;
    // 2. An overwrite against an in-place patch.
    fs::write(a.join("g"), b"AAAAAAAAAA")?;
    patch(&b.join("g"), 2, b"B")?;
    // 3. A truncate against an append.
    fs::OpenOptions::new()
        .write(true)
        .open(a.join("log"))?
        .set_len(0)?;
    append(&b.join("log"), b"hi")?;
    // 4. A create then delete against a create of the same name.
    fs::write(a.join("c"), b"c from region 1")?;
    fs::remove_file(a.join("c"))?;
    fs::write(b.join("c"), b"c from region 2")?;
    // 5. A rename over a file against a write to it.
    fs::rename(a.join("r2"), a.join("r"))?;
    fs::write(b.join("r"), b"r written in region 2")?;
    // 6. A delete against a write.
    fs::remove_file(a.join("d"))?;
    fs::write(b.join("d"), b"d written in region 2")?;
    // 7. Deleting a volume against a write to it.
    fs::remove_file(wa.path.join("x"))?;
    wa.unmount()?;
    pair.a.admin(&["volume-delete", "w"])?;
    append(&wb.path.join("x"), b" appended")?;

    pair.cut(false)?;
    let tree = wait_same(a, b, Duration::from_secs(90))?;
    let files = contents(a, &tree)?;
    let has = |want: &[u8]| files.iter().any(|(_, c)| c == want);
    let mut after_append = log.clone();
    after_append.extend_from_slice(b"hi");
    for want in [
        &b"saved by region 1"[..],
        b"written in region 2",
        b"AAAAAAAAAA",
        b"01B3456789",
        &after_append,
        b"c from region 2",
        b"r2 content",
        b"r written in region 2",
        b"d written in region 2",
    ] {
        assert!(
            has(want),
            "{:?} is lost; files: {files:#?}",
            String::from_utf8_lossy(want)
        );
    }
    let mut zeros_then_hi = vec![0u8; 1000];
    zeros_then_hi.extend_from_slice(b"hi");
    for mix in [&b"AABAAAAAAA"[..], &zeros_then_hi] {
        assert!(!has(mix), "a mix nobody wrote: {files:#?}");
    }
    // Every region lists the same conflicts, one at least per pattern that met one.
    let conflicts = wait_for(
        Duration::from_secs(30),
        "the same conflicts in both",
        || {
            let ca = pair.a.admin(&["conflicts", "--json"]).ok()?;
            let cb = pair.b.admin(&["conflicts", "--json"]).ok()?;
            (ca == cb).then_some(ca)
        },
    )?;
    let list: Vec<serde_json::Value> = serde_json::from_str(&conflicts)?;
    assert!(list.len() >= 5, "{conflicts}");

    // The deleted volume came back with the write, in both regions.
    wait_for(Duration::from_secs(60), "volume w back in region 1", || {
        pair.a
            .admin(&["volumes"])
            .ok()?
            .lines()
            .any(|l| l.starts_with("w "))
            .then_some(())
    })?;
    let wa = pair.a.mount("w", "w-a-again")?;
    wait_same(&wa.path, &wb.path, Duration::from_secs(60))?;
    assert_eq!(fs::read(wa.path.join("x"))?, b"x original appended");

    // Every metaserver of region 1 restarts (replaying its log) and serves.
    drop(wa);
    for i in 0..pair.a.meta.nodes.len() {
        let node = &mut pair.a.meta.nodes[i];
        let addr = node.addr.clone();
        node.kill();
        node.restart_on(&addr)?;
    }
    pair.a.meta.wait_leader()?;
    fs::write(a.join("after-restart"), b"still serving")?;
    wait_same(a, b, Duration::from_secs(60))?;
    assert_eq!(
        pair.a.admin(&["conflicts", "--json"])?,
        pair.b.admin(&["conflicts", "--json"])?
    );
    drop((ma, mb, wb));
    Ok(())
}

/// After a heal: the block `hex` reaches region 2 by shipping alone (nothing there reads
/// it), the file `name` holding `data` appears in region 2's mount, and it reads back
/// right with the link cut again.
fn shipped_and_read_in_b(
    pair: &Pair,
    mb: &Mount,
    name: &str,
    data: &[u8],
    hex: &str,
) -> Result<()> {
    wait_for(
        Duration::from_secs(60),
        "the block to reach region 2",
        || (!holders_in(&pair.b, hex).is_empty()).then_some(()),
    )
    .with_context(|| {
        format!(
            "chunkservers: {}",
            pair.a.admin(&["nodes"]).unwrap_or_default()
        )
    })?;
    wait_for(
        Duration::from_secs(60),
        "the file's record in region 2",
        || {
            let len = fs::metadata(mb.path.join(name)).ok()?.len();
            (len == data.len() as u64).then_some(())
        },
    )?;
    pair.cut(true)?;
    assert!(
        fs::read(mb.path.join(name))? == data,
        "region 2 read other bytes than region 1 wrote"
    );
    Ok(())
}

/// Indices of `side`'s chunkservers holding a copy of block `hex`.
fn holders_in(side: &Side, hex: &str) -> Vec<usize> {
    side.chunks
        .iter()
        .enumerate()
        .filter(|(_, c)| block_files(&c.data.join("blocks")).iter().any(|b| b == hex))
        .map(|(i, _)| i)
        .collect()
}

/// Blocks follow their records even when the copy that queued them has moved: the node
/// that coordinated the put is drained before the block could ship, and the block still
/// reaches the other region (shipped from the node that holds it now), where it is read
/// with the link cut again.
#[test]
fn a_block_whose_copy_was_drained_before_it_shipped_still_reaches_the_other_region() -> Result<()> {
    let pair = Pair::start_with(&["--repair-interval-ms", "300"])?;
    pair.a.admin(&[
        "volume-create",
        "one-copy",
        "--regions",
        "1,2",
        "--replicas",
        "1",
        "--min-copies",
        "1",
    ])?;
    wait_for(Duration::from_secs(30), "the volume in region 2", || {
        pair.b
            .admin(&["volumes"])
            .ok()?
            .contains("one-copy")
            .then_some(())
    })?;
    let mb = pair.b.mount("one-copy", "mnt-b")?;
    pair.cut(true)?;
    let ma = pair.a.mount("one-copy", "mnt-a")?;
    let data = common::random_bytes(51, 1 << 20);
    fs::write(ma.path.join("moved"), &data)?;
    let id = BlockId::of(&data).to_hex();
    let first = holders_in(&pair.a, &id);
    anyhow::ensure!(first.len() == 1, "one copy in region 1, found {first:?}");
    let coordinator = first[0];

    // The only copy moves to another node while nothing can ship.
    pair.a.admin(&["drain", &(coordinator + 1).to_string()])?;
    wait_for(
        Duration::from_secs(60),
        "the drained node's copy to move",
        || {
            let now = holders_in(&pair.a, &id);
            (now.len() == 1 && now[0] != coordinator).then_some(())
        },
    )?;

    // Healed: nothing in region 2 reads the file, so only shipping can bring the block.
    pair.cut(false)?;
    shipped_and_read_in_b(&pair, &mb, "moved", &data, &id)?;
    drop(ma);
    drop(mb);
    Ok(())
}

/// Garbage collection decides with stamps, never with a peer's wall time: region 2's
/// clock runs two hours ahead, a block it wrote ships to region 1 while the record naming
/// it cannot, and region 1 (where nothing references it yet) holds it back instead of
/// deleting it. Once the record arrives the block is there, read with the link cut; and
/// when the file is deleted, the block is still collected in both regions.
#[test]
fn a_peer_clock_two_hours_ahead_gets_no_referenced_block_collected() -> Result<()> {
    let ahead = (2 * 3600 * 1000).to_string();
    let pair = Pair::start_full(
        &[],
        &["--clock-offset-ms", &ahead],
        &["--gc-grace-ms", "1000", "--gc-interval-ms", "300"],
    )?;
    pair.shared_volume("skewed")?;
    let ma = pair.a.mount("skewed", "mnt-a")?;
    let mb = pair.b.mount("skewed", "mnt-b")?;
    fs::write(mb.path.join("first"), b"both regions have met")?;
    wait_same(&ma.path, &mb.path, Duration::from_secs(60))?;

    // Only blocks cross: the block arrives in region 1 ahead of its record.
    pair.cut_metadata(true)?;
    let data = common::random_bytes(61, 1 << 20);
    fs::write(mb.path.join("late"), &data)?;
    let id = BlockId::of(&data).to_hex();
    let gc = |side: &Side| -> Option<Vec<serde_json::Value>> {
        let v: serde_json::Value =
            serde_json::from_str(&side.admin(&["gc", "--json"]).ok()?).ok()?;
        v.as_array().cloned()
    };
    // Region 1's GC condemns it (nothing there references it), and then, its grace period
    // over, holds it back: the record that names it has not arrived.
    wait_for(
        Duration::from_secs(60),
        "region 1 holding the unreferenced block back",
        || {
            let held = holders_in(&pair.a, &id).len() == 3;
            let waiting = gc(&pair.a)?
                .iter()
                .all(|n| n["waiting"].as_u64().unwrap_or(0) >= 1);
            (held && waiting).then_some(())
        },
    )
    .with_context(|| {
        format!(
            "copies in region 1: {:?}; gc: {:?}",
            holders_in(&pair.a, &id),
            gc(&pair.a)
        )
    })?;

    pair.cut_metadata(false)?;
    wait_for(Duration::from_secs(60), "the record in region 1", || {
        let len = fs::metadata(ma.path.join("late")).ok()?.len();
        (len == data.len() as u64).then_some(())
    })?;
    assert_eq!(holders_in(&pair.a, &id).len(), 3, "region 1 lost copies");
    pair.cut(true)?;
    assert!(
        fs::read(ma.path.join("late"))? == data,
        "region 1 read other bytes than region 2 wrote"
    );
    pair.cut(false)?;

    // Collection still happens across the skew once nothing references the block.
    fs::remove_file(mb.path.join("late"))?;
    wait_for(
        Duration::from_secs(120),
        "the block collected in both regions",
        || {
            (holders_in(&pair.a, &id).is_empty() && holders_in(&pair.b, &id).is_empty())
                .then_some(())
        },
    )
    .with_context(|| {
        format!(
            "copies: {:?} / {:?}; gc: {:?} / {:?}",
            holders_in(&pair.a, &id),
            holders_in(&pair.b, &id),
            gc(&pair.a),
            gc(&pair.b)
        )
    })?;
    assert_eq!(fs::read(ma.path.join("first"))?, b"both regions have met");
    drop(ma);
    drop(mb);
    Ok(())
}

/// The link detector of a region pair: each flap of the link is a verdict in both
/// regions' history, and the history, the outbound lag and the RPO carry on across a
/// leader change (a new leader does not count the peer's backlog from scratch).
#[test]
fn a_flapping_link_is_in_the_history_and_a_leader_change_keeps_lag_and_rpo() -> Result<()> {
    let quick = ["--peer-unreachable-after-ms", "1500"];
    let mut pair = Pair::start_full(&quick, &quick, &[])?;
    pair.shared_volume("flaps")?;
    let ma = pair.a.mount("flaps", "mnt-a")?;
    let mb = pair.b.mount("flaps", "mnt-b")?;
    let link = |side: &Side| -> Option<serde_json::Value> {
        let v: serde_json::Value =
            serde_json::from_str(&side.admin(&["regions", "--json"]).ok()?).ok()?;
        Some(v["peers"][0].clone())
    };
    // The verdicts each side had once its link first answered (a peer slow to start on
    // a loaded host is first seen unreachable): the flaps below add to them.
    let first = |side: &Side| -> Result<usize> {
        wait_for(Duration::from_secs(30), "the link up", || {
            let p = link(side)?;
            let n = p["history"].as_array()?.len();
            (p["reachable"] == true && n > 0).then_some(n)
        })
    };
    let (base_a, base_b) = (first(&pair.a)? - 1, first(&pair.b)? - 1);
    let link_is = |side: &Side, up: bool, verdicts: usize| {
        let base = if std::ptr::eq(side, &pair.a) {
            base_a
        } else {
            base_b
        };
        let verdicts = verdicts + base;
        let mut last = None;
        wait_for(
            Duration::from_secs(30),
            "the link's verdict and history",
            || {
                let p = link(side)?;
                last = Some(p.clone());
                let n = p["history"].as_array()?.len();
                (p["reachable"] == up && n == verdicts).then_some(())
            },
        )
        .with_context(|| format!("last seen: {last:#?}"))
    };
    link_is(&pair.a, true, 1)?;
    link_is(&pair.b, true, 1)?;
    for flap in 0..2 {
        pair.cut(true)?;
        link_is(&pair.a, false, 2 + 2 * flap)?;
        link_is(&pair.b, false, 2 + 2 * flap)?;
        pair.cut(false)?;
        link_is(&pair.a, true, 3 + 2 * flap)?;
        link_is(&pair.b, true, 3 + 2 * flap)?;
    }
    let history = link(&pair.a).context("region 1's link")?["history"].clone();
    let verdicts = &history.as_array().context("a history")?[base_a..];
    for (i, pair_of) in verdicts.windows(2).enumerate() {
        assert_ne!(
            pair_of[0]["reachable"], pair_of[1]["reachable"],
            "verdict {i} repeats: {history:#}"
        );
        assert!(
            pair_of[0]["at_ms"].as_u64() <= pair_of[1]["at_ms"].as_u64(),
            "{history:#}"
        );
    }
    assert!(
        verdicts[1]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("no pull answered"),
        "{history:#}"
    );

    // Region 2 has everything; then the link is cut and region 1 writes on.
    for i in 0..20 {
        fs::write(ma.path.join(format!("before-{i}")), b"both have this")?;
    }
    wait_for(
        Duration::from_secs(60),
        "region 2 to apply everything",
        || (link(&pair.a)?["ops_behind"] == 0).then_some(()),
    )?;
    pair.cut(true)?;
    link_is(&pair.a, false, 6)?;
    for i in 0..5 {
        fs::write(
            ma.path.join(format!("during-{i}")),
            b"only region 1 has this",
        )?;
    }
    let before = link(&pair.a).context("region 1's link")?;
    let ops = before["ops_behind"].as_u64().context("ops behind")?;
    assert!(ops >= 5, "{before:#}");
    // What the cut costs on disk is shown: the change log keeps what region 2 lacks.
    let whole: serde_json::Value = serde_json::from_str(&pair.a.admin(&["regions", "--json"])?)?;
    let kept = whole["kept"]["changelog_records"]
        .as_u64()
        .context("kept records")?;
    assert!(kept >= ops, "{whole:#}");
    assert!(before["bytes_behind"].as_u64() > Some(0), "{before:#}");

    // A new leader in region 1 reports the same backlog, an RPO that only grew, and the
    // same history.
    let leader = pair.a.meta.wait_leader()?;
    pair.a.meta.nodes[leader].kill();
    let mut after = None;
    let new_leader = pair.a.meta.wait_leader()?;
    assert_ne!(new_leader, leader);
    wait_for(
        Duration::from_secs(30),
        "the new leader's view of the link",
        || {
            let p = link(&pair.a)?;
            let verdicts = p["history"].as_array()?.len();
            after = Some(p.clone());
            (verdicts >= 6 + base_a).then_some(())
        },
    )?;
    let after = after.context("the new leader's view")?;
    assert_eq!(
        after["ops_behind"], before["ops_behind"],
        "{before:#}\n{after:#}"
    );
    assert_eq!(
        after["acked_seq"], before["acked_seq"],
        "{before:#}\n{after:#}"
    );
    assert!(
        after["oldest_unshipped_ms"].as_u64() >= before["oldest_unshipped_ms"].as_u64(),
        "{before:#}\n{after:#}"
    );
    let first_six = |v: &serde_json::Value| {
        v["history"]
            .as_array()
            .map(|h| h.iter().take(6 + base_a).cloned().collect::<Vec<_>>())
    };
    assert_eq!(
        first_six(&after),
        first_six(&before),
        "{before:#}\n{after:#}"
    );

    pair.cut(false)?;
    wait_same(&ma.path, &mb.path, Duration::from_secs(60))?;
    wait_for(Duration::from_secs(60), "region 2 to catch up", || {
        (link(&pair.a)?["ops_behind"] == 0).then_some(())
    })?;
    drop(ma);
    drop(mb);
    Ok(())
}

/// Any holder can ship: the node that coordinated the put of a block is lost with its
/// disk before the block could ship, and the block still reaches the other region, from
/// a replica's queue.
#[test]
fn a_block_whose_coordinator_is_lost_before_it_shipped_still_reaches_the_other_region() -> Result<()>
{
    let mut pair = Pair::start_with(&["--ship-replica-delay-ms", "500"])?;
    pair.shared_volume("lost")?;
    let mb = pair.b.mount("lost", "mnt-b")?;
    pair.cut(true)?;
    let ma = pair.a.mount("lost", "mnt-a")?;
    let data = common::random_bytes(91, 1 << 20);
    fs::write(ma.path.join("orphan"), &data)?;
    let id = BlockId::of(&data);
    let map = common::cluster_map(&pair.a.addrs()).context("region 1's map")?;
    let coordinator = meridian_proto::placement(&id, &map, 1)
        .first()
        .copied()
        .context("a placement")?;
    let i = pair
        .a
        .chunks
        .iter()
        .position(|c| c.id == coordinator.0)
        .context("the coordinator's process")?;
    anyhow::ensure!(
        holders_in(&pair.a, &id.to_hex()).len() == 3,
        "three copies first"
    );
    pair.a.chunks[i].kill();
    fs::remove_dir_all(&pair.a.chunks[i].data)?;

    pair.cut(false)?;
    shipped_and_read_in_b(&pair, &mb, "orphan", &data, &id.to_hex())?;
    drop(ma);
    drop(mb);
    Ok(())
}
