#!/usr/bin/env bash
# Runs the project's unsafe code under Miri, the Rust interpreter that
# detects undefined behaviour: out-of-bounds and misaligned accesses, use
# after free, violations of the aliasing rules (Stacked Borrows) and data
# races between threads (the driver's thread and nvme-sim's worker share
# queue rings, PRP lists and data buffers). Over:
#
# - blk-dma: all its tests (the mapping iterator, the fake mapper).
# - nvme-vfio: the PRP/SGL builders (tests/builders.rs and the unit tests
#   of nvme::prp, prp::interior, sgl, dptr, desc, the rest of nvme::), the
#   DMA memory (mem::), the word copies to device memory (ctrl::mmio_copy)
#   and the VFIO tests that need no device files; twice:
#   once as built for any x86-64, where the interior PRP fill takes its SSE2
#   path, and once built with AVX2 (-C target-feature=+avx2, which Miri's
#   CPU feature detection follows), where it takes the AVX2 path.
# - nvme-sim: its unit tests, and the real driver (Controller::with_backend,
#   QueuePair) against it (tests/miri.rs): bring-up, then writes and reads
#   through an I/O queue, with the controller's worker on another thread.
#
# Miri interprets, about 100 times slower than native code: tests too slow
# or needing what Miri lacks (device files, /proc, real time) are
# `#[cfg_attr(miri, ignore)]` or left out by the filters below. About 3
# minutes on 2 cores from a clean target directory, 2 when built.
#
# Needs a nightly toolchain with the miri and rust-src components; they are
# installed with rustup when missing. Where that is impossible (no rustup,
# no network), prints "SKIPPED: Miri (reason)" and exits 0.
#
# Usage: scripts/miri.sh   (exits non-zero if Miri reports undefined
# behaviour or a test fails)
set -euo pipefail
cd "$(dirname "$0")/.."

skip() {
    echo "SKIPPED: Miri ($1)"
    exit 0
}

command -v rustup >/dev/null || skip "no rustup to install a nightly toolchain with"
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal --component miri,rust-src ||
        skip "cannot install the nightly toolchain"
fi
installed=$(rustup +nightly component list --installed 2>/dev/null || true)
if ! grep -q '^miri' <<<"$installed" || ! grep -q '^rust-src' <<<"$installed"; then
    rustup +nightly component add miri rust-src ||
        skip "cannot add the miri and rust-src components to the nightly toolchain"
fi
cargo +nightly miri setup || skip "cargo miri setup failed"

# The software IOMMU takes host addresses as integers, as VFIO's MAP_DMA
# does, and the simulated device turns them back into pointers: Miri allows
# that (exposed provenance) and would warn about every such cast.
export MIRIFLAGS="${MIRIFLAGS:-} -Zmiri-permissive-provenance"

start=$(date +%s)
passed=0
failed=()

# step NAME COMMAND...: runs one Miri step and records the outcome.
step() {
    local name=$1 t0
    shift
    echo
    echo "-- $name"
    t0=$(date +%s)
    if "$@"; then
        passed=$((passed + 1))
        echo "-- $name: passed, $(($(date +%s) - t0)) s"
    else
        failed+=("$name")
        echo "-- $name: FAILED, $(($(date +%s) - t0)) s"
    fi
}

miri() { cargo +nightly miri test "$@"; }

step "blk-dma: all tests" miri -p blk-dma

# nvme-vfio's unit tests that need no device files (the other vfio:: tests
# read sysfs and issue ioctls on files Miri cannot open).
lib_filters=(nvme:: mem:: ctrl::mmio_copy vfio::info vfio::ioctl
    vfio::bar::tests::accesses_are_bounds_checked_and_volatile)
step "nvme-vfio: unit tests (SSE2 interior)" miri -p nvme-vfio --lib -- "${lib_filters[@]}"
step "nvme-vfio: PRP/SGL builders (SSE2 interior)" miri -p nvme-vfio --test builders

# The same builders built for AVX2, in a target directory of their own (so
# the two builds do not displace each other). The interior test asserts
# that the AVX2 variant ran and is the one dispatched.
avx2_target=${CARGO_TARGET_DIR:-target}/miri-avx2
avx2() {
    CARGO_TARGET_DIR=$avx2_target RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+avx2" miri "$@"
}
step "nvme-vfio: PRP unit tests (AVX2 interior)" avx2 -p nvme-vfio --lib -- nvme::prp
step "nvme-vfio: PRP/SGL builders (AVX2 interior)" avx2 -p nvme-vfio --test builders

step "nvme-sim: unit tests" miri -p nvme-sim --lib
step "nvme-sim: the driver against the simulated controller" miri -p nvme-sim --test miri

echo
elapsed=$(($(date +%s) - start))
if [ "${#failed[@]}" -eq 0 ]; then
    echo "Miri: $passed steps passed, no undefined behaviour found ($elapsed s)"
else
    echo "Miri: ${#failed[@]} of $((passed + ${#failed[@]})) steps FAILED ($elapsed s):"
    printf '  %s\n' "${failed[@]}"
    exit 1
fi
