#!/usr/bin/env bash
# Tests of the C API's example program and of the fio ioengine "nvme-vfio"
# (scripts/build-fio-engine.sh): Debian's fio loads the engine with
# ioengine=external and runs real job options through the driver.
#
# Usage: fio-test.sh ENGINE.so NVME-HELLO SCENARIO
#   sim          on any machine: the driver's in-process software controller
#                (traddr=sim)
#   bound        in the VM of scripts/vm, the controller 0000:00:03.0 on
#                vfio-pci (scripts/test.sh)
#   nvme-driver  in the VM, the controller left on the kernel's nvme driver:
#                every use must fail with a clear message
# Prints "N passed, N failed" and exits non-zero on failure.
set -uo pipefail

engine=$(realpath "$1")
hello=$(realpath "$2")
scenario=$3
work=$(mktemp -d)
# fio writes its verify state files in the current directory.
cd "$work" || exit 1
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "PASS $*"; }
bad() { failed=$((failed + 1)); echo "FAIL $*"; }

# expect NAME STATUS PATTERN -- COMMAND...: exit status STATUS and output
# (stdout and stderr) matching PATTERN.
expect() {
    local name=$1 want=$2 pat=$3
    shift 4
    local out status
    out=$("$@" 2>&1)
    status=$?
    if [ "$status" != "$want" ]; then
        bad "$name: exit $status, wanted $want: $(tail -n 20 <<<"$out")"
    elif ! grep -q -- "$pat" <<<"$out"; then
        bad "$name: output does not match '$pat': $(tail -n 20 <<<"$out")"
    else
        ok "$name"
    fi
}

case $scenario in
sim) addr=sim traddr=sim ;;
bound | nvme-driver) addr=0000:00:03.0 traddr=0000.00.03.0 ;;
*)
    echo "fio-test: unknown scenario $scenario" >&2
    exit 2
    ;;
esac
file="trtype=PCIe traddr=$traddr ns=1"
fio_run() {
    fio --ioengine="external:$engine" --thread=1 --filename="$file" --output-format=normal "$@"
}

if [ "$scenario" = nvme-driver ]; then
    expect "C example on a device left on nvme" 1 "is bound to nvme, not vfio-pci" -- "$hello" "$addr"
    expect "fio on a device left on nvme" 1 "nvme-vfio: cannot open controller $addr: .*is bound to nvme, not vfio-pci" -- \
        fio_run --name=unbound --rw=read --bs=4k --size=1m
else
    expect "C example: write, read back, compare" 0 "compared 131072 bytes: OK" -- "$hello" "$addr"

    # The whole namespace written with crc32c checksums, then read back and
    # verified by fio.
    expect "fio verify=crc32c over the whole namespace" 0 "err= 0" -- \
        fio_run --name=whole --rw=write --bs=128k --iodepth=16 --iodepth_batch_submit=4 \
        --iodepth_batch_complete_min=1 --verify=crc32c --do_verify=1 --verify_fatal=1
    fio_run --name=whole --rw=read --bs=1m --iodepth=4 --output-format=json >"$work/read.json" 2>"$work/err"
    if python3 - "$work/read.json" <<'PY'; then
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
size = j["read"]["io_bytes"]
sys.exit(0 if j["error"] == 0 and size >= 64 << 20 and j["read"]["clat_ns"]["percentile"]["99.000000"] > 0 else 1)
PY
        ok "fio read of the whole namespace, latency percentiles reported"
    else
        bad "fio read of the whole namespace: $(cat "$work/err")"
    fi

    # Every rw pattern; those that write are verified.
    for rw in read write randread randwrite rw randrw trim randtrim trimwrite randtrimwrite; do
        # (Reads alone have nothing of fio's to verify.)
        case $rw in write | randwrite | rw | randrw) v=(--verify=crc32c) ;; *) v=() ;; esac
        expect "fio rw=$rw" 0 "err= 0" -- \
            fio_run --name="$rw" --rw="$rw" --bs=8k --iodepth=8 --size=2m --offset=48m "${v[@]}"
    done

    # Two job threads, a queue pair each, random reads and writes with md5
    # verification, each on its own 8 MiB.
    expect "fio randrw numjobs=2 with verify=md5" 0 "jobs=2): err= 0" -- \
        fio_run --name=mixed --rw=randrw --rwmixread=60 --bs=4k --iodepth=8 --numjobs=2 \
        --size=8m --offset_increment=8m --time_based --runtime=3 --group_reporting \
        --verify=md5 --verify_fatal=1
    expect "fio trim and flush (fsync=4)" 0 "err= 0" -- \
        fio_run --name=trim --rw=randtrim --bs=4k --iodepth=4 --size=1m --offset=32m
    expect "fio writes with fsync" 0 "err= 0" -- \
        fio_run --name=sync --rw=write --bs=16k --iodepth=4 --size=1m --offset=40m --fsync=4

    # An error of the driver or the controller is the I/O's error in fio,
    # with the driver's message: random writes to a zoned namespace (the
    # software controller's, traddr=sim.nvm.zoned) are refused by the
    # controller with Zone Invalid Write.
    if [ "$scenario" = sim ]; then
        expect "a controller's error is the I/O's error" 1 "Zone Invalid Write" -- \
            fio --ioengine="external:$engine" --thread=1 --filename="trtype=PCIe traddr=sim.nvm.zoned ns=2" \
            --name=zoned --rw=randwrite --bs=4k --size=1m --offset=1m
        expect "fio reports it as an I/O error" 1 "err= *5\|Input/output error" -- \
            fio --ioengine="external:$engine" --thread=1 --filename="trtype=PCIe traddr=sim.nvm.zoned ns=2" \
            --name=zoned --rw=randwrite --bs=4k --size=1m --offset=1m
    fi

    # Bad input ends with a clear message.
    expect "fio without traddr" 1 "has no traddr=" -- \
        fio --ioengine="external:$engine" --thread=1 --filename="trtype=PCIe ns=1" --name=bad --rw=read --size=1m
    expect "fio with another transport" 1 "trtype RDMA is not supported" -- \
        fio --ioengine="external:$engine" --thread=1 --filename="trtype=RDMA traddr=$traddr" --name=bad --rw=read --size=1m
    expect "fio with a missing namespace" 1 "namespace 9 is not active" -- \
        fio --ioengine="external:$engine" --thread=1 --filename="trtype=PCIe traddr=$traddr ns=9" --name=bad --rw=read --size=1m
    expect "fio without thread=1" 1 "the engine needs thread=1" -- \
        fio --ioengine="external:$engine" --filename="$file" --name=bad --rw=read --size=1m
    expect "fio with a block size that is not whole blocks" 1 "not a multiple of the block size" -- \
        fio_run --name=bad --rw=read --bs=700 --size=1m
fi
expect "fio on a device that does not exist" 1 "no PCI device 0000:00:1f.7" -- \
    fio --ioengine="external:$engine" --thread=1 --filename="trtype=PCIe traddr=0000.00.1f.7 ns=1" --name=bad --rw=read --size=1m

cd / && rm -rf "$work"
echo "fio-test ($scenario): $passed passed, $failed failed"
[ "$failed" = 0 ]
