#!/usr/bin/env python3
"""How long other clients' changes wait while one commit drops many small extents.

    scripts/commit_over_pieces.py MOUNT_DIR [MIB]

Writes a file of MIB MiB (64 by default: what the mount commits at most at once) in
4 KiB pieces, every other piece first and then the rest, each pass made durable, so
that it holds MIB x 256 extents; then, 1 s into a loop of creates (each closed: one
durable round) in the same mount, rewrites it whole with one write and an fsync: one
commit whose entry drops every piece. The file stays open throughout, so that nothing
compacts it. Prints the rewrite's time and the slowest creates (when, how long).
docs/PERFORMANCE.md, fifty-fifth round.
"""

import os
import sys
import threading
import time


def main():
    mnt = sys.argv[1]
    mib = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    work = os.path.join(mnt, "commit-over-pieces.%d" % os.getpid())
    os.makedirs(os.path.join(work, "creates"))
    big = os.path.join(work, "pieces.dat")
    fd = os.open(big, os.O_CREAT | os.O_RDWR, 0o644)
    n = mib * 256
    for first in (0, 1):
        for i in range(first, n, 2):
            os.pwrite(fd, b"a" * 4096, i * 4096)
        os.fsync(fd)
    print("written in", n, "pieces", flush=True)
    lat, done = [], {}
    start = time.perf_counter()

    def rewrite():
        time.sleep(1.0)
        t = time.perf_counter()
        os.pwrite(fd, b"b" * (mib << 20), 0)
        os.fsync(fd)
        done["at"], done["ms"] = t - start, (time.perf_counter() - t) * 1000

    th = threading.Thread(target=rewrite)
    th.start()
    i = 0
    while th.is_alive() or time.perf_counter() - start < 3:
        t = time.perf_counter()
        name = os.path.join(work, "creates", "f%06d" % i)
        os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        lat.append((t - start, time.perf_counter() - t))
        i += 1
    th.join()
    slowest = sorted(sorted(lat, key=lambda x: -x[1])[:6])
    print("rewrite at %.2f s took %.1f ms; %d creates; slowest (at s: ms): %s" % (
        done["at"], done["ms"], i, ", ".join("%.2f: %.1f" % (a, d * 1000) for a, d in slowest)))
    os.close(fd)
    for k in range(i):
        os.unlink(os.path.join(work, "creates", "f%06d" % k))
    os.rmdir(os.path.join(work, "creates"))
    os.unlink(big)
    os.rmdir(work)


if __name__ == "__main__":
    main()
