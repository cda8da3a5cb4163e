#!/usr/bin/env bash
# Runs every test of the project: the workspace's cargo tests (unit, property,
# integration, doc tests; no hardware needed), the instruction budgets of
# the hot paths (callgrind), the unsafe code's tests under Miri (undefined
# behaviour, data races), the nvme-cli example against its in-process
# nvme-sim device, the embedding examples, the C API's example and the fio
# engine (Debian's fio, ioengine=external) against nvme-sim, then the VM
# tests, which boot
# QEMU with an emulated NVMe controller behind an emulated IOMMU (scripts/vm)
# and run the VFIO, DMA-memory and driver test binaries inside it, in four scenarios:
# the controller on vfio-pci, left on the kernel's nvme driver, a low
# RLIMIT_MEMLOCK, and two namespaces the second of which is zoned; then the
# large-transfer test on a controller with an MDTS of 1; then a controller
# of another shape (one I/O queue pair, three namespaces of 4 KiB blocks,
# MDTS 5); then the hot unplug of a controller nvme-bench is running on;
# then two controllers sharing one DMA space; then the C example and fio
# through the engine on the controller; then a smoke run of
# nvme-bench against the kernel's driver with fio in one more boot (with
# tsc=reliable), and of nvme-bench's clocks with the guest's default clock
# source in another (scripts/bench-vm.sh --smoke).
#
# The VM tests need root (they install QEMU with apt-get on first use). Where
# they cannot run, they are skipped with the reason printed, never passed.
# NVME_SKIP_VM=1 skips them on purpose (also printed).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test --workspace"
cargo test --workspace

echo
echo "== instruction budgets of the hot paths (scripts/check-budgets.sh)"
scripts/check-budgets.sh

echo
echo "== Miri (scripts/miri.sh)"
scripts/miri.sh

echo
echo "== nvme-cli against its in-process nvme-sim device (scripts/cli-test.sh sim)"
cargo build --release --quiet -p nvme-vfio --example nvme-cli
cli=target/release/examples/nvme-cli
scripts/cli-test.sh "$cli" sim

echo
echo "== embedding examples against nvme-sim (async-tokio in interrupt mode, busy-poll)"
cargo run --quiet -p nvme-vfio --example async-tokio
cargo run --quiet --release -p nvme-vfio --example busy-poll -- sim 2 128

echo
echo "== C API and fio engine against nvme-sim (scripts/fio-test.sh sim)"
# The engine is built against the installed fio's own headers (its Debian
# source package), fio installed first if missing.
if [ "$(id -u)" != 0 ] && ! command -v fio >/dev/null; then
    echo "SKIPPED: fio engine tests (fio is not installed, and installing it needs root)"
    engine=
else
    engine=$(scripts/build-fio-engine.sh -q)
fi
hello=target/release/nvme-hello
cargo build --release --quiet -p nvme-capi
cc -O2 -Wall -Wextra -Werror -Icrates/nvme-capi/include examples/c/nvme-hello.c \
    target/release/libnvmevfio.a -lpthread -ldl -lm -o "$hello"
[ -z "$engine" ] || scripts/fio-test.sh "$engine" "$hello" sim

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

# The VM runner itself.
scripts/vm/selftest.sh

# The nvme-cli example (built above) is tested inside the guest too.

# Test binaries that run inside the guest.
bins=()
# test_binary NAME: the path of nvme-vfio's integration test binary NAME.
test_binary() {
    cargo test -p nvme-vfio --test "$1" --no-run 2>&1 |
        sed -n "s/.*(\(.*$1-[^)]*\)).*/\1/p" | tail -n 1
}
for t in vm_vfio vm_mem vm_ctrl vm_unplug vm_multi vm_protection; do
    bin=$(test_binary "$t")
    if [ -z "$bin" ] || [ ! -x "$bin" ]; then
        echo "cannot find the $t test binary" >&2
        exit 1
    fi
    bins+=("$bin")
done

