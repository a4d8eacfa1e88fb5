#!/usr/bin/env bash
# The bench's Meridian rig (what `meridian dev --no-mount` starts, plaintext: three
# metaservers, three chunkservers in zones a, b, c, one runtime worker each, a volume
# "default" with R=3, and a mount) started process by process, so that member 2 (the
# prompt follower while member 1 leads: metaserver/src/raft/spare.rs) can be given a slow
# disk: SLOW_US microseconds added to each sync of its Raft log (--fault-sync-delay-us).
#
#   scripts/slow_member_rig.sh up|down      (as root; MERIDIAN_BIN = the release binary)
#
# META_ARGS (split on spaces) are given to every metaserver.
#
# `up` prints the mount point ($MNT, default /tmp/fsbench/mnt/meridian-slow); `down` stops
# it all and deletes its state ($ST). For `scripts/ab.py --rig`.
set -euo pipefail
BIN=${MERIDIAN_BIN:?}
ST=${ST:-/tmp/fsbench/meridian-slow}
MNT=${MNT:-/tmp/fsbench/mnt/meridian-slow}
SLOW_US=${SLOW_US:-0}
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_log() { for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "no '$2' in $1" >&2; tail -20 "$1" >&2; exit 1; }
case "${1:-}" in
  up)
    mkdir -p "$ST" "$MNT"
    META=()
    for i in 1 2 3; do
      addr=127.0.0.1:$(port); META+=("$addr")
      extra=(); [ "$i" = 1 ] && extra=(--init)
      [ "$i" = 2 ] && [ "$SLOW_US" != 0 ] && extra=(--fault-sync-delay-us "$SLOW_US")
      nohup "$BIN" --plaintext meta --id "$i" --listen "$addr" --data "$ST/data/meta-$i" \
        --runtime-threads 1 "${extra[@]}" ${META_ARGS:-} > "$ST/meta-$i.log" 2>&1 &
      echo $! >> "$ST/pids"
      wait_log "$ST/meta-$i.log" "listening on $addr"
      if [ "$i" = 1 ]; then
        for _ in $(seq 1 300); do "$BIN" --plaintext admin meta-status --meta "$addr" > /dev/null 2>&1 && break; sleep 0.1; done
        # Member 1 leads before the others join.
        for _ in $(seq 1 300); do "$BIN" --plaintext admin meta-status --meta "$addr" 2>/dev/null | grep -q Leader && break; sleep 0.1; done
      else
        for _ in $(seq 1 300); do "$BIN" --plaintext admin add-member --meta "${META[0]}" --id "$i" --address "$addr" > /dev/null 2>&1 && break; sleep 0.1; done
      fi
    done
    metas=$(IFS=,; echo "${META[*]}")
    for i in 1 2 3; do
      addr=127.0.0.1:$(port); zone=$(echo a b c | cut -d' ' -f"$i")
      nohup "$BIN" --plaintext chunk --id "$i" --listen "$addr" --data "$ST/data/chunk-$i" \
        --zone "$zone" --meta "$metas" --runtime-threads 1 > "$ST/chunk-$i.log" 2>&1 &
      echo $! >> "$ST/pids"
      wait_log "$ST/chunk-$i.log" "listening on $addr"
    done
    for _ in $(seq 1 300); do
      up=$("$BIN" --plaintext admin cluster-map --json --meta "$metas" 2>/dev/null | grep -o '"state": "up"' | wc -l || true)
      [ "$up" -ge 3 ] && break; sleep 0.1
    done
    "$BIN" --plaintext admin volume-create --meta "$metas" default > /dev/null
    echo "$metas" > "$ST/metas"
    nohup "$BIN" --plaintext mount --meta "$metas" --allow-other "$MNT" > "$ST/mount.log" 2>&1 &
    echo $! > "$ST/mount.pid"
    for _ in $(seq 1 300); do mountpoint -q "$MNT" && break; sleep 0.1; done
    mountpoint -q "$MNT" || { tail -20 "$ST/mount.log" >&2; exit 1; }
    echo "$MNT" ;;
  down)
    [ -f "$ST/mount.pid" ] && kill "$(cat "$ST/mount.pid")" 2>/dev/null || true
    for _ in $(seq 1 100); do mountpoint -q "$MNT" || break; sleep 0.1; done
    mountpoint -q "$MNT" && umount -l "$MNT" || true
    [ -f "$ST/pids" ] && while read -r p; do kill "$p" 2>/dev/null || true; done < "$ST/pids"
    [ -f "$ST/pids" ] && while read -r p; do for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; kill -9 "$p" 2>/dev/null || true; done < "$ST/pids"
    rm -rf "$ST"; rmdir "$MNT" 2>/dev/null || true ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
