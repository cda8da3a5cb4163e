#!/usr/bin/env bash
# Instructions per I/O of the embedding APIs, counted by callgrind on
# nvme-sim in inline null mode (the device's own work, inside the doorbell
# writes, is not counted): a poll group over 4 queue pairs (QD 32 each) on
# one thread against the same 4 queue pairs polled one by one, and
# asynchronous I/O (a future per request, a minimal executor) against
# submit/poll at QD 1 and 128. Each figure is the difference between runs
# of N1 and N2 I/Os, divided by the difference in I/Os: setup and
# teardown cancel out.
#
#   scripts/bench-embed.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null; then
    echo "valgrind is needed (apt-get install valgrind)" >&2
    exit 1
fi
cargo build --release --quiet -p nvme-bench --bin embed-cost
bin=${CARGO_TARGET_DIR:-target}/release/embed-cost
n1=4000
n2=24000

# run ARGS...: prints "INSTRUCTIONS IOS" for one run.
run() {
    local out ir ios
    out=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null --collect-atstart=no \
        "--toggle-collect=embed_cost::measured" \
        "--toggle-collect=*nvme_sim*RegisterFile*Registers*write32" \
        "$bin" "$@" 2>&1)
    ir=$(sed -n 's/.*Collected : \([0-9]*\).*/\1/p' <<<"$out")
    ios=$(sed -n 's/.*: \([0-9]*\) I\/Os$/\1/p' <<<"$out")
    echo "$ir $ios"
}

# per_io ARGS-BEFORE-N: instructions per I/O between N1 and N2 I/Os.
per_io() {
    local a b
    read -r -a a <<<"$(run "$@" "$n1")"
    read -r -a b <<<"$(run "$@" "$n2")"
    awk -v i1="${a[0]}" -v n1="${a[1]}" -v i2="${b[0]}" -v n2="${b[1]}" \
        'BEGIN { printf "%.0f", (i2 - i1) / (n2 - n1) }'
}

printf '%-46s %s\n' "workload (nvme-sim inline null)" "instructions per I/O"
printf '%-46s %s\n' "4 queue pairs x QD 32, one PollGroup" "$(per_io group)"
printf '%-46s %s\n' "4 queue pairs x QD 32, polled one by one" "$(per_io each)"
for qd in 1 128; do
    printf '%-46s %s\n' "QD $qd, submit/poll" "$(per_io sync "$qd")"
    printf '%-46s %s\n' "QD $qd, futures (AsyncQueuePair)" "$(per_io async "$qd")"
done
