#!/usr/bin/env python3
"""Everyday tools on each file system, one after the other, one table at the end.

    scripts/everyday.py OUT_DIR [TARGET...]      (as root; default: local bindfs gluster moosefs meridian)

Each target is brought up and down with the shared bench's peer scripts
(`$BENCH_DIR/peers/<target>.sh up|down`, BENCH_DIR defaults to ../shared/bench; the
meridian target needs MERIDIAN_BIN). On each mount, timed:

- untar: `tar -xf` of a source tree (the sources of a fixed set of crates from the cargo
  registry, about 4,800 files, uncompressed, so that only the file system is measured);
- grep cold: `grep -rc` over the tree after dropping the page cache (every byte read);
- verify: every file's SHA-256 against the tree's, warm (the run fails on a difference);
- sqlite: 1,000 transactions of one small insert each (python's sqlite3, the default
  rollback journal and synchronous=FULL: a journal created, written, fsync'd and deleted
  per transaction);
- rm -rf of the tree.

Writes OUT_DIR/everyday.json and OUT_DIR/everyday.md. The machine is shared and noisy:
compare figures from one run only, and run twice.
"""

import glob
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.environ.get("BENCH_DIR", os.path.join(HERE, "..", "..", "shared", "bench"))
REGISTRY = os.path.expanduser("~/.cargo/registry/src")
# Crates the workspace's Cargo.lock pins: their sources are on any machine that built it.
CRATES = [
    "tokio", "openraft", "libc", "zerocopy", "ring", "rustix", "prost-reflect",
    "pin-project", "futures-util", "derive_more", "time", "zerocopy-derive", "petgraph",
    "clap", "tower", "nix", "rustls", "proptest", "regex-automata", "thiserror", "syn",
]
SQLITE_TRANSACTIONS = 1000


def crate_dirs():
    """The newest version of each crate in the registry (the lock pins one of most)."""
    out = []
    for name in CRATES:
        found = sorted(
            d for d in glob.glob(os.path.join(REGISTRY, "*", f"{name}-[0-9]*"))
            if os.path.isdir(d) and os.path.basename(d)[len(name) + 1:][:1].isdigit()
        )
        if not found:
            sys.exit(f"no source of crate {name} under {REGISTRY}: run `cargo fetch` first")
        out.append(found[-1])
    return out


def make_tarball(path):
    files, size = 0, 0
    with tarfile.open(path, "w") as tar:
        for d in crate_dirs():
            for root, dirs, names in os.walk(d):
                dirs.sort()
                for n in sorted(names):
                    p = os.path.join(root, n)
                    if os.path.islink(p) or not os.path.isfile(p):
                        continue
                    tar.add(p, arcname=os.path.relpath(p, os.path.dirname(d)), recursive=False)
                    files += 1
                    size += os.path.getsize(p)
    return files, size


def digests(root):
    out = {}
    for base, dirs, names in os.walk(root):
        dirs.sort()
        for n in names:
            p = os.path.join(base, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def timed(f):
    start = time.monotonic()
    f()
    return time.monotonic() - start


def sqlite_transactions(path, n):
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    for i in range(n):
        db.execute("BEGIN")
        db.execute("INSERT INTO t (v) VALUES (?)", (f"row {i} " * 8,))
        db.execute("COMMIT")
    rows = db.execute("SELECT count(*) FROM t").fetchone()[0]
    db.close()
    if rows != n:
        raise RuntimeError(f"sqlite: {rows} rows after {n} transactions")


def run_target(target, tarball, expect):
    script = os.path.join(BENCH, "peers", f"{target}.sh")
    subprocess.run([script, "down"], capture_output=True)
    up = subprocess.run([script, "up"], capture_output=True, text=True)
    if up.returncode != 0:
        raise RuntimeError(f"{target} up: {up.stderr}")
    mp = up.stdout.strip().splitlines()[-1]
    try:
        tree = os.path.join(mp, "everyday")
        os.makedirs(tree)
        r = {"target": target}
        r["untar_s"] = timed(lambda: subprocess.run(["tar", "-xf", tarball, "-C", tree], check=True))
        drop_caches()
        r["grep_cold_s"] = timed(lambda: subprocess.run(
            ["grep", "-rc", "unsafe", tree], stdout=subprocess.DEVNULL, check=False))
        got = digests(tree)
        if got != expect:
            bad = sorted(k for k in set(got) | set(expect) if got.get(k) != expect.get(k))
            raise RuntimeError(f"{target}: {len(bad)} files differ, e.g. {bad[:3]}")
        r["files_verified"] = len(got)
        db = os.path.join(mp, "everyday.db")
        r["sqlite_s"] = timed(lambda: sqlite_transactions(db, SQLITE_TRANSACTIONS))
        r["rm_s"] = timed(lambda: shutil.rmtree(tree))
        os.unlink(db)
        return r
    finally:
        subprocess.run([script, "down"], capture_output=True)


ROWS = [
    ("untar_s", "tar -xf (s)"),
    ("grep_cold_s", "grep -r, cold (s)"),
    ("sqlite_s", f"{SQLITE_TRANSACTIONS} sqlite transactions (s)"),
    ("rm_s", "rm -rf (s)"),
]


def table(results, files, size):
    names = [r["target"] for r in results]
    lines = [
        f"Source tree: {files} files, {size / 2**20:.1f} MiB. Seconds, lower is better; the "
        "last column is the better of GlusterFS and MooseFS divided by Meridian (above 1: "
        "Meridian is faster).",
        "",
        "| | " + " | ".join(names) + " | best peer ÷ Meridian |",
        "|---|" + "---:|" * (len(names) + 1),
    ]
    by = {r["target"]: r for r in results}
    for key, label in ROWS:
        cells = [f"{by[n][key]:.2f}" for n in names]
        peers = [by[p][key] for p in ("gluster", "moosefs") if p in by]
        ratio = f"{min(peers) / by['meridian'][key]:.2f}" if peers and "meridian" in by else ""
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines) + "\n"


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    targets = sys.argv[2:] or ["local", "bindfs", "gluster", "moosefs", "meridian"]
    os.makedirs(out, exist_ok=True)
    tarball = os.path.join(out, "src.tar")
    files, size = make_tarball(tarball)
    src = os.path.join(out, "src")
    shutil.rmtree(src, ignore_errors=True)
    os.makedirs(src)
    subprocess.run(["tar", "-xf", tarball, "-C", src], check=True)
    expect = digests(src)
    shutil.rmtree(src)
    results = []
    for t in targets:
        print(f"=== {t}", file=sys.stderr, flush=True)
        r = run_target(t, tarball, expect)
        print(json.dumps(r), file=sys.stderr, flush=True)
        results.append(r)
    with open(os.path.join(out, "everyday.json"), "w") as f:
        json.dump({"files": files, "bytes": size, "results": results}, f, indent=1)
    md = table(results, files, size)
    with open(os.path.join(out, "everyday.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
