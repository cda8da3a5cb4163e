#!/usr/bin/env bash
# The main job on a machine with no NVMe disk: boot QEMU with an emulated
# NVMe controller behind an emulated Intel IOMMU, bind it to vfio-pci in the
# guest, and drive it from userspace with this driver through real VFIO:
# list, identify, write a file and read it back, SMART log, and a short
# nvme-bench run (4 KiB random reads at QD 32, 128 KiB sequential reads).
# Afterwards the host checks the written bytes in the namespace's backing
# image. Needs root (installs QEMU with apt-get on first use).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
    echo "demo: run as root (it installs QEMU and boots a VM)" >&2
    exit 2
fi

say "Building the nvme-cli example and nvme-bench (release)"
cargo build --release --quiet -p nvme-vfio --example nvme-cli
cargo build --release --quiet -p nvme-bench --bin nvme-bench
cli=target/release/examples/nvme-cli
bench=target/release/nvme-bench

image=target/demo-ns1.img
data=target/demo-data.bin
rm -f "$image"
head -c $((3 << 20)) /dev/urandom >"$data"
echo "namespace image: $image (256 MiB, 512-byte blocks); test data: $data (3 MiB)"

say "Booting QEMU (emulated NVMe + intel-iommu), vfio-pci in the guest"
start=$(date +%s)
# shellcheck disable=SC2016 # expanded by the guest's shell
scripts/vm/run.sh --image "$image" --image-size 256M --cmb-mb 16 -- sh -c '
set -e
C=$1; DATA=$2; B=$3; D=0000:00:03.0
step() { printf "\n-- %s\n" "$*"; }
step "nvme-cli list"
$C list
step "nvme-cli id-ctrl $D"
$C id-ctrl $D
step "nvme-cli id-ns $D -n 1"
$C id-ns $D -n 1
step "nvme-cli write $D -n 1 --lba 2048 -i $DATA --yes"
$C write $D -n 1 --lba 2048 -i $DATA --yes
step "nvme-cli read $D -n 1 --lba 2048 --size 3145728 (compared with the file)"
$C read $D -n 1 --lba 2048 --size 3145728 | cmp - $DATA && echo "read back: identical"
step "nvme-cli smart-log $D"
$C smart-log $D
step "nvme-bench: 4 KiB random reads, QD 32, 3 s (emulated device under TCG)"
$B --device $D --rw randread --bs 4k --qd 32 --time 3 --no-progress
step "nvme-bench: 128 KiB sequential reads, QD 8, 3 s"
$B --device $D --rw read --bs 128k --qd 8 --time 3 --no-progress
' demo "$cli" "$data" "$bench"
vm_s=$(($(date +%s) - start))

say "Checking from the host: the bytes the driver wrote are in the image"
if cmp -s -n $((3 << 20)) -i 0:$((2048 * 512)) "$data" "$image"; then
    echo "image at LBA 2048: identical to $data"
    check=passed
else
    echo "image at LBA 2048: DIFFERENT from $data" >&2
    check=failed
fi

say "Summary"
echo "VM run: ${vm_s} s; userspace driver through VFIO and the emulated IOMMU: list, identify,"
echo "3 MiB written and read back, SMART log, nvme-bench runs; host-side image check: $check"
rm -f "$data" "$image"
[ "$check" = passed ]
