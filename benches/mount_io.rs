//! File I/O through a real FUSE mount of a region on loopback (3 metaservers, 3
//! chunkservers, R=3), next to the same work on the local disk in the same run:
//! sequential write + fsync of a 256 MiB file, and a cold sequential read of it.
//!
//! Run with `scripts/bench.sh` (or `cargo bench --bench mount_io`). Prints MiB/s.

#[path = "../tests/common/mod.rs"]
mod common;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

const SIZE: usize = 256 << 20;
const CHUNK: usize = 1 << 20;

fn write_file(path: &Path, data: &[u8]) -> f64 {
    let t = Instant::now();
    let mut f = File::create(path).expect("create");
    for c in data.chunks(CHUNK) {
        f.write_all(c).expect("write");
    }
    f.sync_all().expect("fsync");
    drop(f);
    data.len() as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64()
}

fn read_file(path: &Path) -> (f64, blake3::Hash) {
    let t = Instant::now();
    let mut f = File::open(path).expect("open");
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0usize;
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        total += n;
        h.update(&buf[..n]);
    }
    (
        total as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64(),
        h.finalize(),
    )
}

fn drop_page_cache() {
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

fn main() {
    let Some(full) = common::bench_mode("mount_io") else {
        return;
    };
    // Under a test runner only check that it works, with a small file.
    let size = if full { SIZE } else { 8 << 20 };
    let region = common::Region::start().expect("region");
    let mnt = region.mount("mnt").expect("mount");
    let data = common::random_bytes(7, size);
    let local_dir = tempfile::Builder::new()
        .prefix("meridian-bench-io-")
        .tempdir_in(".")
        .expect("dir");

    let lw = write_file(&local_dir.path().join("f"), &data);
    let mw = write_file(&mnt.path.join("f"), &data);
    drop_page_cache();
    let (lr, lh) = read_file(&local_dir.path().join("f"));
    drop(mnt);
    let cold = region.mount("cold").expect("second mount");
    let (mr, mh) = read_file(&cold.path.join("f"));
    assert_eq!(lh, mh, "the mount returns the bytes written");
    println!(
        "sequential write + fsync, {} MiB: local disk {lw:.0} MiB/s, meridian (R=3) {mw:.0} MiB/s ({:.2}x)",
        size >> 20,
        mw / lw
    );
    println!(
        "sequential cold read, {} MiB: local disk {lr:.0} MiB/s, meridian {mr:.0} MiB/s ({:.2}x)",
        size >> 20,
        mr / lr
    );
}
