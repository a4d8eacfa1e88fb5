#!/usr/bin/env python3
"""How long other clients' changes wait while a file of many extents is removed or cut.

    scripts/removal_stall.py MOUNT_DIR [--creates N] [--truncate [--write-far] | --punch | --copy
                                        | --snapshot --meta ADDRS [--meridian BIN]]  (needs fio)

Writes the peers bench's fio file in MOUNT_DIR the way its jobs do (1 GiB sequential,
then 6 s of random 4 KiB direct writes and 6 s of fsync'd ones: about 150,000 extents on
Meridian), then creates N empty files one after another (each closed: one durable round)
while another thread removes the fio file 1 s in (with --truncate: opens it with O_TRUNC
and closes it; with --punch: punches a hole over all of it but its first and last 4 KiB
with `fallocate -p`; either after dropping the host's caches so that the kernel's own
release of the file's cached pages stays out of it; with --write-far, the truncate is
followed by setting the size back to 1 GiB and an fsync'd 4 KiB write at 7/8 of it, the
pattern of a database file recreated and written at random, and the write is timed too;
with --copy: copies it with `cp`, whose copy_file_range the servers make by sharing its
extents; with --snapshot: snapshots the mounted volume, "default", with `meridian admin
volume-snapshot`, a copy the leader makes in steps, and deletes the snapshot after).
Prints the removal's (or truncate's) own time, the
creates' rate, and the slowest creates (when, how long). Run it on a fresh rig per build,
alternated (docs/PERFORMANCE.md, forty-sixth round: 406-455 ms behind one removal before
the extents were dropped in steps, 22-31 ms after; forty-ninth round, the same for a
truncate and a hole).
"""

import argparse
import os
import subprocess
import threading
import time


def fio(path, *args):
    subprocess.run(
        ["fio", "--name=job", f"--filename={path}", "--ioengine=psync", "--iodepth=1",
         "--numjobs=1", "--fallocate=none", "--output-format=terse", *args],
        check=True, stdout=subprocess.DEVNULL)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--creates", type=int, default=3000)
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--truncate", action="store_true",
                     help="cut the file to nothing instead of removing it")
    how.add_argument("--punch", action="store_true",
                     help="punch a hole over the file instead of removing it")
    how.add_argument("--copy", action="store_true",
                     help="copy the file with cp instead of removing it")
    how.add_argument("--rewrite", action="store_true",
                     help="rewrite the file in place, 1 MiB writes from its start, fsync "
                          "at the end, instead of removing it")
    how.add_argument("--snapshot", action="store_true",
                     help="snapshot the mounted volume (\"default\") instead of removing the "
                          "file (needs --meta)")
    ap.add_argument("--meta", help="with --snapshot: the metaservers `meridian dev` printed")
    ap.add_argument("--meridian", default="meridian", help="with --snapshot: the binary")
    ap.add_argument("--whole", action="store_true",
                    help="skip the random writes: the file is whole blocks (a baseline)")
    ap.add_argument("--write-far", action="store_true",
                    help="after --truncate: size back to 1 GiB, one fsync'd write at 7/8")
    a = ap.parse_args()
    if a.snapshot and not a.meta:
        ap.error("--snapshot needs --meta (the metaservers `meridian dev` printed)")
    work = os.path.join(a.dir, "removal-stall.%d" % os.getpid())
    os.makedirs(os.path.join(work, "creates"))
    big = os.path.join(work, "fio.dat")
    fio(big, "--rw=write", "--bs=1M", "--size=1G", "--direct=0", "--end_fsync=1")
    timed = ["--time_based", "--runtime=6", "--ramp_time=1", "--bs=4k", "--size=1G"]
    if not a.whole:
        fio(big, "--rw=randwrite", "--direct=1", *timed)
        fio(big, "--rw=randwrite", "--direct=0", "--fsync=1", *timed)

    removal = {}
    snap = "removal-stall-%d" % os.getpid()

    def admin(*args):
        subprocess.run([a.meridian, "admin", args[0], "--plaintext", "--meta", a.meta,
                        *args[1:]], check=True, stdout=subprocess.DEVNULL)

    def remove():
        time.sleep(1.0)
        if a.truncate or a.punch:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("3")
        t = time.perf_counter()
        if a.truncate:
            fd = os.open(big, os.O_WRONLY | os.O_TRUNC)
            if a.write_far:
                removal["cut"] = (time.perf_counter() - t) * 1000
                t = time.perf_counter()
                os.ftruncate(fd, 1 << 30)
                os.pwrite(fd, b"w" * 4096, (7 << 30) // 8)
                os.fsync(fd)
            os.close(fd)
        elif a.punch:
            subprocess.run(["fallocate", "-p", "-o", "4096", "-l", str((1 << 30) - 8192),
                            big], check=True)
        elif a.copy:
            subprocess.run(["cp", big, big + ".copy"], check=True)
        elif a.rewrite:
            fio(big, "--rw=write", "--bs=1M", "--size=1G", "--direct=0", "--end_fsync=1")
        elif a.snapshot:
            admin("volume-snapshot", "default", snap)
        else:
            os.unlink(big)
        removal["ms"] = (time.perf_counter() - t) * 1000

    th = threading.Thread(target=remove)
    lat = []
    start = time.perf_counter()
    th.start()
    for i in range(a.creates):
        t = time.perf_counter()
        name = os.path.join(work, "creates", "f%06d" % i)
        os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        lat.append((t - start, time.perf_counter() - t))
    elapsed = time.perf_counter() - start
    th.join()
    slowest = sorted(sorted(lat, key=lambda x: -x[1])[:8])
    if "cut" in removal:
        print("truncate %.1f ms, then the far write %.1f ms" % (removal["cut"], removal["ms"]))
    print("%s %.1f ms; %d creates at %.0f/s; slowest (at s: ms): %s" % (
        ("far write" if a.write_far else "truncate") if a.truncate
        else "hole" if a.punch else "copy" if a.copy else "rewrite" if a.rewrite
        else "snapshot" if a.snapshot
        else "removal", removal["ms"],
        a.creates, a.creates / elapsed,
        ", ".join("%.2f: %.1f" % (at, d * 1000) for at, d in slowest)))
    for i in range(a.creates):
        os.unlink(os.path.join(work, "creates", "f%06d" % i))
    os.rmdir(os.path.join(work, "creates"))
    if a.truncate or a.punch or a.copy or a.rewrite or a.snapshot:
        os.unlink(big)
    if a.snapshot:
        admin("volume-delete", snap)
    if a.copy:
        os.unlink(big + ".copy")
    os.rmdir(work)


if __name__ == "__main__":
    main()
