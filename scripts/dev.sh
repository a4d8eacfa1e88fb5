#!/usr/bin/env bash
# Run a whole Meridian region on this machine and mount it: the newcomer's command.
# Installs fuse3 if missing, builds in release mode, and runs `meridian dev` with any
# arguments given (default data folder ./meridian-dev, mounted at ./meridian-dev/mnt).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v fusermount3 >/dev/null 2>&1; then
  echo "== installing fuse3"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 >/dev/null
fi
cargo build --release --locked
exec target/release/meridian dev "$@"
