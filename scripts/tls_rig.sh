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
set -euo pipefail
BIN=${MERIDIAN_BIN:?set MERIDIAN_BIN to the meridian binary}
ST=${ST:-/tmp/fsbench/meridian-tls}
MNT=${MNT:-/tmp/fsbench/mnt/meridian-tls}

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_log() { # FILE TEXT: until FILE holds TEXT (30 s)
  for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "no '$2' in $1:" >&2; tail -20 "$1" >&2; exit 1
}

case "${1:-}" in
  up)
    mkdir -p "$ST" "$MNT"
    "$BIN" admin certs init --dir "$ST/ca" > /dev/null
    issue() { "$BIN" admin certs issue --ca "$ST/ca" --out "$ST/$1" --name "$1" --role "$2" > /dev/null; }
    for i in 1 2 3; do issue "meta-$i" meta; issue "chunk-$i" chunk; done
    issue admin admin; issue mount-1 client
    META=()
    for i in 1 2 3; do
      addr=127.0.0.1:$(port); META+=("$addr")
      init=(); [ "$i" = 1 ] && init=(--init)
      nohup "$BIN" --tls "$ST/meta-$i" meta --id "$i" --listen "$addr" --data "$ST/data/meta-$i" \
        --runtime-threads 1 "${init[@]}" > "$ST/meta-$i.log" 2>&1 &
      echo $! >> "$ST/pids"
      wait_log "$ST/meta-$i.log" "listening on $addr"
      if [ "$i" = 1 ]; then
        for _ in $(seq 1 300); do
          "$BIN" --tls "$ST/admin" admin meta-status --meta "$addr" > /dev/null 2>&1 && break; sleep 0.1
        done
      else
        for _ in $(seq 1 300); do
          "$BIN" --tls "$ST/admin" admin add-member --meta "${META[0]}" --id "$i" --address "$addr" \
            > /dev/null 2>&1 && break
          sleep 0.1
        done
      fi
    done
    metas=$(IFS=,; echo "${META[*]}")
    for i in 1 2 3; do
      addr=127.0.0.1:$(port); zone=$(echo a b c | cut -d' ' -f"$i")
      nohup "$BIN" --tls "$ST/chunk-$i" chunk --id "$i" --listen "$addr" --data "$ST/data/chunk-$i" \
        --zone "$zone" --meta "$metas" --runtime-threads 1 > "$ST/chunk-$i.log" 2>&1 &
      echo $! >> "$ST/pids"
      wait_log "$ST/chunk-$i.log" "listening on $addr"
    done
    for _ in $(seq 1 300); do
      up=$("$BIN" --tls "$ST/admin" admin cluster-map --json --meta "$metas" 2>/dev/null | grep -o '"state": "up"' | wc -l || true)
      [ "$up" -ge 3 ] && break; sleep 0.1
    done
    "$BIN" --tls "$ST/admin" admin volume-create --meta "$metas" default > /dev/null
    echo "$metas" > "$ST/metas"
    nohup "$BIN" --tls "$ST/mount-1" mount --meta "$metas" --allow-other "$MNT" > "$ST/mount.log" 2>&1 &
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
