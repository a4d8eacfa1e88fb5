#!/usr/bin/env python3
"""A million empty files through a FUSE mount: the create rate per tenth, memory, stat, list.

    scripts/scale_fuse.py MOUNTPOINT [FILES]      (as root: it drops the host's caches)

Four processes create FILES (default 1,000,000) empty files over 1,000 directories under
MOUNTPOINT/scale, each create closed at once (one durable change each; the mount
batches those of the four). Per tenth it prints the create rate and the resident memory of
the mount's serving process and of the first metaserver (found by their command lines, as
the bench's rig `../shared/bench/peers/meridian.sh` starts them); then stats every file
after dropping the caches and again warm (four processes), and lists every directory
after dropping the caches again. docs/PERFORMANCE.md, "Scale", has its figures.
"""
import os, sys, time, subprocess, multiprocessing as mp
from rig_memory import rss
mnt = sys.argv[1]; total = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
procs = 4; dirs = 1000; per_dir = total // dirs
base = os.path.join(mnt, "scale"); os.makedirs(base, exist_ok=True)
def worker(k, q):
    for d in range(k, dirs, procs):
        dp = os.path.join(base, "d%04d" % d); os.mkdir(dp)
        for i in range(per_dir):
            os.close(os.open(os.path.join(dp, "f%05d" % i), os.O_CREAT | os.O_WRONLY, 0o644))
        q.put(per_dir)
q = mp.Queue(); ws = [mp.Process(target=worker, args=(k, q)) for k in range(procs)]
t0 = time.time(); [w.start() for w in ws]
done = 0; mark = total // 10; last = t0; nxt = mark
while done < total:
    done += q.get()
    if done >= nxt:
        now = time.time()
        print(f"{done:>9,} files  {mark / (now - last):>7,.0f} files/s  mount RSS {rss('serve-fd')} MiB  leader RSS {rss('meta --id 1')} MiB", flush=True)
        last = now; nxt += mark
[w.join() for w in ws]
t = time.time() - t0
print(f"create, whole run: {total / t:,.0f} files/s ({t:.0f} s)", flush=True)
subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"])
def stat_all(k, q):
    n = 0
    for d in range(k, dirs, procs):
        dp = os.path.join(base, "d%04d" % d)
        for i in range(per_dir):
            os.stat(os.path.join(dp, "f%05d" % i)); n += 1
    q.put(n)
for label in ("cold", "warm"):
    t0 = time.time(); ws = [mp.Process(target=stat_all, args=(k, q)) for k in range(procs)]
    [w.start() for w in ws]; n = sum(q.get() for _ in ws); [w.join() for w in ws]
    print(f"stat {label}: {n / (time.time() - t0):,.0f} files/s", flush=True)
subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"])
t0 = time.time(); n = 0
for d in range(dirs):
    n += len(os.listdir(os.path.join(base, "d%04d" % d)))
print(f"list cold: {n / (time.time() - t0):,.0f} entries/s ({n:,} entries)", flush=True)
print(f"mount RSS {rss('serve-fd')} MiB, leader RSS {rss('meta --id 1')} MiB", flush=True)
