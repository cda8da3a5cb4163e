#!/usr/bin/env bash
# Self-test of scripts/vm/run.sh: boots the VM several times (one at a time)
# and checks what comes back. Prints one PASS/FAIL line per case with the
# wall time of its VM run, then "N passed, N failed". Exits non-zero if any
# case failed.
#
#   scripts/vm/selftest.sh            # all cases
#   scripts/vm/selftest.sh a d        # only the named cases

# Guest-side scripts are single-quoted on purpose: the guest shell expands them.
# shellcheck disable=SC2016

set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly RUN="$SCRIPT_DIR/run.sh"
REPO_DIR=$(cd "$SCRIPT_DIR/../.." && pwd)
readonly REPO_DIR

PASSED=0
FAILED=0
# Per-case scratch files. They live under the cache (on the host filesystem,
# visible to the guest through the host share); the guest's /tmp is its own.
CACHE=${VM_CACHE:-$REPO_DIR/target/vm-cache}
mkdir -p "$CACHE"
WORK=$(mktemp -d "$CACHE/selftest.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# run_vm NAME [run.sh args...]: runs run.sh, storing its stdout, stderr and
# exit status in $WORK/NAME.{out,err,rc} and its wall time in ELAPSED.
ELAPSED=0
run_vm() {
    local name=$1 start end rc=0
    shift
    start=$(date +%s.%N)
    "$RUN" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" || rc=$?
    end=$(date +%s.%N)
    echo "$rc" >"$WORK/$name.rc"
    ELAPSED=$(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.1f", e - s }')
}

# report NAME DESCRIPTION PROBLEM: PASS when PROBLEM is empty.
report() {
    local name=$1 desc=$2 problem=$3
    if [[ -z "$problem" ]]; then
        PASSED=$((PASSED + 1))
        printf 'PASS (%s) %s  [VM %s s]\n' "$name" "$desc" "$ELAPSED"
    else
        FAILED=$((FAILED + 1))
        printf 'FAIL (%s) %s  [VM %s s]\n' "$name" "$desc" "$ELAPSED"
        printf '    %s\n' "$problem"
        echo "    --- exit status: $(cat "$WORK/$name.rc" 2>/dev/null)"
        echo "    --- stdout:"
        sed 's/^/    | /' "$WORK/$name.out" 2>/dev/null | tail -n 20
        echo "    --- stderr:"
        sed 's/^/    | /' "$WORK/$name.err" 2>/dev/null | tail -n 40
    fi
}

# check_run NAME WANT_RC WANT_STDOUT: compares exit status and exact stdout.
check_run() {
    local name=$1 want_rc=$2 want_out=$3 rc out
    rc=$(cat "$WORK/$name.rc")
    out=$(cat "$WORK/$name.out")
    if [[ "$rc" != "$want_rc" ]]; then
        echo "exit status $rc, expected $want_rc"
    elif [[ "$out" != "$want_out" ]]; then
        echo "stdout differs from: $(printf '%q' "$want_out")"
    fi
}

case_a() {
    run_vm a -- sh -c 'echo out; echo err >&2; exit 7'
    local problem
    problem=$(check_run a 7 out)
    if [[ -z "$problem" && "$(cat "$WORK/a.err")" != err ]]; then
        problem="stderr is not exactly 'err'"
    fi
    report a "stdout, stderr and exit status come back intact" "$problem"
}

# Arguments with spaces and quotes, the working directory, passed-through
# and filtered environment variables.
case_a2() {
    local problem
    pushd "$REPO_DIR/scripts" >/dev/null
    NVME_SELFTEST="x y'z" SELFTEST_SECRET=hidden run_vm a2 -- \
        sh -c 'printf "[%s]" "$@"; echo; pwd; echo "$NVME_SELFTEST|${SELFTEST_SECRET-unset}|$VM_GUEST"' \
        arg0 "two words" "it's" '$HOME' ""
    popd >/dev/null
    problem=$(check_run a2 0 "$(printf '%s\n' "[two words][it's][\$HOME][]" "$REPO_DIR/scripts" "x y'z|unset|1")")
    report a2 "arguments, cwd and environment pass through" "$problem"
}

case_b() {
    run_vm b -- sh -c '
        set -e
        for d in /sys/bus/pci/devices/*; do
            [ "$(cat "$d/class")" = 0x010802 ] || continue
            drv=$(basename "$(readlink "$d/driver")")
            grp=$(basename "$(readlink "$d/iommu_group")")
            echo "driver=$drv"
            [ -c "/dev/vfio/$grp" ] && echo "group-device=yes"
        done
        [ -c /dev/vfio/vfio ] && echo "container=yes"
        [ -n "$(ls /sys/kernel/iommu_groups)" ] && echo "iommu-groups=yes"
        [ -e /sys/class/nvme/nvme0 ] || echo "no-kernel-nvme=yes"
    '
    report b "NVMe on vfio-pci, /dev/vfio/<group> and iommu_groups present" \
        "$(check_run b 0 "$(printf '%s\n' driver=vfio-pci group-device=yes container=yes iommu-groups=yes no-kernel-nvme=yes)")"
}

case_c() {
    run_vm c --no-bind -- sh -c 'test -b /dev/nvme0n1 && echo block=yes; basename "$(readlink /sys/class/nvme/nvme0/device/driver)"'
    report c "--no-bind: /dev/nvme0n1 exists, driver nvme" \
        "$(check_run c 0 "$(printf '%s\n' block=yes nvme)")"
}

case_d() {
    local image="$WORK/d.img" pattern="$WORK/d.pattern" problem
    head -c 65536 /dev/urandom >"$pattern"
    run_vm d --no-bind --image "$image" --image-size 16M --prefill zero -- \
        dd if="$pattern" of=/dev/nvme0n1 bs=4096 seek=256 oflag=direct conv=fsync status=none
    problem=$(check_run d 0 "")
    if [[ -z "$problem" ]]; then
        if ! cmp -s "$pattern" <(dd if="$image" bs=4096 skip=256 count=16 status=none); then
            problem="the image at offset 1 MiB does not hold the bytes the guest wrote"
        elif [[ -n "$(dd if="$image" bs=4096 count=256 status=none | tr -d '\0')" ]]; then
            problem="bytes before offset 1 MiB changed"
        fi
    fi
    report d "--no-bind: guest dd to /dev/nvme0n1 lands in the host image" "$problem"
}

case_e() {
    run_vm e --no-bind --lba-size 4096 -- \
        cat /sys/block/nvme0n1/queue/logical_block_size /sys/block/nvme0n1/queue/physical_block_size
    report e "--lba-size 4096 shows as 4096-byte blocks in sysfs" \
        "$(check_run e 0 "$(printf '%s\n' 4096 4096)")"
}

case_f() {
    # CapBnd bit 14 is CAP_IPC_LOCK, which --memlock drops.
    run_vm f --memlock 64 -- sh -c 'ulimit -l; bnd=$(awk "/^CapBnd/ {print \$2}" /proc/self/status); echo $(( (0x$bnd >> 14) & 1 ))'
    report f "--memlock 64 shows in ulimit -l, CAP_IPC_LOCK dropped" \
        "$(check_run f 0 "$(printf '%s\n' 64 0)")"
}

case_g() {
    local problem
    run_vm g --no-bind --namespaces 2 --image-size 8M,4M --cmb-mb 16 --prefill 0xa5 -- sh -c '
        cat /sys/block/nvme0n2/size
        od -An -tx1 -N4 /dev/nvme0n2 | tr -d " "
        test -e /sys/class/nvme/nvme0/device/resource2 && echo cmb-bar=yes
        ulimit -l'
    problem=$(check_run g 0 "$(printf '%s\n' 8192 a5a5a5a5 cmb-bar=yes unlimited)")
    report g "--namespaces 2, per-namespace size, --prefill, --cmb-mb" "$problem"
}

case_j() {
    local problem
    # The guest kernel sees the controller's limits: I/O queues it could
    # create (blk-mq hardware queues; 2 vCPUs would give 2) and MDTS as the
    # largest transfer (2^5 pages of 4 KiB = 128 KiB).
    run_vm j --no-bind --queues 1 --mdts 5 -- sh -c '
        ls /sys/block/nvme0n1/mq | wc -l
        cat /sys/block/nvme0n1/queue/max_hw_sectors_kb'
    problem=$(check_run j 0 "$(printf '%s\n' 1 128)")
    report j "--queues 1 and --mdts 5 as the guest kernel sees them" "$problem"
}

case_k() {
    local cache out status
    # Something that cannot be installed: a clear error and status 125.
    ELAPSED=-
    cache=$(mktemp -d "$CACHE/selftest-k.XXXXXX")
    status=0
    out=$(VM_CACHE=$cache VM_KERNEL_PKG=linux-image-0.0.0-nonexistent-amd64 \
        "$RUN" -- true 2>&1) || status=$?
    rm -rf "$cache"
    if [ "$status" != 125 ]; then
        report k "a package that cannot be installed" "exit $status, wanted 125"
    elif ! grep -q "cannot download Debian package linux-image-0.0.0-nonexistent-amd64" <<<"$out"; then
        report k "a package that cannot be installed" "no clear message: $out"
    else
        report k "a package that cannot be installed gives a clear error and 125" ""
    fi
}

case_h() {
    local problem=""
    run_vm h --timeout 3 -- true
    if [[ "$(cat "$WORK/h.rc")" != 125 ]]; then
        problem="exit status $(cat "$WORK/h.rc"), expected 125"
    elif ! grep -q 'timeout' "$WORK/h.err"; then
        problem="no timeout message on stderr"
    fi
    report h "--timeout 3 gives exit 125 and a timeout message" "$problem"
}

case_i() {
    run_vm i -- /nonexistent/command
    report i "a command that cannot be run gives status 127" "$(check_run i 127 "")"
}

main() {
    local cases=("$@") start c
    ((${#cases[@]} > 0)) || cases=(a a2 b c d e f g j h i k)
    echo "preparing (packages, kernel, initramfs)..."
    start=$(date +%s.%N)
    if ! "$RUN" --prepare; then
        echo "run.sh --prepare failed"
        echo "0 passed, 1 failed"
        exit 1
    fi
    echo "prepared in $(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }') s"
    start=$(date +%s.%N)
    for c in "${cases[@]}"; do
        declare -F "case_$c" >/dev/null || {
            echo "unknown case $c"
            exit 2
        }
        "case_$c"
    done
    echo "all cases took $(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }') s"
    echo "$PASSED passed, $FAILED failed"
    ((FAILED == 0))
}

main "$@"
