#!/usr/bin/env bash
# Runs every test of the project: the workspace's cargo tests (unit, property,
# integration, doc tests; no hardware needed), then the VM tests, which boot
# QEMU with an emulated NVMe controller behind an emulated IOMMU (scripts/vm).
#
# The VM tests need root (they install QEMU with apt-get on first use). Where
# they cannot run, they are skipped with the reason printed, never passed.
# NVME_SKIP_VM=1 skips them on purpose (also printed).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test --workspace"
cargo test --workspace

echo
echo "== VM tests (scripts/vm)"
if [ "${NVME_SKIP_VM:-0}" = 1 ]; then
    echo "SKIPPED: VM tests (NVME_SKIP_VM=1)"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "SKIPPED: VM tests need root (QEMU and its packages are installed with apt-get)"
    exit 0
fi
scripts/vm/selftest.sh
