"""The resident memory of the bench rig's processes, for the scale probes
(`scale_fuse.py`, `lease_memory.py`)."""
import subprocess


def rss(pattern):
    """MiB resident in the largest process whose command line matches `pattern` (0: none)."""
    pids = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    largest = 0
    for p in pids:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS"):
                    largest = max(largest, int(line.split()[1]) // 1024)
        except OSError:
            pass
    return largest
