#!/usr/bin/env python3
"""How long a region's clients wait while a copy its leader left unfinished is removed.

    scripts/copy_abort_stall.py MERIDIAN_BIN [--files N] [--at FRACTION] [--keep]

Starts `meridian dev` (one region) in a temporary folder, fills its default volume with N
files of 100 bytes (directories of 1,000; four writers at once), starts `meridian admin
volume-snapshot default snap`, and once the copy holds FRACTION of the volume's inodes
kills its leader (SIGKILL) and the snapshot command (nobody asks for the copy again). The
next leader's sweep removes the unfinished copy (`metaserver/src/copy.rs`, once a
second). Meanwhile one process creates empty files one
after another (each closed: one durable round) in the mount. Prints the slowest creates
after the kill (when, how long), the creates' p50 and p99 from 3 s after the kill on
(the election behind), and the removal's lines from the new leader's log.
docs/PERFORMANCE.md, fifty-fourth round.
"""

import argparse
import glob
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time

from rig import fill, stop, wait_mount


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin")
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--at", type=float, default=0.8,
                    help="the share of the volume's inodes copied when the leader is killed")
    ap.add_argument("--keep", action="store_true", help="keep the rig's folder")
    a = ap.parse_args()
    top = tempfile.mkdtemp(prefix="copy-abort-stall.")
    data, mnt = os.path.join(top, "data"), os.path.join(top, "mnt")
    os.makedirs(mnt)
    log = open(os.path.join(top, "dev.log"), "w")
    # Its own process group: whatever it started goes with it at the end.
    dev = subprocess.Popen([a.bin, "dev", "--data", data, "--mount", mnt],
                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_mount(mnt, dev, "dev")
        text = ""
        for _ in range(120):
            text = open(os.path.join(top, "dev.log")).read()
            if "logs in" in text:
                break
            time.sleep(0.25)
        meta = re.search(r"region 1 metaservers: (\S+)", text).group(1)
        pids = {int(num): int(pid) for num, pid in
                re.findall(r"^1\s+meta\s+(\d+)\s+\S+\s+(\d+)", text, re.M)}
        admin = [a.bin, "admin", "--plaintext"]

        def run(*args):
            return subprocess.run(admin + list(args) + ["--meta", meta], check=True,
                                  capture_output=True, text=True).stdout

        tree = os.path.join(mnt, "tree")
        os.makedirs(tree)
        t = time.perf_counter()
        fill(tree, a.files)
        print(f"filled: {a.files} files in {time.perf_counter() - t:.1f} s")
        work = os.path.join(mnt, "creates")
        os.makedirs(work)

        snap = subprocess.Popen(admin + ["volume-snapshot", "--meta", meta, "default", "snap"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        killed = {}

        def kill_leader():
            while snap.poll() is None:
                try:
                    listed = json.loads(run("snapshots", "--json"))
                except (subprocess.CalledProcessError, json.JSONDecodeError):
                    listed = []
                copying = next((v["copying"] for v in listed
                                if v["name"] == "snap" and v.get("copying")), None)
                if copying and copying["inodes"] and copying["copied"] >= a.at * copying["inodes"]:
                    leader = json.loads(run("meta-status", "--json"))[0]["leader"]
                    os.kill(pids[leader], signal.SIGKILL)
                    # Nobody asks for the copy again: the next leader's sweep removes it.
                    snap.kill()
                    killed.update(at=time.perf_counter(), leader=leader,
                                  copied=copying["copied"], inodes=copying["inodes"])
                    return
                time.sleep(0.02)

        killer = threading.Thread(target=kill_leader)
        start = time.perf_counter()
        wall = time.time()
        killer.start()
        lat = []
        i = 0
        while killer.is_alive() or time.perf_counter() < killed.get("at", 0) + 12:
            t = time.perf_counter()
            with open(os.path.join(work, "c%06d" % i), "wb"):
                pass
            lat.append((t - start, (time.perf_counter() - t) * 1000))
            i += 1
        killer.join()
        snap.wait()
        if "at" not in killed:
            raise SystemExit("the snapshot finished before the leader was killed")
        k = killed["at"] - start
        print(f"killed leader {killed['leader']} with {killed['copied']} of "
              f"{killed['inodes']} inodes copied, at {k:.2f} s")
        after = [(at - k, ms) for at, ms in lat if at >= k - 0.5]
        slowest = sorted(sorted(after, key=lambda x: -x[1])[:6])
        print("slowest creates after the kill (s after it: ms):",
              ", ".join(f"{at:.2f}:{ms:.1f}" for at, ms in slowest))
        print("  at (UTC):", ", ".join(
            time.strftime("%H:%M:%S", time.gmtime(wall + k + at))
            + f".{int((wall + k + at) % 1 * 1000):03d}" for at, _ in slowest))
        settled = sorted(ms for at, ms in after if at >= 3)
        if settled:
            print(f"from 3 s after the kill: {len(settled)} creates, "
                  f"p50 {settled[len(settled) // 2]:.1f} ms, "
                  f"p99 {settled[len(settled) * 99 // 100]:.1f} ms, max {settled[-1]:.1f} ms")
        for path in sorted(glob.glob(os.path.join(data, "**", "meta-*.log"), recursive=True)):
            for line in open(path, errors="replace"):
                if "unfinished" in line:
                    print(os.path.basename(path), line.strip()[-160:])
    finally:
        stop((dev,), dev, (mnt,), top, a.keep)


if __name__ == "__main__":
    main()
