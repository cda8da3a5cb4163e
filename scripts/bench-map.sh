#!/usr/bin/env bash
# Mapping microbenchmarks: instructions per request (callgrind) and time per
# request (criterion) of map + PRP/SGL build, ours beside a scatterlist-style
# baseline, plus per-request state sizes.
#
# Usage: scripts/bench-map.sh [--no-criterion] [--quick]
#
# Two instruction counts per request:
# - "map+build": instructions inside the submission-side function (map the
#   request, choose PRP/SGL, build: Fixture::ours_map_build_one or _many,
#   Fixture::baseline_map_build), counted with callgrind --toggle-collect
#   over N2 requests;
# - "cycle": the whole request cycle (map, build, release descriptor pages,
#   unmap), counted differentially: the case runs N1 and N2 times and
#   (Ir(N2) - Ir(N1)) / (N2 - N1) cancels setup out.
set -euo pipefail
cd "$(dirname "$0")/.."

criterion=1
n1=2000
n2=22000
for arg in "$@"; do
    case "$arg" in
        --no-criterion) criterion=0 ;;
        --quick) n1=200; n2=2200 ;;
        *) echo "usage: $0 [--no-criterion] [--quick]" >&2; exit 2 ;;
    esac
done

if ! command -v valgrind >/dev/null; then
    echo "valgrind is needed (apt-get install valgrind)" >&2
    exit 1
fi

cargo build --release --quiet -p nvme-bench --bin map-cost
bin=${CARGO_TARGET_DIR:-target}/release/map-cost

ir() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$@" 2>&1 |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

per_request() {
    local a b
    a=$(ir "$1" "$2" "$n1")
    b=$(ir "$1" "$2" "$n2")
    awk -v a="$a" -v b="$b" -v n=$((n2 - n1)) 'BEGIN { printf "%.1f", (b - a) / n }'
}

submit_only() {
    local a
    a=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        "--toggle-collect=*Fixture::${2}_map_build*" "$bin" "$1" "$2" "$n2" 2>&1 |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p')
    awk -v a="$a" -v n="$n2" 'BEGIN { printf "%.1f", a / n }'
}

ratio() {
    awk -v o="$1" -v b="$2" 'BEGIN { printf "%.2f", b / o }'
}

echo "== per-request state and format"
"$bin" --info
echo
echo "== instructions per request (callgrind)"
printf '%-18s | %10s %10s %7s | %10s %10s %7s\n' "" "map+build" "" "" "cycle" "" ""
printf '%-18s | %10s %10s %7s | %10s %10s %7s\n' case ours baseline ratio ours baseline ratio
for c in $("$bin" --list); do
    so=$(submit_only "$c" ours)
    sb=$(submit_only "$c" baseline)
    o=$(per_request "$c" ours)
    b=$(per_request "$c" baseline)
    printf '%-18s | %10s %10s %6sx | %10s %10s %6sx\n' "$c" "$so" "$sb" "$(ratio "$so" "$sb")" \
        "$o" "$b" "$(ratio "$o" "$b")"
done

if [ "$criterion" = 1 ]; then
    echo
    echo "== time per request (criterion)"
    # Criterion prints "group/function" then "time: [low mid high]", on one
    # line or two; keep the name and the middle estimate.
    cargo bench --quiet -p nvme-bench --bench map -- --noplot --warm-up-time 1 --measurement-time 3 2>&1 |
        awk '/^[a-z0-9-]+\/(ours|baseline)/ { name = $1 }
             /time:/ { sub(/.*time: *\[/, ""); split($0, v, " "); t[name] = v[3] " " v[4] }
             END {
                 printf "%-18s %12s %12s\n", "case", "ours", "baseline"
                 for (k in t) if (k ~ /\/ours$/) { c = k; sub(/\/ours$/, "", c); order[c] = 1 }
                 n = split("4k-reg 8k-reg 128k-32seg-reg 1m-reg 4k-iommu 8k-iommu 128k-32seg-iommu 1m-iommu", cs, " ")
                 for (i = 1; i <= n; i++) if (cs[i] in order)
                     printf "%-18s %12s %12s\n", cs[i], t[cs[i] "/ours"], t[cs[i] "/baseline"]
             }'
fi
