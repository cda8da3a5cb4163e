#!/usr/bin/env bash
# Instruction budgets of the hot paths, checked with callgrind: instruction
# counts are deterministic for a given build, unlike time on a shared machine.
#
# - map + PRP/SGL build of one request (scripts/bench-map.sh's "map+build"):
#   4 KiB from registered memory <= 40 instructions, 128 KiB in 32
#   scattered segments <= 250 (the AVX2 pass; on a CPU without AVX2 the
#   count is printed and not checked, with the reason).
# - the driver per I/O (scripts/bench-driver.sh's "driver" column: inside
#   QueuePair::submit and QueuePair::poll, 4 KiB random reads from pool
#   buffers against nvme-sim's null mode, one queue) at QD 128 <= 320
#   (300 before completions were checked against command IDs from the
#   whole 16-bit space, SQ IDs and SQ heads, and commands stamped with
#   their doorbell's time for timeouts: about 35 instructions per I/O).
#
# Prints every figure with its budget; exits 1 if one is over.
#
# Usage: scripts/check-budgets.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null; then
    echo "valgrind is needed (apt-get install valgrind)" >&2
    exit 1
fi

cargo build --release --quiet -p nvme-bench --bin map-cost --bin nvme-bench
dir=${CARGO_TARGET_DIR:-target}/release
over=0

# collected ARGS...: instructions callgrind collected.
collected() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$@" 2>&1 |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

# check NAME VALUE BUDGET: prints the line, counts it if over.
check() {
    if ! [[ "$2" =~ ^[0-9]+(\.[0-9]+)?$ ]]; then
        printf '%-44s no figure (%s)  FAILED\n' "$1" "$2"
        over=$((over + 1))
    elif awk -v v="$2" -v b="$3" 'BEGIN { exit !(v <= b) }'; then
        printf '%-44s %8s <= %s\n' "$1" "$2" "$3"
    else
        printf '%-44s %8s >  %s  OVER BUDGET\n' "$1" "$2" "$3"
        over=$((over + 1))
    fi
}

# map+build instructions per request of CASE, over N requests.
map_build() {
    local n=20000 ir
    ir=$(collected "--toggle-collect=*Fixture::ours_map_build_*" "$dir/map-cost" "$1" ours "$n")
    [ -n "$ir" ] || return 0
    awk -v a="$ir" -v n="$n" 'BEGIN { printf "%.1f", a / n }'
}

check "map+build, 4 KiB registered" "$(map_build 4k-reg)" 40
v=$(map_build 128k-32seg-reg)
if grep -qw avx2 /proc/cpuinfo; then
    check "map+build, 128 KiB in 32 segments registered" "$v" 250
else
    echo "map+build, 128 KiB in 32 segments registered: $v (not checked: this CPU has no AVX2)"
fi

check "driver per I/O, QD 128" "$(scripts/bench-driver.sh --driver-instructions 128)" 320

exit $((over > 0))
