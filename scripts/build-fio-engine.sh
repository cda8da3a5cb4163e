#!/usr/bin/env bash
# Builds the fio external ioengine "nvme-vfio" (crates/nvme-capi/fio) for the
# fio installed on this machine, and prints the path of the .so:
#
#   fio --ioengine=external:$(scripts/build-fio-engine.sh) --thread=1 \
#       --filename='trtype=PCIe traddr=0000.01.00.0 ns=1' ...
#
# An external engine uses fio's internal structures, so it is compiled
# against the headers of exactly the fio version that loads it: the script
# fetches the Debian source package of the installed fio (apt-get source,
# with a private deb-src list: nothing of the system's apt configuration
# changes), unpacks it under target/fio-src/VERSION and runs its configure
# (which writes config-host.h), once; then builds the driver's static
# library (cargo build --release -p nvme-capi) and links the engine with it.
# fio is installed with apt-get when missing (as root).
#
# Usage: scripts/build-fio-engine.sh [-q]   (-q: only the path on stdout)
# Exit status non-zero with a message when something is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
quiet=0
[ "${1:-}" = -q ] && quiet=1
say() { [ "$quiet" = 1 ] || echo "build-fio-engine: $*" >&2; }
# apt's output, shown unless -q (then only on failure, from the log).
apt_log=$(mktemp)
trap 'rm -f "$apt_log"' EXIT
quietly() {
    if [ "$quiet" = 1 ]; then
        "$@" >>"$apt_log" 2>&1 || { cat "$apt_log" >&2; return 1; }
    else
        "$@" >&2
    fi
}
die() {
    echo "build-fio-engine: $*" >&2
    exit 1
}

if ! command -v fio >/dev/null; then
    [ "$(id -u)" = 0 ] || die "fio is not installed (apt-get install fio, as root)"
    say "installing fio"
    quietly sh -c 'apt-get install -y -q fio || { apt-get update -q && apt-get install -y -q fio; }'
fi
version=$(dpkg-query -W -f='${Version}' fio 2>/dev/null) ||
    die "fio is not a Debian package here: cannot fetch its sources"
upstream=${version#*:}
upstream=${upstream%-*}
target=${CARGO_TARGET_DIR:-$root/target}
src=$target/fio-src/$version
tree=$src/fio-$upstream

if [ ! -f "$tree/config-host.h" ]; then
    say "fetching the sources of fio $version"
    rm -rf "$src"
    mkdir -p "$src/lists/partial"
    codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
    {
        echo "deb-src http://deb.debian.org/debian $codename main"
        echo "deb-src http://deb.debian.org/debian $codename-updates main"
        echo "deb-src http://deb.debian.org/debian-security $codename-security main"
    } >"$src/sources.list"
    apt_opts=(-q -o "Dir::Etc::SourceList=$src/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$src/lists" -o APT::Sandbox::User=root)
    quietly apt-get "${apt_opts[@]}" update || die "apt-get update of the deb-src list failed"
    (cd "$src" && quietly apt-get "${apt_opts[@]}" source --download-only "fio=$version") ||
        die "cannot download the source package fio=$version"
    tar -C "$src" -xzf "$src/fio_$upstream.orig.tar.gz" || die "cannot unpack fio's sources"
    [ -d "$tree" ] || die "unexpected layout of fio's sources (no $tree)"
    say "configuring fio's headers"
    (cd "$tree" && ./configure --disable-native >"$src/configure.log" 2>&1) ||
        die "fio's configure failed (see $src/configure.log)"
fi

say "building libnvmevfio.a"
cargo build --release --quiet -p nvme-capi
lib=$target/release/libnvmevfio.a
out=$target/release/fio-nvme-vfio.so
say "linking the engine for fio $version"
# Only `ioengine` is exported: the driver's own symbols stay inside.
cc -shared -fPIC -O2 -g -Wall -Wno-unused-parameter -std=gnu11 \
    -include "$tree/config-host.h" -D_GNU_SOURCE -D_LARGEFILE_SOURCE -D_FILE_OFFSET_BITS=64 \
    -I "$tree" -I "$root/crates/nvme-capi/include" \
    "$root/crates/nvme-capi/fio/nvme_vfio_fio.c" "$lib" \
    -Wl,--exclude-libs,ALL -Wl,-z,defs -Wl,--unresolved-symbols=ignore-in-object-files \
    -lpthread -ldl -lm -o "$out"
echo "$out"
