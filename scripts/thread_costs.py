#!/usr/bin/env python3
"""What each thread of a Meridian rig spends per operation of a loop: processor time and sleeps.

    scripts/thread_costs.py [--min-us U] -- COMMAND ...

Run it (as root) while a Meridian rig runs on this machine (the bench's
../shared/bench/peers/meridian.sh, whose mount is where COMMAND works). It reads every
Meridian process's threads (`/proc/PID/task/*`: processor ticks, voluntary and
involuntary context switches) before and after COMMAND, which prints the number of
operations it made as the last word of its output (a `fio` job piped through `awk`,
say), and prints per role and thread name the processor µs, the sleeps (voluntary
switches) and the preemptions (involuntary ones) per operation. Roles: `meta<id>` a
metaserver, `chunk<id>` a chunkserver, `mount` the mount's serving process. Threads of
one name in one process are added up; rows under U µs per operation (default 5) are
left out.

Example (the thirty-third round's table in docs/PERFORMANCE.md):

    scripts/thread_costs.py -- sh -c "fio --name=w --filename=$MP/fio.dat --size=64M \\
        --rw=randwrite --bs=4k --fsync=1 --runtime=7 --time_based --ioengine=psync \\
        --output-format=terse | awk -F';' '{print \\$49 * 7}'"
"""

import argparse
import collections
import os
import re
import subprocess
import sys

TICK_US = 1_000_000 / os.sysconf("SC_CLK_TCK")


def role(pid):
    """The role of Meridian process `pid` (None for any other process)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return None
    args = [a.decode(errors="replace") for a in args if a]
    if not args or not os.path.basename(args[0]).startswith("meridian"):
        return None
    ident = args[args.index("--id") + 1] if "--id" in args[:-1] else ""
    for kind in ("meta", "chunk", "mount"):
        if kind in args[1:3]:
            return kind + ident
    return None


def snapshot():
    """(role, thread name) -> [ticks, voluntary, involuntary], over every Meridian thread."""
    totals = collections.defaultdict(lambda: [0, 0, 0])
    for pid in filter(str.isdigit, os.listdir("/proc")):
        r = role(pid)
        if r is None:
            continue
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            base = f"/proc/{pid}/task/{tid}"
            try:
                with open(f"{base}/stat") as f:
                    stat = f.read()
                with open(f"{base}/status") as f:
                    status = f.read()
            except OSError:
                continue
            # The name may hold spaces and parentheses: the fields follow the last ')'.
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            ticks = int(fields[11]) + int(fields[12])
            vol = int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1))
            invol = int(re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1))
            t = totals[(r, name)]
            t[0] += ticks
            t[1] += vol
            t[2] += invol
    return totals


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--min-us", type=float, default=5.0)
    p.add_argument("command", nargs=argparse.REMAINDER)
    a = p.parse_args()
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not command:
        p.error("no command to run")
    before = snapshot()
    if not before:
        sys.exit("no Meridian process is running here")
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()
    after = snapshot()
    try:
        ops = float(out[-1])
    except (IndexError, ValueError):
        sys.exit(f"the command printed no count of operations last: {' '.join(out[-3:])!r}")
    if ops <= 0:
        sys.exit("the command made no operations")
    print(f"{ops:,.0f} operations")
    print(f"{'role/thread':<32} {'cpu µs/op':>10} {'sleeps/op':>10} {'preempted/op':>13}")
    total = 0.0
    for key in sorted(after):
        b = before.get(key, [0, 0, 0])
        d = [x - y for x, y in zip(after[key], b)]
        us = d[0] * TICK_US / ops
        total += us
        if us < a.min_us:
            continue
        print(f"{key[0] + '/' + key[1]:<32} {us:>10.0f} {d[1] / ops:>10.2f} {d[2] / ops:>13.2f}")
    print(f"{'all Meridian threads':<32} {total:>10.0f}")


if __name__ == "__main__":
    main()
