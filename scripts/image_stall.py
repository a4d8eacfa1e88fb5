#!/usr/bin/env python3
"""How long a region's clients wait while a volume's image is built for a region joining it,
or installed there.

    scripts/image_stall.py MERIDIAN_BIN [--files N] [--per-dir N] [--creates N]
                           [--creates-in 1|2] [--timeout S] [--keep]

Starts `meridian dev --regions 2` in a temporary folder, makes a volume "big" that lives
in region 1 alone, fills it with N files of 100 bytes (in directories of 1,000, or
--per-dir; four writers at once), then creates empty files one after another (each
closed: one durable round) in region 1's default volume (or region 2's, --creates-in 2:
the region installing the image) while `meridian admin volume-add-region big 2
--follow` brings the volume into region 2 (started 1 s into the creates). Region 1's
leader builds the image then (`metaserver/src/backfill/serve.rs`). Prints the add's own time,
the creates' rate, the slowest creates (when, how long), and the image's size and build
time from the leader's log, the install's pieces, and every metaserver's peak resident
memory; --keep keeps the rig's folder with every process's log. Run it on a fresh rig per
build, alternated
(docs/PERFORMANCE.md, fifty-second and fifty-third rounds: with --per-dir 200000
--creates-in 2, a directory of 200,000 names installed in region 2).
"""

import argparse
import glob
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time

from rig import fill, stop, wait_mount


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin")
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--creates", type=int, default=30000)
    ap.add_argument("--per-dir", type=int, default=1000,
                    help="files in each directory of the volume (one directory: all of them)")
    ap.add_argument("--creates-in", type=int, choices=(1, 2), default=1,
                    help="the region whose clients create meanwhile: 1 builds the image, "
                         "2 installs it")
    ap.add_argument("--timeout", type=float, default=900,
                    help="seconds the add may take before it is called failed")
    ap.add_argument("--keep", action="store_true", help="keep the rig's folder")
    a = ap.parse_args()
    top = tempfile.mkdtemp(prefix="image-stall.")
    data, mnt, big = (os.path.join(top, x) for x in ("data", "mnt", "big"))
    os.makedirs(mnt)
    os.makedirs(big)
    log = open(os.path.join(top, "dev.log"), "w")
    # Its own process group: whatever it started goes with it at the end.
    dev = subprocess.Popen([a.bin, "dev", "--regions", "2", "--data", data, "--mount", mnt],
                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    mount = None
    try:
        wait_mount(os.path.join(mnt, "1"), dev, "dev")
        wait_mount(os.path.join(mnt, "2"), dev, "dev")
        meta = {}
        for _ in range(120):
            text = open(os.path.join(top, "dev.log")).read()
            meta = dict(re.findall(r"region (\d) metaservers: (\S+)", text))
            if "logs in" in text:
                break
            time.sleep(0.25)
        admin = [a.bin, "admin", "--plaintext"]
        subprocess.run(admin + ["volume-create", "--meta", meta["1"], "big"], check=True,
                       stdout=subprocess.DEVNULL)
        mount = subprocess.Popen([a.bin, "mount", "--plaintext", "--meta", meta["1"],
                                  "--volume", "big", big],
                                 stdout=log, stderr=subprocess.STDOUT)
        wait_mount(big, mount, "mount of big")
        t = time.perf_counter()
        fill(big, a.files, a.per_dir)
        print(f"filled: {a.files} files in {time.perf_counter() - t:.1f} s")

        work = os.path.join(mnt, str(a.creates_in), "image-stall")
        os.makedirs(work)
        added = {}

        def add():
            time.sleep(1.0)
            t = time.perf_counter()
            subprocess.run(admin + ["volume-add-region", "--meta", meta["1"],
                                    "--follow", meta["2"], "big", "2"],
                           check=True, stdout=subprocess.DEVNULL, timeout=a.timeout)
            added["ms"] = (time.perf_counter() - t) * 1000
            added["at"] = time.perf_counter()

        adder = threading.Thread(target=add)
        start = time.perf_counter()
        wall = time.time()
        adder.start()
        lat = []
        for i in range(a.creates):
            t = time.perf_counter()
            with open(os.path.join(work, "c%06d" % i), "wb"):
                pass
            lat.append((t - start, (time.perf_counter() - t) * 1000))
            if "at" in added and time.perf_counter() > added["at"] + 1.0:
                break
            if not adder.is_alive() and "at" not in added:
                raise SystemExit("volume-add-region failed")
        adder.join()
        took = lat[-1][0] + lat[-1][1] / 1000
        print(f"add-region (with --follow): {added['ms']:.0f} ms")
        print(f"creates: {len(lat)} in {took:.1f} s ({len(lat) / took:.0f}/s)")
        print("slowest creates (at s, ms):",
              ", ".join(f"{at:.2f}:{ms:.1f}" for at, ms in
                        sorted(lat, key=lambda x: -x[1])[:5]))
        print("  at (UTC):", ", ".join(
            time.strftime("%H:%M:%S", time.gmtime(wall + at)) + f".{int((wall + at) % 1 * 1000):03d}"
            for at, _ in sorted(lat, key=lambda x: -x[1])[:5]))
        over = sorted(ms for _, ms in lat)
        print(f"creates: p50 {over[len(over) // 2]:.1f} ms, p99 {over[len(over) * 99 // 100]:.1f} ms, "
              f"{sum(ms > 50 for ms in over)} over 50 ms")
        text = open(os.path.join(top, "dev.log")).read()
        for region, role, num, pid in re.findall(r"^(\d)\s+(meta)\s+(\d)\s+\S+\s+(\d+)", text,
                                                re.M):
            try:
                status = open(f"/proc/{pid}/status").read()
                peak = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) // 1024
                print(f"region {region} meta {num}: peak RSS {peak} MiB")
            except (OSError, AttributeError):
                pass
        if a.keep:
            logs = os.path.join(top, "logs")
            os.makedirs(logs, exist_ok=True)
            for path in glob.glob(os.path.join(data, "region-*", "*.log")):
                region = os.path.basename(os.path.dirname(path))
                shutil.copy(path, os.path.join(logs, region + "." + os.path.basename(path)))
        for path in sorted(glob.glob(os.path.join(data, "region-*", "meta-*.log"))):
            for line in open(path, errors="replace"):
                if any(w in line for w in ("built a volume image", "received a volume image",
                                           "brought into this region", "image does not")):
                    print(os.path.basename(path), line.strip()[-200:])
    finally:
        stop((mount, dev), dev, (big, os.path.join(mnt, "1"), os.path.join(mnt, "2")), top,
             a.keep)


if __name__ == "__main__":
    main()
