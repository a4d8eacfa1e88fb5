#!/usr/bin/env bash
# The bench's Meridian rig started process by process, for what `meridian dev` does not
# offer: mutual TLS on every link (scripts/tls_rig.sh), or one member with a slow disk
# (scripts/slow_member_rig.sh).
#
#   scripts/hand_rig.sh up|down        (as root; MERIDIAN_BIN = the release binary)
#
# `up` starts what `meridian dev --no-mount` starts (three metaservers, member 1 leading,
# three chunkservers in zones a, b, c, one runtime worker each, a volume "default" with
# R=3) and mounts the volume at $MNT; it prints the mount point. `down` stops it all and
# deletes its state ($ST). Settings (environment):
#   TLS=1        every process with its own certificate from a CA made for the run
#                (default 0: plaintext)
#   SLOW_US=N    N microseconds added to each sync of member 2's Raft log (the prompt
#                follower while member 1 leads; the hidden --fault-sync-delay-us)
#   META_ARGS    more arguments for every metaserver (split on spaces)
#   ST, MNT      state and mount point (default /tmp/fsbench/meridian-hand and
#                /tmp/fsbench/mnt/meridian-hand)
set -euo pipefail
BIN=${MERIDIAN_BIN:?set MERIDIAN_BIN to the meridian binary}
ST=${ST:-/tmp/fsbench/meridian-hand}
MNT=${MNT:-/tmp/fsbench/mnt/meridian-hand}
TLS=${TLS:-0}
SLOW_US=${SLOW_US:-0}

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_log() { # FILE TEXT: until FILE holds TEXT (30 s)
  for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "no '$2' in $1:" >&2; tail -20 "$1" >&2; exit 1
}
# The global arguments of process NAME: its certificate, or plaintext.
as() { if [ "$TLS" = 1 ]; then echo "--tls $ST/$1"; else echo "--plaintext"; fi; }

case "${1:-}" in
  up)
    mkdir -p "$ST" "$MNT"
    if [ "$TLS" = 1 ]; then
      "$BIN" admin certs init --dir "$ST/ca" > /dev/null
      issue() { "$BIN" admin certs issue --ca "$ST/ca" --out "$ST/$1" --name "$1" --role "$2" > /dev/null; }
      for i in 1 2 3; do issue "meta-$i" meta; issue "chunk-$i" chunk; done
      issue admin admin; issue mount-1 client
    fi
    META=()
    for i in 1 2 3; do
      addr=127.0.0.1:$(port); META+=("$addr")
      extra=()
      [ "$i" = 1 ] && extra+=(--init)
      [ "$i" = 2 ] && [ "$SLOW_US" != 0 ] && extra+=(--fault-sync-delay-us "$SLOW_US")
      # shellcheck disable=SC2046,SC2086
      nohup "$BIN" $(as "meta-$i") meta --id "$i" --listen "$addr" --data "$ST/data/meta-$i" \
        --runtime-threads 1 "${extra[@]}" ${META_ARGS:-} > "$ST/meta-$i.log" 2>&1 &
      echo $! >> "$ST/pids"
      wait_log "$ST/meta-$i.log" "listening on $addr"
      if [ "$i" = 1 ]; then
        # Member 1 leads before the others join.
        for _ in $(seq 1 300); do
          # shellcheck disable=SC2046
          "$BIN" $(as admin) admin meta-status --meta "$addr" 2>/dev/null | grep -q Leader && break
          sleep 0.1
        done
      else
        for _ in $(seq 1 300); do
          # shellcheck disable=SC2046
          "$BIN" $(as admin) admin add-member --meta "${META[0]}" --id "$i" --address "$addr" \
            > /dev/null 2>&1 && break
          sleep 0.1
        done
      fi
    done
    metas=$(IFS=,; echo "${META[*]}")
    for i in 1 2 3; do
      addr=127.0.0.1:$(port); zone=$(echo a b c | cut -d' ' -f"$i")
      # shellcheck disable=SC2046
      nohup "$BIN" $(as "chunk-$i") chunk --id "$i" --listen "$addr" --data "$ST/data/chunk-$i" \
        --zone "$zone" --meta "$metas" --runtime-threads 1 > "$ST/chunk-$i.log" 2>&1 &
      echo $! >> "$ST/pids"
      wait_log "$ST/chunk-$i.log" "listening on $addr"
    done
    for _ in $(seq 1 300); do
      # shellcheck disable=SC2046
      up=$("$BIN" $(as admin) admin cluster-map --json --meta "$metas" 2>/dev/null | grep -o '"state": "up"' | wc -l || true)
      [ "$up" -ge 3 ] && break; sleep 0.1
    done
    # shellcheck disable=SC2046
    "$BIN" $(as admin) admin volume-create --meta "$metas" default > /dev/null
    echo "$metas" > "$ST/metas"
    # shellcheck disable=SC2046
    nohup "$BIN" $(as mount-1) mount --meta "$metas" --allow-other "$MNT" > "$ST/mount.log" 2>&1 &
    echo $! > "$ST/mount.pid"
    for _ in $(seq 1 300); do mountpoint -q "$MNT" && break; sleep 0.1; done
    mountpoint -q "$MNT" || { tail -20 "$ST/mount.log" >&2; exit 1; }
    echo "$MNT" ;;
  down)
    [ -f "$ST/mount.pid" ] && kill "$(cat "$ST/mount.pid")" 2>/dev/null || true
    for _ in $(seq 1 100); do mountpoint -q "$MNT" || break; sleep 0.1; done
    mountpoint -q "$MNT" && umount -l "$MNT" || true
    [ -f "$ST/pids" ] && while read -r p; do kill "$p" 2>/dev/null || true; done < "$ST/pids"
    [ -f "$ST/pids" ] && while read -r p; do
      for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$p" 2>/dev/null || true
    done < "$ST/pids"
    rm -rf "$ST"; rmdir "$MNT" 2>/dev/null || true ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
