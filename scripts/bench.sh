#!/usr/bin/env bash
# Benchmarks, each next to a baseline measured in the same run. Figures go in the README.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench chunk_throughput -- --noplot "$@"
cargo bench --bench meta_ops -- --noplot "$@"
cargo bench --bench mount_io
cargo bench --bench region_lag
cargo bench --bench scale
