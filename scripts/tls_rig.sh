#!/usr/bin/env bash
# The bench's Meridian rig with mutual TLS on every link, to measure what TLS costs.
#
#   scripts/tls_rig.sh up|down        (as root; MERIDIAN_BIN = the release binary)
#
# `up` starts what `meridian dev --no-mount` starts (three metaservers, three chunkservers
# in zones a, b, c, one runtime worker each, a volume "default" with R=3), every process
# with its own certificate from a CA made for the run, and mounts the volume with a client
# certificate at $MNT (default /tmp/fsbench/mnt/meridian-tls); it prints the mount point.
# Run ../shared/bench/fsbench.sh on it, next to the plaintext rig
# (../shared/bench/peers/meridian.sh), in the same hour. `down` stops it all and deletes
# its state ($ST, default /tmp/fsbench/meridian-tls). docs/PERFORMANCE.md has its figures.
# The rig itself is scripts/hand_rig.sh.
export TLS=1 ST=${ST:-/tmp/fsbench/meridian-tls} MNT=${MNT:-/tmp/fsbench/mnt/meridian-tls}
exec "$(dirname "${BASH_SOURCE[0]}")/hand_rig.sh" "$@"
