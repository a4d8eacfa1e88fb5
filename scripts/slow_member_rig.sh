#!/usr/bin/env bash
# The bench's Meridian rig (plaintext) with member 2, the prompt follower while member 1
# leads (metaserver/src/raft/spare.rs), given a slow disk: SLOW_US microseconds added to
# each sync of its Raft log. META_ARGS (split on spaces) go to every metaserver.
#
#   scripts/slow_member_rig.sh up|down      (as root; MERIDIAN_BIN = the release binary)
#
# `up` prints the mount point ($MNT, default /tmp/fsbench/mnt/meridian-slow); `down` stops
# it all and deletes its state ($ST). For `scripts/ab.py --rig`. The rig itself is
# scripts/hand_rig.sh.
export TLS=0 ST=${ST:-/tmp/fsbench/meridian-slow} MNT=${MNT:-/tmp/fsbench/mnt/meridian-slow}
exec "$(dirname "${BASH_SOURCE[0]}")/hand_rig.sh" "$@"
