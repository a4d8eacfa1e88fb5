#!/usr/bin/env python3
"""How long other clients' changes wait while a volume leaves a region holding many inodes.

    scripts/leave_stall.py --mount MOUNT_1 --meta1 ADDRS --meta2 ADDRS [--files N]
                           [--small M] [--seconds S] [--meridian BIN]

Against `meridian dev --regions 2` (MOUNT_1: its mount of the default volume in region 1;
ADDRS: the metaservers it prints for regions 1 and 2): fills the default volume with N
empty files through MOUNT_1 (four processes), creates volume "leaving" in regions 1 and
2, mounts it in region 1 and makes M empty files in it, unmounts it, then removes region
1 from it (`admin volume-remove-region`, run in region 2) while a loop of creates runs in
MOUNT_1 for S seconds. Region 1 drops its copy of "leaving" in steps once both regions
have settled past the removal: the loop's slowest creates show what each step holds.
docs/PERFORMANCE.md, fiftieth round.
"""

import argparse
import os
import subprocess
import tempfile
import time
from multiprocessing import Pool


def make(args):
    root, part, n = args
    d = os.path.join(root, "p%d" % part)
    for i in range(n):
        sub = os.path.join(d, "s%03d" % (i // 1000))
        if i % 1000 == 0:
            os.makedirs(sub, exist_ok=True)
        os.close(os.open(os.path.join(sub, "f%06d" % i), os.O_CREAT | os.O_WRONLY, 0o644))


def fill(root, n):
    with Pool(4) as pool:
        pool.map(make, [(root, p, n // 4) for p in range(4)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mount", required=True, help="region 1's mount of the default volume")
    ap.add_argument("--meta1", required=True)
    ap.add_argument("--meta2", required=True)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--name", default="leaving", help="the volume that leaves (new)")
    ap.add_argument("--meridian", default="target/release/meridian")
    a = ap.parse_args()

    def admin(meta, *args):
        subprocess.run([a.meridian, "admin", *args, "--plaintext", "--meta", meta],
                       check=True, stdout=subprocess.DEVNULL)

    if a.files > 0:
        t = time.perf_counter()
        fill(os.path.join(a.mount, "leave-stall-filler"), a.files)
        print("filler: %d files in %.0f s" % (a.files, time.perf_counter() - t))
    admin(a.meta1, "volume-create", a.name, "--regions", "1,2")
    mnt = tempfile.mkdtemp(prefix="leave-stall-")
    m = subprocess.Popen([a.meridian, "mount", "--meta", a.meta1, "--volume", a.name, mnt],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if os.path.ismount(mnt):
                break
            time.sleep(0.1)
        fill(mnt, a.small)
        os.sync()
    finally:
        subprocess.run(["fusermount3", "-u", mnt], check=False)
        m.wait()
        os.rmdir(mnt)
    work = os.path.join(a.mount, "leave-stall-creates.%d" % os.getpid())
    os.makedirs(work)
    start = time.perf_counter()
    admin(a.meta2, "volume-remove-region", a.name, "1")
    lat = []
    i = 0
    while time.perf_counter() - start < a.seconds:
        t = time.perf_counter()
        os.close(os.open(os.path.join(work, "c%06d" % i), os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                         0o644))
        lat.append((t - start, time.perf_counter() - t))
        i += 1
    slowest = sorted(sorted(lat, key=lambda x: -x[1])[:10])
    over = [d for _, d in lat if d > 0.05]
    print("%d creates in %.0f s; %d waited over 50 ms; slowest (at s: ms): %s" % (
        i, a.seconds, len(over),
        ", ".join("%.2f: %.1f" % (at, d * 1000) for at, d in slowest)))


if __name__ == "__main__":
    main()
