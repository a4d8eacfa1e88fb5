#!/usr/bin/env python3
"""A mount's memory while it makes files in new directories, round after round.

    scripts/lease_memory.py MOUNTPOINT ROUNDS      (as root: it drops the host's caches)

Each round, four processes make 100,000 empty files in 100 new directories under
MOUNTPOINT/rN (each closed at once); then the host's caches are dropped (the kernel
forgets every inode, so what the mount still holds is its own) and the round's create
rate and the resident memory of the mount's serving process (found by its command line,
as the bench's rig `../shared/bench/peers/meridian.sh` starts it) are printed.
docs/PERFORMANCE.md, "Scale", "Through a mount", has its figures.
"""
import os, sys, time, subprocess, multiprocessing as mp
from rig_memory import rss
mnt = sys.argv[1]; rounds = int(sys.argv[2])
def worker(r, k):
    for d in range(k, 100, 4):
        dp = os.path.join(mnt, "r%d" % r, "d%03d" % d); os.makedirs(dp)
        for i in range(1000):
            os.close(os.open(os.path.join(dp, "f%04d" % i), os.O_CREAT | os.O_WRONLY, 0o644))
for r in range(rounds):
    os.makedirs(os.path.join(mnt, "r%d" % r))
    t0 = time.time()
    ws = [mp.Process(target=worker, args=(r, k)) for k in range(4)]
    [w.start() for w in ws]; [w.join() for w in ws]
    t = time.time() - t0
    subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"])
    time.sleep(2)  # the kernel's forgets reach the mount after drop_caches returns
    print(f"round {r+1}: {(r+1)*100_000:>9,} files, {100_000/t:,.0f} creates/s, mount RSS {rss('serve-fd')} MiB", flush=True)
