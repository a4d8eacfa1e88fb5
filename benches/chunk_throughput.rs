//! Put/get throughput of 4 MiB blocks through one real `meridian chunk` process on loopback,
//! next to the same bytes written (with fsync) and read on the local disk in the same run;
//! and reads through the range port, on plaintext and on mutual TLS.
//!
//! Run with `scripts/bench.sh` (or `cargo bench --bench chunk_throughput`).

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meridian_client::BlockClient;
use meridian_proto::{
    BlockId, ClusterMap, EncodedBlock, NodeId, NodeInfo, NodeState, RegionId, ZoneId,
};

const BLOCK: usize = 4 << 20;

struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `meridian` binary (MERIDIAN_BIN: another build's, to compare two builds in one run).
fn meridian_bin() -> std::path::PathBuf {
    std::env::var_os("MERIDIAN_BIN").map_or_else(
        || env!("CARGO_BIN_EXE_meridian").into(),
        std::path::PathBuf::from,
    )
}

/// A chunkserver with its data in `dir`, on TLS with the certificate folder `tls` (or
/// plaintext), its range port on `range` (an address; empty: one the system picks).
fn start_chunkserver(dir: &Path, tls: Option<&Path>, range: &str) -> (Server, String) {
    fs::create_dir_all(dir).expect("chunkserver dir");
    let log = dir.join("chunk.log");
    let out = fs::File::create(&log).expect("log file");
    let mut command = Command::new(meridian_bin());
    match tls {
        Some(folder) => command.arg("--tls").arg(folder),
        None => command.arg("--plaintext"),
    };
    command
        .args([
            "chunk",
            "--id",
            "1",
            "--zone",
            "a",
            // The puts below ask for one copy: as the region's usual R, a put records
            // nothing in the ledger (as a put of a volume at the usual R does).
            "--default-replicas",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(dir.join("data"));
    if !range.is_empty() {
        command.args(["--range-listen", range]);
    }
    let child = command
        .env("MERIDIAN_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log fd"))
        .stderr(out)
        .spawn()
        .expect("start meridian chunk");
    let server = Server { child };
    let start = Instant::now();
    loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .find(|l| l.starts_with("meridian chunk 1 listening on "))
        {
            return (
                server,
                line.rsplit(' ').next().expect("address").to_string(),
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "chunkserver did not start:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The map of a region of one chunkserver at `address`, its range port at `range_address`
/// (empty: none, reads go through gRPC).
fn one_node_map(address: String, range_address: String) -> ClusterMap {
    ClusterMap::new(
        1,
        RegionId(1),
        vec![NodeInfo {
            id: NodeId(1),
            zone: ZoneId::from("a"),
            address,
            range_address,
            capacity: 1 << 40,
            state: NodeState::Up,
        }],
    )
    .expect("map")
}

/// Four 4 MiB blocks put with one copy (numbered down from `first`), for the reads.
fn store_blocks(
    client: &BlockClient,
    rt: &tokio::runtime::Runtime,
    base: &[u8],
    first: u64,
) -> Vec<BlockId> {
    (0..4u64)
        .map(|n| {
            let block = EncodedBlock::encode(&block_bytes(base, first - n)).expect("encode");
            rt.block_on(client.put(&block, 1, 1)).expect("put");
            block.id
        })
        .collect()
}

/// 4 MiB of incompressible bytes whose first 8 bytes are `n`, so every block is new.
fn block_bytes(base: &[u8], n: u64) -> Vec<u8> {
    let mut data = base.to_vec();
    data[..8].copy_from_slice(&n.to_le_bytes());
    data
}

fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::Builder::new()
        .prefix("meridian-bench-")
        .tempdir_in(".")
        .expect("temp dir");
    let (grpc_server, addr) = start_chunkserver(&dir.path().join("grpc"), None, "");
    let client = BlockClient::with_map(one_node_map(addr, String::new()), None);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let base = noise(BLOCK);

    let mut group = c.benchmark_group("4MiB");
    group.throughput(Throughput::Bytes(BLOCK as u64));
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(15));

    // Data the read benchmarks use, written up front so each benchmark also runs alone.
    let raw = dir.path().join("raw");
    fs::create_dir_all(&raw).expect("raw dir");
    let read_path = raw.join("read-me");
    fs::write(&read_path, block_bytes(&base, 0)).expect("write read file");
    let stored = store_blocks(&client, &rt, &base, u64::MAX);

    // Baseline: what the disk itself does for one durable block write.
    let mut n = 0u64;
    group.bench_function("local disk write+fsync+rename", |b| {
        b.iter(|| {
            n += 1;
            let data = block_bytes(&base, n);
            let tmp = raw.join(format!("{n}.tmp"));
            let mut f = fs::File::create(&tmp).expect("create");
            f.write_all(&data).expect("write");
            f.sync_all().expect("fsync");
            fs::rename(&tmp, raw.join(n.to_string())).expect("rename");
            fs::File::open(&raw)
                .and_then(|d| d.sync_all())
                .expect("fsync dir");
        })
    });
    group.bench_function("local disk read", |b| {
        b.iter(|| fs::read(&read_path).expect("read"))
    });

    // Meridian: client-side hash + lz4 attempt, gRPC over loopback, server-side verification
    // and a durable write.
    let mut m = 1u64 << 40;
    group.bench_function("meridian put (R=1)", |b| {
        b.iter(|| {
            m += 1;
            let block = EncodedBlock::encode(&block_bytes(&base, m)).expect("encode");
            rt.block_on(client.put(&block, 1, 1)).expect("put");
        })
    });
    let mut k = 0usize;
    group.bench_function("meridian get (verified)", |b| {
        b.iter(|| {
            k = (k + 1) % stored.len();
            rt.block_on(client.get(&stored[k], 1)).expect("get")
        })
    });
    group.finish();

    // Small blocks (a 16 KiB file's): the put's latency is the durable write's, not the
    // bandwidth.
    let mut group = c.benchmark_group("16KiB");
    group.throughput(Throughput::Bytes(SMALL as u64));
    group
        .sample_size(50)
        .measurement_time(Duration::from_secs(10));
    // Baseline: one durable small record, appended to an allocated file and fdatasync'd.
    let log = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(raw.join("small-log"))
        .expect("small log");
    log.set_len(64 << 20).expect("allocate");
    {
        use std::os::unix::fs::FileExt;
        log.write_all_at(&vec![0; 64 << 20], 0).expect("zero");
        log.sync_all().expect("fsync");
        let mut at = 0u64;
        group.bench_function("local disk append+fdatasync", |b| {
            b.iter(|| {
                log.write_all_at(&base[..SMALL], at).expect("write");
                log.sync_data().expect("fdatasync");
                at = (at + SMALL as u64) % (64 << 20);
            })
        });
    }
    let mut m = 1u64 << 41;
    group.bench_function("meridian put (R=1)", |b| {
        b.iter(|| {
            m += 1;
            let mut data = base[..SMALL].to_vec();
            data[..8].copy_from_slice(&m.to_le_bytes());
            let block = EncodedBlock::encode(&data).expect("encode");
            rt.block_on(client.put(&block, 1, 1)).expect("put");
        })
    });
    group.finish();
    drop(grpc_server);
    bench_port(c, dir.path(), &base, &rt);
}

/// Reads through the range port, on plaintext and then on mutual TLS (a CA and a
/// chunkserver's and a client's certificates made for the run, as `meridian admin certs`
/// makes them): a whole 4 MiB block (a sequential reader's) and 4 KiB ranges (a random
/// reader's, from a thread that may wait, as a kernel request thread does), verified as
/// the gRPC reads above are.
fn bench_port(c: &mut Criterion, dir: &Path, base: &[u8], rt: &tokio::runtime::Runtime) {
    use meridian_client::blocks::blocking_reads;
    let certs = dir.join("certs");
    let admin = |args: &[&str]| {
        let out = Command::new(meridian_bin())
            .arg("admin")
            .args(args)
            .output()
            .expect("run meridian admin");
        assert!(out.status.success(), "admin {args:?}: {out:?}");
    };
    let ca = certs.join("ca");
    admin(&["certs", "init", "--dir", ca.to_str().expect("utf-8 path")]);
    for (name, role) in [("chunk", "chunk"), ("client", "client")] {
        let out = certs.join(name);
        admin(&[
            "certs",
            "issue",
            "--ca",
            ca.to_str().expect("utf-8 path"),
            "--out",
            out.to_str().expect("utf-8 path"),
            "--name",
            name,
            "--role",
            role,
        ]);
    }
    for tls in [false, true] {
        let label = if tls { "TLS" } else { "plaintext" };
        if tls {
            let identity = meridian_proto::tls::TlsIdentity::load(&certs.join("client"))
                .expect("client certificate");
            meridian_proto::tls::install(identity);
        }
        let range = meridian_proto::net::spare_loopback_addr().expect("a port");
        let chunk_tls = certs.join("chunk");
        let (_server, addr) =
            start_chunkserver(&dir.join(label), tls.then_some(&*chunk_tls), &range);
        let client = BlockClient::with_map(one_node_map(addr, range), None);
        let stored = store_blocks(&client, rt, base, u64::MAX - 100);
        // What is measured is the port's: a read that went through gRPC would not count.
        rt.block_on(client.get(&stored[0], 1)).expect("get");
        assert_eq!(
            client.range_port_reads(),
            1,
            "{label}: the read went through gRPC, not the port"
        );
        let mut group = c.benchmark_group(format!("range port ({label})"));
        group
            .sample_size(20)
            .measurement_time(Duration::from_secs(10));
        group.throughput(Throughput::Bytes(BLOCK as u64));
        let mut k = 0usize;
        group.bench_function("4MiB get (verified)", |b| {
            b.iter(|| {
                k = (k + 1) % stored.len();
                rt.block_on(client.get(&stored[k], 1)).expect("get")
            })
        });
        group.throughput(Throughput::Bytes(4096));
        let mut at = 0u64;
        group.bench_function("4KiB range read (verified)", |b| {
            b.iter(|| {
                k = (k + 1) % stored.len();
                at = (at + 1_000_003) % (BLOCK as u64 - 4096);
                blocking_reads(|| rt.block_on(client.get_range(&stored[k], 1, at, 4096)))
                    .expect("range")
            })
        });
        group.finish();
    }
}

/// A small block's size.
const SMALL: usize = 16 << 10;

criterion_group!(benches, bench);
criterion_main!(benches);