passed=0
failed=0
# run_scenario NAME CLI RUN.SH-OPTIONS...: every binary, and the CLI tests
# when CLI is "cli", in one VM boot.
run_scenario() {
    local name=$1 cli_scenario=$2 start status
    shift 2
    [ "$cli_scenario" = cli ] && cli_scenario=$name || cli_scenario=
    echo "-- scenario $name"
    start=$(date +%s)
    status=0
    # shellcheck disable=SC2016 # expanded by the guest's shell
    scripts/vm/run.sh "$@" --env NVME_VM_SCENARIO="$name" --env NVME_VM_REQUIRE=1 \
        --env FIO_ENGINE="$engine" --env NVME_HELLO="$hello" -- \
        sh -c 'cli=$1 cs=$2; shift 2
            for b in "$@"; do "$b" --test-threads=1 || exit 1; done
            [ -z "$cs" ] || scripts/cli-test.sh "$cli" "$cs" || exit 1
            [ "$cs" != nvme-driver ] || scripts/fio-test.sh "$FIO_ENGINE" "$NVME_HELLO" nvme-driver' \
        vm-tests "$cli" "$cli_scenario" "${bins[@]:0:3}" ||
        status=$?
    echo "-- scenario $name: exit $status, $(($(date +%s) - start)) s"
    if [ "$status" = 0 ]; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
    fi
}
# The namespace's backing image: after the VM powers off, the host checks the
# bytes the driver wrote there (vm_ctrl's write_for_the_host_to_check).
image=target/vm-test-ns1.img
rm -f "$image"
run_scenario bound cli --image "$image" --image-size 64M --cmb-mb 16 \
    --env NVME_VM_NS_BYTES=67108864 --env NVME_VM_CMB=1
echo "-- host check of the backing image"
if python3 - "$image" <<'PY'
import sys
with open(sys.argv[1], "rb") as f:
    f.seek(1000 * 512)
    got = f.read(4096)
want = bytes((i * 7 + 3) & 0xFF for i in range(4096))
sys.exit(0 if got == want else 1)
PY
then
    echo "-- host check: the 8 blocks written at LBA 1000 are in the image"
    passed=$((passed + 1))
else
    echo "-- host check: the image does not hold what the driver wrote at LBA 1000"
    failed=$((failed + 1))
fi
rm -f "$image"
run_scenario nvme-driver cli --no-bind
run_scenario low-memlock - --memlock 64
# Two namespaces, the second zoned (Zoned Namespace command set, 4 MiB
# zones, at most 8 open and 14 active), both filled with 0x5a: command set
# discovery, reads of the zoned one, Report Zones, the zone actions, Zone
# Append and writes at the write pointer on QEMU's zone model (vm_ctrl's
# zoned test and the CLI's zns checks).
run_scenario zoned cli --namespaces 2 --zoned 2 --image-size 64M --prefill 0x5a

# run_single NAME BINARY RUN.SH-OPTIONS... -- TEST-ARGS...: one test binary
# in a boot of its own, in scenario NAME.
run_single() {
    local name=$1 bin=$2 start status=0 opts=()
    shift 2
    while [ "$1" != -- ]; do
        opts+=("$1")
        shift
    done
    shift
    echo "-- scenario $name"
    start=$(date +%s)
    scripts/vm/run.sh "${opts[@]}" --env NVME_VM_SCENARIO="$name" --env NVME_VM_REQUIRE=1 \
        --env NVME_BENCH=target/release/nvme-bench -- "$bin" --test-threads=1 "$@" ||
        status=$?
    echo "-- scenario $name: exit $status, $(($(date +%s) - start)) s"
    if [ "$status" = 0 ]; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
    fi
}
cargo build --release --quiet -p nvme-bench

