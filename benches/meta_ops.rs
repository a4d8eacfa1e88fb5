//! Metadata operations per second against a 3-member `meridian meta` group on loopback,
//! next to the same operations on the local filesystem in the same run; then the leader
//! fail-over time (kill -9 to the first acknowledged write) with the default Raft timings.
//!
//! Run with `scripts/bench.sh` (or `cargo bench --bench meta_ops`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{MetaCluster, create_op, mkdir_op};
use criterion::{BatchSize, Criterion, Throughput};
use meridian_client::MetaClient;
use meridian_proto::InodeId;
use meridian_proto::ns::*;

fn ino(reply: Reply) -> InodeId {
    match reply {
        Reply::Attr(a) => a.ino,
        Reply::Volume(v) => v.root,
        other => panic!("unexpected {other:?}"),
    }
}

const BENCHES: [&str; 10] = [
    "local fs create+fsync(dir)",
    "meridian create",
    "local fs stat",
    "meridian getattr (linearizable)",
    "meridian getattr (stale)",
    "local fs readdir 1000",
    "meridian readdir 1000",
    "local fs unlink+fsync(dir)",
    "meridian unlink",
    "meridian create x64 concurrent",
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // Test runners list benchmarks first: answer without starting a cluster.
    if args.iter().any(|a| a == "--list") {
        let kind = if args.iter().any(|a| a == "--bench") {
            "benchmark"
        } else {
            "test"
        };
        // None of them is ignored.
        let names = if args.iter().any(|a| a == "--ignored") {
            &[][..]
        } else {
            &BENCHES[..]
        };
        for name in names {
            println!("meta/{name}: {kind}");
        }
        return;
    }
    // Under `cargo bench` (not a test run) also measure fail-over.
    let measure_failover = args.iter().any(|a| a == "--bench");
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(20)
        .measurement_time(Duration::from_secs(8));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // Default Raft timings (not the tests' fast ones), so fail-over is what a user gets.
    let mut cluster = MetaCluster::start(
        3,
        &[
            "--heartbeat-ms",
            "100",
            "--election-min-ms",
            "500",
            "--election-max-ms",
            "1000",
        ],
    )
    .expect("metaserver group");
    let client = MetaClient::new(cluster.addrs());
    let root = ino(rt
        .block_on(client.mutate(&Op::CreateVolume {
            name: "bench".into(),
            policy: VolumePolicy::default(),
        }))
        .expect("volume"));
    let dir = ino(rt
        .block_on(client.mutate(&mkdir_op(root, "d")))
        .expect("dir"));
    let listed = ino(rt
        .block_on(client.mutate(&mkdir_op(root, "listed")))
        .expect("dir"));
    // A test run (not `cargo bench`) only checks that every benchmark works: keep it small.
    let entries = if measure_failover { 1000 } else { 20 };
    for i in 0..entries {
        rt.block_on(client.mutate(&create_op(listed, &format!("e{i:04}"))))
            .expect("fill");
    }
    let local = tempfile::Builder::new()
        .prefix("meridian-bench-meta-")
        .tempdir_in(".")
        .expect("temp dir");
    let local_listed = local.path().join("listed");
    fs::create_dir(&local_listed).expect("mkdir");
    for i in 0..entries {
        fs::write(local_listed.join(format!("e{i:04}")), b"").expect("fill");
    }
    let n = AtomicU64::new(0);
    let next = || n.fetch_add(1, Ordering::Relaxed);

    let mut g = c.benchmark_group("meta");
    g.throughput(Throughput::Elements(1));
    g.bench_function("local fs create+fsync(dir)", |b| {
        let dirf = fs::File::open(local.path()).expect("dir");
        b.iter(|| {
            fs::File::create(local.path().join(format!("f{}", next()))).expect("create");
            dirf.sync_all().expect("fsync");
        })
    });
    g.bench_function("meridian create", |b| {
        b.iter(|| {
            rt.block_on(client.mutate(&create_op(dir, &format!("f{}", next()))))
                .expect("create")
        })
    });
    g.bench_function("local fs stat", |b| {
        b.iter(|| fs::metadata(&local_listed).expect("stat"))
    });
    g.bench_function("meridian getattr (linearizable)", |b| {
        b.iter(|| {
            rt.block_on(client.query(&Query::GetAttr { ino: dir }, false))
                .expect("getattr")
        })
    });
    g.bench_function("meridian getattr (stale)", |b| {
        b.iter(|| {
            rt.block_on(client.query(&Query::GetAttr { ino: dir }, true))
                .expect("getattr")
        })
    });
    g.bench_function("local fs readdir 1000", |b| {
        b.iter(|| fs::read_dir(&local_listed).expect("ls").count())
    });
    g.bench_function("meridian readdir 1000", |b| {
        b.iter(|| {
            rt.block_on(client.query(
                &Query::ReadDir {
                    ino: listed,
                    after: None,
                    limit: 1000,
                    creds: Creds::root(),
                },
                false,
            ))
            .expect("ls")
        })
    });
    g.bench_function("local fs unlink+fsync(dir)", |b| {
        let dirf = fs::File::open(local.path()).expect("dir");
        b.iter_batched(
            || {
                let p = local.path().join(format!("u{}", next()));
                fs::File::create(&p).expect("create");
                p
            },
            |p| {
                fs::remove_file(p).expect("unlink");
                dirf.sync_all().expect("fsync");
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("meridian unlink", |b| {
        b.iter_batched(
            || {
                let name = format!("u{}", next());
                rt.block_on(client.mutate(&create_op(dir, &name.clone())))
                    .expect("create");
                name
            },
            |name| {
                rt.block_on(client.mutate(&Op::Unlink {
                    parent: dir,
                    name: name.into_bytes(),
                    creds: Creds::root(),
                }))
                .expect("unlink")
            },
            BatchSize::SmallInput,
        )
    });
    // Many clients at once: Raft batches their entries into shared fsyncs.
    g.throughput(Throughput::Elements(64));
    g.bench_function("meridian create x64 concurrent", |b| {
        b.iter(|| {
            rt.block_on(async {
                let ops: Vec<Op> = (0..64)
                    .map(|_| create_op(dir, &format!("c{}", next())))
                    .collect();
                let futs: Vec<_> = ops.iter().map(|op| client.mutate(op)).collect();
                for r in futures_join(futs).await {
                    r.expect("create");
                }
            })
        })
    });
    g.finish();

    // Fail-over: kill -9 the leader, time the first acknowledged write after it.
    let mut times = Vec::new();
    for round in 0..if measure_failover { 3 } else { 0 } {
        let leader = cluster.wait_leader().expect("leader");
        let killed = Instant::now();
        cluster.nodes[leader].kill();
        rt.block_on(client.mutate(&mkdir_op(root, &format!("after-kill-{round}"))))
            .expect("write after fail-over");
        times.push(killed.elapsed());
        let addr = cluster.nodes[leader].addr.clone();
        cluster.nodes[leader].restart_on(&addr).expect("restart");
    }
    println!("leader fail-over (kill -9 to first acknowledged write, default timings): {times:?}");
    c.final_summary();
}

/// Awaits all futures concurrently (on one task: the client multiplexes on its channels).
async fn futures_join<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (i, f) in pinned.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().map(|o| o.expect("completed")).collect()
}
