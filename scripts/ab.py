#!/usr/bin/env python3
"""Two builds of meridian compared on the bench's rig, alternated, with the noise shown.

    scripts/ab.py A_BIN B_BIN [--rounds N] [--env-a K=V ...] [--env-b K=V ...]   (as root)

Each round brings up a fresh rig with each build in turn (the shared bench's
`peers/meridian.sh`: `meridian dev` with three metaservers and three chunkservers, and a
mount; BENCH_DIR defaults to ../shared/bench), the order swapped every round, and times
on it:

- creates: 3,000 empty files created and closed in one directory (one durable round each);
- fsync'd 4 KiB writes: fio, random 4 KiB writes with an fsync after each, 6 s on a fresh
  64 MiB file;
- 16 KiB files: 1,000 written and closed, then 300 written, fsync'd and closed.

Prints each round's figures, then per workload the mean and standard deviation of each
build, B's mean over A's, and Welch's t. On this project's 2-core test host one rig's
figures move by ±8% from minute to minute and drift over an hour, so a difference
measured without alternating, or with fewer than about five rounds, is not a result:
|t| below about 2.5 is noise (an A/A run, the same build in both arms, gave ratios of
0.90 to 1.03 and |t| up to 0.87 in eight rounds). An `--env-a`/`--env-b` setting is given to that build's
processes (a probe behind an environment switch needs no second build). `--rig SCRIPT`
brings up another rig instead (`scripts/slow_member_rig.sh`: one member's disk slow).
"""

import argparse
import json
import math
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.environ.get("BENCH_DIR", os.path.join(HERE, "..", "..", "shared", "bench"))

LOOPS = r"""
import os, sys, time
base = sys.argv[1]
out = {}
def timed(name, n, body):
    t = time.time()
    for i in range(n):
        body(i)
    out[name] = n / (time.time() - t)
d = os.path.join(base, "cr"); os.mkdir(d)
timed("creates/s", 3000, lambda i: os.close(os.open(os.path.join(d, "f%d" % i), os.O_CREAT | os.O_WRONLY, 0o644)))
data = os.urandom(16384)
def small(d, sync):
    def body(i):
        fd = os.open(os.path.join(d, "f%d" % i), os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        os.write(fd, data)
        if sync:
            os.fsync(fd)
        os.close(fd)
    return body
d = os.path.join(base, "sm"); os.mkdir(d)
timed("16KiB files/s", 1000, small(d, False))
d = os.path.join(base, "sy"); os.mkdir(d)
timed("16KiB fsync'd files/s", 300, small(d, True))
import json
print(json.dumps(out))
"""


def rig(binary, env, script=None):
    """Runs the workloads on a fresh rig of `binary` (brought up and down by `script`,
    the bench's by default); their figures."""
    e = dict(os.environ, MERIDIAN_BIN=binary, **env)
    peers = script or os.path.join(BENCH, "peers", "meridian.sh")
    up = subprocess.run([peers, "up"], env=e, capture_output=True, text=True, check=True)
    mnt = up.stdout.strip().splitlines()[-1]
    try:
        out = {}
        fio = subprocess.run(
            ["fio", "--name=w", "--filename=" + os.path.join(mnt, "fio.dat"), "--size=64M",
             "--rw=randwrite", "--bs=4k", "--fsync=1", "--runtime=6", "--time_based",
             "--ioengine=psync", "--output-format=terse"],
            env=e, capture_output=True, text=True, check=True)
        out["fsync'd 4KiB IOPS"] = float(fio.stdout.strip().splitlines()[-1].split(";")[48])
        loops = subprocess.run([sys.executable, "-c", LOOPS, mnt], env=e,
                               capture_output=True, text=True, check=True)
        out.update(json.loads(loops.stdout.strip().splitlines()[-1]))
        return out
    finally:
        subprocess.run([peers, "down"], env=e, capture_output=True)


def stats(xs):
    m = sum(xs) / len(xs)
    var = sum((x - m) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else 0.0
    return m, math.sqrt(var)


def welch(a, b):
    (ma, sa), (mb, sb) = stats(a), stats(b)
    se = math.sqrt(sa * sa / len(a) + sb * sb / len(b))
    return (mb - ma) / se if se > 0 else float("nan")


def env_of(pairs):
    out = {}
    for p in pairs or []:
        k, _, v = p.partition("=")
        out[k] = v
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--env-a", action="append")
    p.add_argument("--env-b", action="append")
    p.add_argument("--rig", help="a script with up|down bringing the rig up (printing its "
                   "mount point) and down (default: the bench's peers/meridian.sh)")
    args = p.parse_args()
    builds = {"A": (os.path.abspath(args.a), env_of(args.env_a)),
              "B": (os.path.abspath(args.b), env_of(args.env_b))}
    results = {"A": [], "B": []}
    for r in range(args.rounds):
        order = ["A", "B"] if r % 2 == 0 else ["B", "A"]
        for name in order:
            binary, env = builds[name]
            figures = rig(binary, env, args.rig)
            results[name].append(figures)
            print(f"round {r + 1} {name}: " + ", ".join(f"{k} {v:,.0f}" for k, v in figures.items()),
                  flush=True)
    print()
    print(f"{'workload':<24} {'A mean ± sd':>18} {'B mean ± sd':>18} {'B ÷ A':>7} {'t':>6}")
    for k in results["A"][0]:
        a = [f[k] for f in results["A"]]
        b = [f[k] for f in results["B"]]
        (ma, sa), (mb, sb) = stats(a), stats(b)
        print(f"{k:<24} {ma:>10,.0f} ± {sa:>5,.0f} {mb:>10,.0f} ± {sb:>5,.0f} {mb / ma:>7.3f} {welch(a, b):>6.2f}")


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("run as root: the rig mounts with --allow-other")
    t = time.time()
    main()
    print(f"({time.time() - t:.0f} s)")
