#!/usr/bin/env python3
"""Where a loop's cycles wait: every process's scheduling and hops, traced at once.

    scripts/trace_cycles.py --marker COMM:SYSCALL [--seconds S] [--show N] [--slow-us U]

Run it (as root, with `perf` installed: Debian's linux-perf) while a loop runs against a
Meridian mount on this machine (the rig of ../shared/bench/peers/meridian.sh, say:
`fio --fsync=1 ...` or a loop of creates). For S seconds (default 1) it records the
scheduler's switch and wake-up tracepoints and the syscalls that mark each hop
(`writev`, `recvfrom`, `fdatasync`, `epoll_wait`, `openat`, `pwrite64`, `close`,
`fsync`) on every processor, then:

- cuts the trace into cycles at each entry of SYSCALL by the process named COMM (the
  loop's own call that starts a cycle: `python3:openat` for a loop of creates,
  `fio:pwrite64` for fio's fsync'd writes);
- prints the cycles' lengths (p10, p50, p90, p99, mean) and the share of the time in
  cycles longer than U µs (default 1,500);
- prints, per thread, the µs it ran in an average fast and an average slow cycle:
  what runs only in slow cycles is what they wait for. Meridian's threads are named by
  role: m<id> a metaserver, C<id> a chunkserver, M the mount's serving process;
- with --syncs, prints per thread the `fdatasync`s that ended in fast and in slow cycles
  and their mean length: whether the slow cycles wait on the disk;
- with --show N, prints the N-th cycle's events in order (time from its start, the
  processor, the thread, the event).

The tracepoints of `read` and `write` are left out: `perf`'s own writes would drown them.
"""

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

EVENTS = [
    "sched:sched_switch",
    "sched:sched_wakeup",
    "syscalls:sys_enter_writev",
    "syscalls:sys_exit_recvfrom",
    "syscalls:sys_enter_fdatasync",
    "syscalls:sys_exit_fdatasync",
    "syscalls:sys_enter_epoll_wait",
    "syscalls:sys_exit_epoll_wait",
    "syscalls:sys_enter_openat",
    "syscalls:sys_enter_pwrite64",
    "syscalls:sys_enter_close",
    "syscalls:sys_exit_close",
    "syscalls:sys_enter_fsync",
    "syscalls:sys_exit_fsync",
]

LINE = re.compile(r"\s*(.+?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)")
SWITCH = re.compile(
    r"prev_comm=(.*?) prev_pid=(\d+).*prev_state=(\S+) ==> next_comm=(.*?) next_pid=(\d+)"
)
WAKEUP = re.compile(r"comm=(.*?) pid=(\d+).*target_cpu=(\d+)")


def roles():
    """Thread id -> a label: the Meridian process's role and the thread's name."""
    out = subprocess.run(["pgrep", "-af", "meridian"], capture_output=True, text=True)
    procs = {}
    for line in out.stdout.splitlines():
        pid, cmd = line.split(" ", 1)
        if " meta --id " in cmd:
            procs[int(pid)] = "m" + cmd.split(" meta --id ")[1].split()[0]
        elif " chunk --id " in cmd:
            procs[int(pid)] = "C" + cmd.split(" chunk --id ")[1].split()[0]
        elif "--serve-fd" in cmd:
            procs[int(pid)] = "M"
    labels = {}
    for pid, role in procs.items():
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    labels[int(tid)] = f"{role}:{f.read().strip()[:12]}"
            except OSError:
                pass
    return labels


def record(seconds, path):
    cmd = ["perf", "record", "-a", "-m", "1024", "-o", path]
    for e in EVENTS:
        cmd += ["-e", e]
    cmd += ["--", "sleep", str(seconds)]
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
    script = subprocess.run(
        ["perf", "script", "-i", path, "-F", "comm,pid,tid,cpu,time,event,trace"],
        check=True,
        capture_output=True,
        text=True,
    )
    events = []
    for line in script.stdout.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        comm, _pid, tid, cpu, t, event, rest = m.groups()
        if comm in ("perf", "sleep"):
            continue
        events.append(
            (float(t) * 1e6, int(cpu), int(tid), comm, event.split(":")[-1], rest)
        )
    return events