# A controller with an MDTS of 1 (8 KiB per command): requests of any
# length through the blocking calls (vm_ctrl's small-mdts test), and
# nvme-cli's chunks sized from the controller: a 3 MiB write and a 1 MiB
# read back.
echo "-- scenario small-mdts"
start=$(date +%s)
status=0
scripts/vm/run.sh --mdts 1 --image-size 80M --env NVME_VM_SCENARIO=small-mdts \
    --env NVME_VM_REQUIRE=1 -- sh -c '
        "$1" --test-threads=1 --exact any_length_on_a_controller_with_a_small_mdts || exit 1
        d=$(mktemp -d) && head -c 3145728 /dev/urandom >"$d/in" || exit 1
        "$2" write 0000:00:03.0 -n 1 --lba 64 -i "$d/in" --yes || exit 1
        "$2" read 0000:00:03.0 -n 1 --lba 64 --size 1048576 -o "$d/out" || exit 1
        head -c 1048576 "$d/in" | cmp - "$d/out" || exit 1
        echo "nvme-cli: 3 MiB written and 1 MiB read back with MDTS 8 KiB"' \
    vm-tests "${bins[2]}" "$cli" || status=$?
echo "-- scenario small-mdts: exit $status, $(($(date +%s) - start)) s"
if [ "$status" = 0 ]; then
    passed=$((passed + 1))
else
    failed=$((failed + 1))
fi

# A controller of another shape: one I/O queue pair, three namespaces of
# 4 KiB blocks, MDTS 5 (vm_ctrl's shapes test only).
run_single shapes "${bins[2]}" --queues 1 --namespaces 3 --lba-size 4096 --mdts 5 \
    --image-size 64M -- --exact the_shapes_scenario_controller

# Hot unplug: nvme-bench runs on a controller behind a PCIe root port while
# QEMU unplugs it (QMP device_del); it must end with a clear error within a
# second of the kernel's device request, and the guest finish the unplug.
run_single hot-unplug "${bins[3]}" --hotplug -- --nocapture

# Two controllers in one DMA space: one registered buffer used by both,
# and nvme-bench on both at once.
run_single two-controllers "${bins[4]}" --controllers 2 --image-size 64M --

# The C API's example and the fio engine on the controller (Debian's fio
# with ioengine=external): a verified write of the whole namespace, two job
# threads with verification, trim and fsync, bad job options.
echo "-- scenario fio-engine"
start=$(date +%s)
status=0
scripts/vm/run.sh --image-size 64M -- scripts/fio-test.sh "$engine" "$hello" bound || status=$?
echo "-- scenario fio-engine: exit $status, $(($(date +%s) - start)) s"
if [ "$status" = 0 ]; then
    passed=$((passed + 1))
else
    failed=$((failed + 1))
fi

# Six namespaces formatted with metadata and end-to-end protection
# (separate and extended metadata, types 1 to 3, PI first or last, 16- and
# 64-bit guards): vm_protection's checks, then nvme-cli's metadata options
# (cli-test.sh's protection checks).
echo "-- scenario protection"
start=$(date +%s)
status=0
scripts/vm/run.sh --namespaces 6 --image-size 16M \
    --ns-opts 1:ms=8 --ns-opts 2:ms=8,mset=1,pi=1 --ns-opts 3:ms=8,pi=2 \
    --ns-opts 4:ms=16,pi=3,pil=1 --ns-opts 5:ms=16,pi=1,pif=2 --ns-opts 6:ms=16,pi=1,mset=1 \
    --env NVME_VM_SCENARIO=protection --env NVME_VM_REQUIRE=1 -- \
    sh -c '"$1" --test-threads=1 --nocapture && scripts/cli-test.sh "$2" protection' \
    vm-tests "${bins[5]}" "$cli" || status=$?
echo "-- scenario protection: exit $status, $(($(date +%s) - start)) s"
if [ "$status" = 0 ]; then
    passed=$((passed + 1))
else
    failed=$((failed + 1))
fi

# nvme-bench in the VM, side by side with the kernel's driver and fio: a
# smoke run (2 s per workload) that checks every figure is produced.
echo "-- nvme-bench smoke: scripts/bench-vm.sh --smoke"
start=$(date +%s)
if scripts/bench-vm.sh --smoke; then
    passed=$((passed + 1))
    echo "-- nvme-bench smoke: passed, $(($(date +%s) - start)) s"
else
    failed=$((failed + 1))
    echo "-- nvme-bench smoke: FAILED"
fi

echo "VM checks: $passed passed, $failed failed"
[ "$failed" = 0 ]
