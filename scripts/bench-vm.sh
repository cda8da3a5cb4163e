#!/usr/bin/env bash
# Side by side in one VM boot, on the same emulated disk (QEMU's NVMe behind
# an emulated Intel IOMMU) and the same workloads: the guest kernel's nvme
# driver with fio (io_uring, direct I/O) against nvme-bench through VFIO
# (polled, and with interrupts), plus the cost of user buffers mapped per
# I/O against pool buffers. Prints both and the ratios.
#
# Usage: scripts/bench-vm.sh [--time SECONDS] [--smoke]
#   --time S   seconds per workload (default 10)
#   --smoke    2 s per workload; checks that every figure is there
# Needs root (installs QEMU and fio with apt-get on first use). Under TCG
# the device and the CPU are emulated: only the ratios mean anything.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=10
smoke=0
while [ $# -gt 0 ]; do
    case "$1" in
        --time) secs=$2; shift 2 ;;
        --smoke) smoke=1; secs=2; shift ;;
        *) echo "usage: $0 [--time SECONDS] [--smoke]" >&2; exit 2 ;;
    esac
done
if [ "$(id -u)" != 0 ]; then
    echo "bench-vm: run as root (it installs QEMU and fio, and boots a VM)" >&2
    exit 2
fi
if ! command -v fio >/dev/null; then
    echo "bench-vm: installing fio"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends fio >/dev/null ||
        { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends fio >/dev/null; }
fi

cargo build --release --quiet -p nvme-bench --bin nvme-bench
bin=$PWD/${CARGO_TARGET_DIR:-target}/release/nvme-bench
image=${CARGO_TARGET_DIR:-target}/bench-vm-ns1.img
rm -f "$image"
out=$(mktemp)
trap 'rm -f "$out" "$image"' EXIT

echo "bench-vm: booting the VM; $secs s per workload"
status=0
scripts/vm/run.sh --no-bind --image "$image" --image-size 256M --prefill 0x5a \
    --timeout $((120 + 12 * secs * 3)) -- python3 scripts/vm/bench-guest.py "$bin" "$secs" \
    >"$out" || status=$?
if [ "$status" != 0 ]; then
    cat "$out"
    echo "bench-vm: the VM run failed (exit $status)" >&2
    exit 1
fi

python3 - "$out" "$smoke" <<'PY'
import json, sys
line = [l for l in open(sys.argv[1]) if l.startswith("NVME-BENCH-VM ")]
if not line:
    sys.exit("bench-vm: no results from the guest")
r = json.loads(line[-1].split(" ", 1)[1])
smoke = sys.argv[2] == "1"

def us(ns):
    return f"{ns / 1000:.0f}"

print(f"\nSame VM boot, same emulated disk, {r['seconds']} s per workload (TCG: compare ratios only)\n")
head = f"{'workload':18} {'kernel+fio':>11} {'nvme-bench':>11} {'ratio':>6} {'irq mode':>9} {'ratio':>6}   {'p50 us k/b':>12}   {'CPU us/IO k/b':>14}"
print(head)
print("-" * len(head))
ok = True
for name, k in r["kernel"].items():
    b = r["vfio"][name]
    i = r["vfio_irq"][name]
    ratio = b["iops"] / k["iops"] if k["iops"] else 0
    ri = i["iops"] / k["iops"] if k["iops"] else 0
    print(f"{name:18} {k['iops']:11.0f} {b['iops']:11.0f} {ratio:5.2f}x {i['iops']:9.0f} {ri:5.2f}x"
          f"   {us(k['p50_ns']):>5}/{us(b['p50_ns']):<6}   {us(k['cpu_ns_per_io']):>6}/{us(b['cpu_ns_per_io']):<7}")
    for v in (k["iops"], b["iops"], i["iops"]):
        ok &= v > 0
print("\nUser buffers (mapped per I/O: IOVA allocation, VFIO_IOMMU_MAP_DMA, UNMAP_DMA) vs pool buffers")
head = f"{'workload':18} {'pool IOPS':>10} {'user IOPS':>10} {'user/pool':>9} {'added us/IO':>12}"
print(head)
print("-" * len(head))
for name, u in r["vfio_user"].items():
    p = r["vfio"][name]
    # Time added per I/O on the polling thread (1/IOPS difference): the
    # mapping and unmapping, done on that thread for every I/O. At QD 1 it
    # is also the latency added to each I/O.
    added = (1 / u["iops"] - 1 / p["iops"]) * 1e6 if u["iops"] and p["iops"] else 0
    print(f"{name:18} {p['iops']:10.0f} {u['iops']:10.0f} {u['iops'] / p['iops']:8.2f}x {added:12.1f}")
    ok &= u["iops"] > 0
if smoke and not ok:
    sys.exit("bench-vm: a figure is missing")
PY
