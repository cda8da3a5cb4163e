#!/usr/bin/env bash
# Driver overhead per I/O against nvme-sim's null mode, one queue, QD 1, 32
# and 128 (4 KiB random reads from pool buffers):
# - instructions per I/O (callgrind), counted differentially over two runs
#   of N1 and N2 I/Os so setup cancels out, with nvme-sim in inline mode
#   (the device runs inside the doorbell write, on the same thread) and the
#   device's own instructions left out (the whole simulated register write:
#   on hardware a doorbell is one store):
#     driver  = inside QueuePair::submit and QueuePair::poll;
#     thread  = the whole benchmark loop (adds offsets, clock reads,
#               histogram, buffer bookkeeping);
# - time per I/O natively: the I/O thread's CPU time less the inline
#   device's, and IOPS with the device on a thread of its own;
# - submission doorbells (and MMIO doorbell writes) per I/O.
#
# Usage: scripts/bench-driver.sh [--quick]
#        scripts/bench-driver.sh --driver-instructions QD
#            (prints only the driver instructions per I/O at QD, counted
#            over 2,000 and 12,000 I/Os; scripts/check-budgets.sh uses it)
set -euo pipefail
cd "$(dirname "$0")/.."

n1=20000
n2=120000
native=3000000
only_qd=
if [ "${1:-}" = "--quick" ] && [ $# -eq 1 ]; then
    n1=2000; n2=12000; native=200000
elif [ "${1:-}" = "--driver-instructions" ] && [ $# -eq 2 ]; then
    n1=2000; n2=12000; only_qd=$2
elif [ $# -gt 0 ]; then
    echo "usage: $0 [--quick | --driver-instructions QD]" >&2
    exit 2
fi
if ! command -v valgrind >/dev/null; then
    echo "valgrind is needed (apt-get install valgrind)" >&2
    exit 1
fi

cargo build --release --quiet -p nvme-bench --bin nvme-bench
bin=${CARGO_TARGET_DIR:-target}/release/nvme-bench
common=(--sim --sim-null --rw randread --bs 4k --buffers pool --no-progress)
device="*nvme_sim*RegisterFile*Registers*write32"

# ir QD N TOGGLE...: instructions collected inside the toggled functions.
ir() {
    local qd=$1 n=$2
    shift 2
    local toggles=()
    for f in "$@" "$device"; do toggles+=("--toggle-collect=$f"); done
    valgrind --tool=callgrind --callgrind-out-file=/dev/null --collect-atstart=no \
        "${toggles[@]}" "$bin" "${common[@]}" --sim-inline --qd "$qd" --ios "$n" 2>&1 >/dev/null |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

per_io() {
    local qd=$1
    shift
    local a b
    a=$(ir "$qd" "$n1" "$@")
    b=$(ir "$qd" "$n2" "$@")
    if [ -z "$a" ] || [ -z "$b" ]; then
        echo "bench-driver: callgrind gave no instruction count" >&2
        exit 1
    fi
    awk -v a="$a" -v b="$b" -v n=$((n2 - n1)) 'BEGIN { printf "%.0f", (b - a) / n }'
}

json_field() {
    python3 -c 'import json,sys; r=json.load(sys.stdin)["result"]; print(eval(sys.argv[1], {}, r))' "$1"
}

driver=(nvme_vfio::ctrl::qpair::QueuePair::submit nvme_vfio::ctrl::qpair::QueuePair::poll)
if [ -n "$only_qd" ]; then
    per_io "$only_qd" "${driver[@]}"
    echo
    exit 0
fi

printf '%-4s %12s %12s %14s %14s %12s %12s %14s\n' QD "driver instr" "thread instr" \
    "driver ns/IO" "device ns/IO" "SQ db/IO" "MMIO db/IO" "IOPS threaded"
for qd in 1 32 128; do
    drv=$(per_io "$qd" "${driver[@]}")
    thr=$(per_io "$qd" nvme_bench::perf::engine::Worker::phase)
    inline=$("$bin" "${common[@]}" --sim-inline --qd "$qd" --ios "$native" --json)
    threaded=$("$bin" "${common[@]}" --qd "$qd" --ios "$native" --json)
    printf '%-4s %12s %12s %14.0f %14.0f %12.4f %12.4f %14.0f\n' "$qd" "$drv" "$thr" \
        "$(json_field driver_ns_per_io <<<"$inline")" \
        "$(json_field device_ns_per_io <<<"$inline")" \
        "$(json_field sq_doorbells_per_io <<<"$inline")" \
        "$(json_field sq_mmio_per_io <<<"$inline")" \
        "$(json_field iops <<<"$threaded")"
done
