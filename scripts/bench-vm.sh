#!/usr/bin/env bash
# Side by side in one VM boot, on the same emulated disk (QEMU's NVMe behind
# an emulated Intel IOMMU) and the same workloads: the guest kernel's nvme
# driver with fio (io_uring, direct I/O) against nvme-bench through VFIO
# (polled, and with interrupts) and fio through the nvme-vfio engine
# (scripts/build-fio-engine.sh), plus the cost of user buffers mapped per
# I/O against pool buffers. Prints both and the ratios. That boot is a
# timing run: the guest kernel gets tsc=reliable and keeps the TSC as its
# clock source. A second, shorter boot with the guest's default clock
# source (the HPET under TCG) measures what reading the clock costs
# nvme-bench at QD 1: clock_gettime per completion batch (--clock
# monotonic) against the TSC (--clock tsc), in both boots.
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
# The fio engine, for "fio + nvme-vfio engine" beside the kernel's driver.
engine=$(scripts/build-fio-engine.sh -q)
target_dir=${CARGO_TARGET_DIR:-target}
[[ "$target_dir" == /* ]] || target_dir=$PWD/$target_dir
bin=$target_dir/release/nvme-bench
image=$target_dir/bench-vm-ns1.img
rm -f "$image"
out=$(mktemp)
out2=$(mktemp)
trap 'rm -f "$out" "$out2" "$image"' EXIT

echo "bench-vm: booting the VM (tsc=reliable); $secs s per workload"
status=0
scripts/vm/run.sh --no-bind --tsc-reliable --image "$image" --image-size 256M --prefill 0x5a \
    --env FIO_ENGINE="$engine" \
    --timeout $((120 + 12 * secs * 5)) -- python3 scripts/vm/bench-guest.py "$bin" "$secs" \
    >"$out" || status=$?
if [ "$status" != 0 ]; then
    cat "$out"
    echo "bench-vm: the VM run failed (exit $status)" >&2
    exit 1
fi
echo "bench-vm: booting the VM again with its default clock source; $secs s per workload"
scripts/vm/run.sh --no-bind --image "$image" \
    --timeout $((120 + 12 * secs)) -- python3 scripts/vm/bench-guest.py "$bin" "$secs" clocks \
    >"$out2" || status=$?
if [ "$status" != 0 ]; then
    cat "$out2"
    echo "bench-vm: the second VM run failed (exit $status)" >&2
    exit 1
fi

python3 - "$out" "$out2" "$smoke" <<'PY'
import json, sys

def results(path):
    line = [l for l in open(path) if l.startswith("NVME-BENCH-VM ")]
    if not line:
        sys.exit("bench-vm: no results from the guest")
    return json.loads(line[-1].split(" ", 1)[1])

r = results(sys.argv[1])
default_clock = results(sys.argv[2])["clocks"]
smoke = sys.argv[3] == "1"

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
print("\nThe same tool over two drivers: fio with io_uring on the kernel's driver, and fio with the")
print("nvme-vfio engine (polled) on this driver; nvme-bench beside them, and the engine's cost over it")
head = (f"{'workload':18} {'kernel+fio':>11} {'engine+fio':>11} {'ratio':>6} {'nvme-bench':>11}"
        f" {'fio/bench':>9}   {'p50 us k/e':>11}   {'CPU us/IO e/b':>14} {'added us/IO':>11}")
print(head)
print("-" * len(head))
for name, e in r["engine"].items():
    k, b = r["kernel"][name], r["vfio"][name]
    ratio = e["iops"] / k["iops"] if k["iops"] else 0
    rb = e["iops"] / b["iops"] if b["iops"] else 0
    # fio's own work per I/O on the polling thread (1/IOPS difference).
    added = (1 / e["iops"] - 1 / b["iops"]) * 1e6 if e["iops"] and b["iops"] else 0
    print(f"{name:18} {k['iops']:11.0f} {e['iops']:11.0f} {ratio:5.2f}x {b['iops']:11.0f} {rb:8.2f}x"
          f"   {us(k['p50_ns']):>5}/{us(e['p50_ns']):<5}   {us(e['cpu_ns_per_io']):>6}/{us(b['cpu_ns_per_io']):<7}"
          f" {added:11.1f}")
    ok &= e["iops"] > 0
if not r["engine"]:
    print("bench-vm: no results from fio through the engine", file=sys.stderr)
    ok = False
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
problems = []
print("\nReading the clock at QD 1 (4 KiB random read, polled): nvme-bench stamping each completion batch")
print("with clock_gettime (--clock monotonic) vs the TSC (--clock tsc), each twice for half the time")
print("(A B B A), by the guest's clock source")
head = (f"{'guest boot':14} {'clock source':12} {'monotonic':>10} {'tsc':>10} {'tsc/mono':>8}"
        f"   {'p50 us m/t':>11} {'added us/IO':>12} {'auto picks':>10}")
print(head)
print("-" * len(head))
for c in (default_clock, r["clocks"]):
    m, t = c["monotonic"], c["tsc"]
    boot = "tsc=reliable" if c["tsc_reliable"] else "default"
    # Time the clock_gettime calls add per I/O, as the 1/IOPS difference.
    added = (1 / m["iops"] - 1 / t["iops"]) * 1e6 if m["iops"] and t["iops"] else 0
    ratio = t["iops"] / m["iops"] if m["iops"] else 0
    print(f"{boot:14} {c['clocksource']:12} {m['iops']:10.0f} {t['iops']:10.0f} {ratio:7.2f}x"
          f"   {us(m['p50_ns']):>5}/{us(t['p50_ns']):<5} {added:12.1f} {c['auto']:>10}")
    ok &= m["iops"] > 0 and t["iops"] > 0
    if m["clock"] != "monotonic" or t["clock"] != "tsc":
        problems.append(f"{boot}: --clock monotonic and tsc ran with {m['clock']} and {t['clock']}")
    # auto takes the TSC wherever the kernel runs on it.
    if c["clocksource"] == "tsc" and c["auto"] != "tsc":
        problems.append(f"{boot}: the kernel runs on the TSC but --clock auto picked {c['auto']}")
if not r["clocks"]["tsc_reliable"] or default_clock["tsc_reliable"]:
    problems.append("tsc=reliable is not on the first boot's command line only")
for p in problems:
    print(f"bench-vm: {p}", file=sys.stderr)
if smoke and (not ok or problems):
    sys.exit("bench-vm: a figure is missing or wrong")
PY
