#!/usr/bin/env bash
# The floor of one durable round on this host (see scripts/durable_floor.rs): compiles
# it with rustc (std only) and runs it. Usage: scripts/durable_floor.sh [ROUNDS [BYTES]]
# FLOOR_DIR: under which its log files go, in a folder of their own removed at the end
# (default /tmp; put it on the disk the servers under test use).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
rustc -O --edition 2024 -o "$out/durable_floor" "$here/durable_floor.rs"
"$out/durable_floor" "${1:-5000}" "${2:-512}"