def percentile(sorted_values, p):
    return sorted_values[min(len(sorted_values) - 1, len(sorted_values) * p // 100)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--marker", required=True, help="COMM:SYSCALL that starts a cycle")
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--slow-us", type=float, default=1500.0)
    ap.add_argument("--syncs", action="store_true", help="print the fdatasyncs per thread")
    ap.add_argument("--show", type=int, help="print this cycle's events")
    a = ap.parse_args()
    comm, syscall = a.marker.split(":", 1)
    labels = roles()

    def label(tid, name):
        return labels.get(tid, f"{name[:10]}/{tid}" if tid else name[:10])

    with tempfile.TemporaryDirectory() as d:
        events = record(a.seconds, os.path.join(d, "perf.data"))
    starts = [
        i
        for i, e in enumerate(events)
        if e[3] == comm and e[4] == f"sys_enter_{syscall}"
    ]
    if len(starts) < 3:
        sys.exit(f"fewer than three cycles marked by {a.marker} in the trace")
    cycles = [(events[i][0], events[j][0]) for i, j in zip(starts, starts[1:])]
    lengths = sorted(b - s for s, b in cycles)
    total = sum(lengths)
    slow_time = sum(x for x in lengths if x > a.slow_us)
    print(
        f"{len(lengths)} cycles: p10 {percentile(lengths, 10):.0f} p50 "
        f"{percentile(lengths, 50):.0f} p90 {percentile(lengths, 90):.0f} p99 "
        f"{percentile(lengths, 99):.0f} mean {total / len(lengths):.0f} µs; "
        f"{100 * slow_time / total:.0f}% of the time in cycles over {a.slow_us:.0f} µs"
    )

    # Each thread's runs on a processor, from the switches.
    runs = []
    on_cpu = {}
    for t, cpu, _tid, _comm, event, rest in events:
        if event != "sched_switch":
            continue
        m = SWITCH.search(rest)
        if not m:
            continue
        prev, nxt = int(m.group(2)), int(m.group(5))
        if cpu in on_cpu and on_cpu[cpu][0] == prev:
            runs.append((on_cpu[cpu][1], t, label(prev, m.group(1))))
        on_cpu[cpu] = (nxt, t)
    ran = {False: collections.Counter(), True: collections.Counter()}
    count = {False: 0, True: 0}
    runs.sort()
    first = 0
    for s, b in cycles:
        slow = b - s > a.slow_us
        count[slow] += 1
        while first < len(runs) and runs[first][1] <= s:
            first += 1
        for rs, re_, who in runs[first:]:
            if rs >= b:
                break
            overlap = min(re_, b) - max(rs, s)
            if overlap > 0:
                ran[slow][who] += overlap
    print(
        f"\n{'thread':<26} {'µs/fast':>9} {'µs/slow':>9}   "
        f"({count[False]} fast, {count[True]} slow)"
    )
    threads = set(ran[False]) | set(ran[True])
    per = lambda slow, who: ran[slow][who] / max(count[slow], 1)  # noqa: E731
    for who in sorted(threads, key=lambda w: -per(True, w) - per(False, w))[:25]:
        print(f"{who:<26} {per(False, who):>9.0f} {per(True, who):>9.0f}")

    if a.syncs:
        print_syncs(events, cycles, a.slow_us, label)

    if a.show is not None:
        k = a.show
        if not 0 <= k < len(starts) - 1:
            sys.exit(f"no cycle {k}: the trace has {len(starts) - 1}")
        t0 = events[starts[k]][0]
        print(f"\ncycle {k}, {events[starts[k + 1]][0] - t0:.0f} µs")
        for t, cpu, tid, name, event, rest in events[starts[k] : starts[k + 1]]:
            if event == "sched_switch":
                m = SWITCH.search(rest)
                what = (
                    f"{label(int(m.group(2)), m.group(1))} [{m.group(3)}] -> "
                    f"{label(int(m.group(5)), m.group(4))}"
                    if m
                    else rest
                )
            elif event == "sched_wakeup":
                m = WAKEUP.search(rest)
                what = (
                    f"wakes {label(int(m.group(2)), m.group(1))} on cpu {m.group(3)}"
                    if m
                    else rest
                )
            else:
                what = rest[:48]
            print(f"{t - t0:8.0f} cpu{cpu} {label(tid, name):<24} {event:<22} {what}")


def print_syncs(events, cycles, slow_us, label):
    """Each thread's fdatasyncs that ended in fast and in slow cycles: count per cycle and
    mean length."""
    began = {}
    syncs = []  # (end, length, thread)
    for t, _cpu, tid, name, event, _rest in events:
        if event == "sys_enter_fdatasync":
            began[tid] = t
        elif event == "sys_exit_fdatasync" and tid in began:
            syncs.append((t, t - began.pop(tid), label(tid, name)))
    syncs.sort()
    took = {False: collections.defaultdict(list), True: collections.defaultdict(list)}
    count = {False: 0, True: 0}
    first = 0
    for s, b in cycles:
        slow = b - s > slow_us
        count[slow] += 1
        while first < len(syncs) and syncs[first][0] < s:
            first += 1
        for end, length, who in syncs[first:]:
            if end >= b:
                break
            took[slow][who].append(length)
    print(
        f"\n{'fdatasyncs of':<26} {'n/fast':>7} {'µs':>6} {'n/slow':>7} {'µs':>6}"
    )
    for who in sorted(set(took[False]) | set(took[True])):
        row = []
        for slow in (False, True):
            ls = took[slow][who]
            row += [len(ls) / max(count[slow], 1), sum(ls) / len(ls) if ls else 0]
        print(f"{who:<26} {row[0]:>7.2f} {row[1]:>6.0f} {row[2]:>7.2f} {row[3]:>6.0f}")


if __name__ == "__main__":
    main()
