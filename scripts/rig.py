"""What the scripts that start a `meridian dev` rig of their own share: waiting for a
mount, filling a tree with small files, and stopping the rig with everything it started.
"""

import os
import shutil
import signal
import subprocess
import threading
import time


def wait_mount(path, proc, what):
    """Waits (up to 2 minutes) until `path` is a mount point; fails if `proc` exits."""
    for _ in range(480):
        if os.path.ismount(path):
            return
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited: {proc.returncode}")
        time.sleep(0.25)
    raise SystemExit(f"{what}: no mount at {path}")


def fill(root, files, per=1000, writers=4):
    """`files` files of 100 bytes under `root`, `per` a directory, `writers` at once."""
    dirs = (files + per - 1) // per
    for d in range(dirs):
        os.mkdir(os.path.join(root, "d%04d" % d))

    def work(k):
        for n in range(k, files, writers):
            sub = os.path.join(root, "d%04d" % (n // per))
            with open(os.path.join(sub, "f%07d" % (n % per)), "wb") as f:
                f.write(b"x" * 100)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def stop(procs, dev, mounts, top, keep):
    """Stops `procs` (SIGINT, then SIGKILL after 30 s), then whatever `meridian dev`
    (`dev`, started in its own session) left behind, lazily unmounts `mounts`, and
    removes the rig's folder `top` unless `keep`."""
    for proc in procs:
        if proc is None:
            continue
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    try:
        os.killpg(dev.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for m in mounts:
        if os.path.ismount(m):
            subprocess.run(["fusermount3", "-uz", m])
    if keep:
        print("kept", top)
    else:
        shutil.rmtree(top, ignore_errors=True)
