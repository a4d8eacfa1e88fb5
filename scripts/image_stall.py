#!/usr/bin/env python3
"""How long a region's clients wait while it builds a volume's image for a region joining it.

    scripts/image_stall.py MERIDIAN_BIN [--files N] [--creates N] [--keep]

Starts `meridian dev --regions 2` in a temporary folder, makes a volume "big" that lives
in region 1 alone, fills it with N files of 100 bytes (in directories of 1,000, four
writers at once), then creates empty files one after another (each closed: one durable
round) in region 1's default volume while `meridian admin volume-add-region big 2
--follow` brings the volume into region 2 (started 1 s into the creates). Region 1's
leader builds the image then (`metaserver/src/backfill/serve.rs`). Prints the add's own time,
the creates' rate, the slowest creates (when, how long), and the image's size and build
time from the leader's log, and every metaserver's peak resident memory. Run it on a fresh rig per build, alternated
(docs/PERFORMANCE.md, fifty-second round).
"""

import argparse
import glob
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time


def wait_mount(path, proc, what):
    for _ in range(480):
        if os.path.ismount(path):
            return
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited: {proc.returncode}")
        time.sleep(0.25)
    raise SystemExit(f"{what}: no mount at {path}")


def fill(root, files, writers=4):
    per = 1000
    dirs = (files + per - 1) // per

    def work(k):
        for d in range(k, dirs, writers):
            sub = os.path.join(root, "d%04d" % d)
            os.mkdir(sub)
            for i in range(min(per, files - d * per)):
                with open(os.path.join(sub, "f%04d" % i), "wb") as f:
                    f.write(b"x" * 100)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin")
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--creates", type=int, default=30000)
    ap.add_argument("--keep", action="store_true", help="keep the rig's folder")
    a = ap.parse_args()
    top = tempfile.mkdtemp(prefix="image-stall.")
    data, mnt, big = (os.path.join(top, x) for x in ("data", "mnt", "big"))
    os.makedirs(mnt)
    os.makedirs(big)
    log = open(os.path.join(top, "dev.log"), "w")
    dev = subprocess.Popen([a.bin, "dev", "--regions", "2", "--data", data, "--mount", mnt],
                           stdout=log, stderr=subprocess.STDOUT)
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
        fill(big, a.files)
        print(f"filled: {a.files} files in {time.perf_counter() - t:.1f} s")

        work = os.path.join(mnt, "1", "image-stall")
        os.makedirs(work)
        added = {}

        def add():
            time.sleep(1.0)
            t = time.perf_counter()
            subprocess.run(admin + ["volume-add-region", "--meta", meta["1"],
                                    "--follow", meta["2"], "big", "2"],
                           check=True, stdout=subprocess.DEVNULL)
            added["ms"] = (time.perf_counter() - t) * 1000
            added["at"] = time.perf_counter()

        adder = threading.Thread(target=add)
        start = time.perf_counter()
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
        text = open(os.path.join(top, "dev.log")).read()
        for region, role, num, pid in re.findall(r"^(\d)\s+(meta)\s+(\d)\s+\S+\s+(\d+)", text,
                                                re.M):
            try:
                status = open(f"/proc/{pid}/status").read()
                peak = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) // 1024
                print(f"region {region} meta {num}: peak RSS {peak} MiB")
            except (OSError, AttributeError):
                pass
        for path in sorted(glob.glob(os.path.join(data, "region-*", "meta-*.log"))):
            for line in open(path, errors="replace"):
                if "built a volume image" in line or "received a volume image" in line:
                    print(os.path.basename(path), line.strip()[-200:])
    finally:
        for proc in (mount, dev):
            if proc is None:
                continue
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for m in (big, os.path.join(mnt, "1"), os.path.join(mnt, "2")):
            if os.path.ismount(m):
                subprocess.run(["fusermount3", "-uz", m])
        if not a.keep:
            shutil.rmtree(top, ignore_errors=True)
        else:
            print("kept", top)


if __name__ == "__main__":
    main()
