#!/usr/bin/env python3
"""How long other clients' changes wait while a large snapshot is deleted.

    scripts/snapshot_stall.py MOUNT_DIR --meta ADDRS [--files N] [--rounds R]
                              [--meridian BIN]

Makes N files of 100 bytes in MOUNT_DIR/snapshot-stall (four processes, 1,000 a
directory; kept across runs, so a second run starts at once), then R times: snapshots the
mounted volume ("default") with `meridian admin volume-snapshot`, and deletes that
snapshot with `meridian admin volume-delete` 1 s into a loop of creates (each closed: one
durable round), at least 3 s long. Prints the deletion's own time and the slowest creates
(when, how long). Run against `meridian dev` (ADDRS: the metaservers it prints).
docs/PERFORMANCE.md, fiftieth round: 579 ms behind the deletion of a snapshot of 100,000
files when its tree went in one entry; steps of 15-21 ms since.
"""

import argparse
import os
import subprocess
import threading
import time
from multiprocessing import Pool


def make(args):
    root, part, n = args
    d = os.path.join(root, "p%d" % part)
    for i in range(n):
        sub = os.path.join(d, "s%03d" % (i // 1000))
        if i % 1000 == 0:
            os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, "f%06d" % i), "wb") as f:
            f.write(b"x" * 100)


def admin(a, *args):
    subprocess.run([a.meridian, "admin", *args, "--plaintext", "--meta", a.meta],
                   check=True, stdout=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--meta", required=True)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--meridian", default="target/release/meridian")
    a = ap.parse_args()
    tree = os.path.join(a.dir, "snapshot-stall")
    if not os.path.isdir(tree):
        with Pool(4) as pool:
            pool.map(make, [(tree, p, a.files // 4) for p in range(4)])
    work = os.path.join(a.dir, "snapshot-stall-creates.%d" % os.getpid())
    os.makedirs(work)
    for r in range(a.rounds):
        name = "stall%d-%d" % (os.getpid(), r)
        admin(a, "volume-snapshot", "default", name)
        took = {}

        def delete():
            time.sleep(1.0)
            t = time.perf_counter()
            admin(a, "volume-delete", name)
            took["ms"] = (time.perf_counter() - t) * 1000

        th = threading.Thread(target=delete)
        lat = []
        start = time.perf_counter()
        th.start()
        i = 0
        while th.is_alive() or time.perf_counter() - start < 3:
            t = time.perf_counter()
            path = os.path.join(work, "r%d-%06d" % (r, i))
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            lat.append((t - start, time.perf_counter() - t))
            i += 1
        th.join()
        slowest = sorted(sorted(lat, key=lambda x: -x[1])[:6])
        print("deletion %.1f ms; %d creates; slowest (at s: ms): %s" % (
            took["ms"], i, ", ".join("%.2f: %.1f" % (at, d * 1000) for at, d in slowest)))
        for j in range(i):
            os.unlink(os.path.join(work, "r%d-%06d" % (r, j)))
    os.rmdir(work)


if __name__ == "__main__":
    main()
