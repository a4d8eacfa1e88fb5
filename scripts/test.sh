#!/usr/bin/env bash
# The one command that tests Meridian: installs what the tests need, then runs everything
# (format and lint checks, unit and property tests, end-to-end tests with real processes).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# FUSE mounts in the end-to-end tests need fusermount3 (fuse3); a fresh machine lacks it.
if ! command -v fusermount3 >/dev/null 2>&1; then
  echo "== installing fuse3"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 >/dev/null
fi

# A user's mount (tests/supervised_mount.rs) opens /dev/fuse through fusermount3 as that
# user: the device must have its usual mode, 0666, which some containers narrow to root's.
if [ -c /dev/fuse ] && [ "$(stat -c %a /dev/fuse)" != 666 ]; then
  echo "== /dev/fuse to its usual mode 0666"
  as_root chmod 0666 /dev/fuse || echo "warning: cannot chmod /dev/fuse: a user's mount will not work" >&2
fi

# The deploy/ manifests are validated against the Kubernetes schemas (offline) by
# tests/deploy.rs, with kubernetes-validate and PyYAML from PyPI.
if ! python3 -c 'import kubernetes_validate, yaml' >/dev/null 2>&1; then
  echo "== installing kubernetes-validate"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
  fi
  python3 -m pip install --quiet kubernetes-validate PyYAML \
    || python3 -m pip install --quiet --break-system-packages kubernetes-validate PyYAML
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-targets --locked "$@"
else
  cargo test --workspace --all-targets --locked "$@"
fi
