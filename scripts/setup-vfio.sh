#!/usr/bin/env bash
# Prepare NVMe devices for the userspace driver, in the manner of SPDK's
# scripts/setup.sh.
#
#   setup-vfio.sh [--dry-run] [--force] bind [BDF...]   bind to vfio-pci
#                                                       (default: every NVMe
#                                                       function not in use)
#   setup-vfio.sh [--dry-run] unbind|reset [BDF...]     back to the kernel's
#                                                       nvme driver
#   setup-vfio.sh status                                a table of NVMe functions
#
# Environment: HUGEMEM (MiB of 2 MiB hugepages to reserve on bind, default
# 1024), TARGET_USER (user to own /dev/vfio/N, so the driver can run
# unprivileged). A disk holding a mounted filesystem, active swap, or a
# device-mapper/md holder is refused unless --force. Running it twice does
# nothing more.
set -euo pipefail

SYS=${SYSFS_ROOT:-/sys}
HUGEMEM=${HUGEMEM:-1024}
TARGET_USER=${TARGET_USER:-}
DRY=0
FORCE=0

die() {
    echo "setup-vfio: $*" >&2
    exit 1
}

usage() {
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

# put VALUE FILE: write a sysfs/procfs value, or show it with --dry-run.
put() {
    if [ "$DRY" = 1 ]; then
        echo "would write '$1' to $2"
    else
        printf '%s\n' "$1" >"$2"
    fi
}

is_nvme() {
    [ "$(cat "$SYS/bus/pci/devices/$1/class" 2>/dev/null)" = 0x010802 ]
}

nvme_functions() {
    local d
    for d in "$SYS"/bus/pci/devices/*; do
        [ -e "$d" ] || continue
        is_nvme "${d##*/}" && echo "${d##*/}"
    done
}

# normalize BDF: accepts 01:00.0 and 0000:01:00.0.
normalize() {
    case "$1" in
        ????:??:??.?) echo "$1" ;;
        ??:??.?) echo "0000:$1" ;;
        *) die "malformed PCI address '$1' (expected 0000:01:00.0 or 01:00.0)" ;;
    esac
}

driver_of() {
    local l
    l=$(readlink "$SYS/bus/pci/devices/$1/driver" 2>/dev/null) || {
        echo "-"
        return
    }
    echo "${l##*/}"
}

group_of() {
    local l
    l=$(readlink "$SYS/bus/pci/devices/$1/iommu_group" 2>/dev/null) || {
        echo "-"
        return
    }
    echo "${l##*/}"
}

model_of() {
    local m
    for m in "$SYS"/bus/pci/devices/"$1"/nvme/nvme*/model; do
        [ -r "$m" ] && {
            sed 's/ *$//' "$m"
            return
        }
    done
    echo "-"
}

# The block devices (namespaces and partitions) of a function on the nvme
# driver.
block_devices() {
    local c n p
    for c in "$SYS"/bus/pci/devices/"$1"/nvme/nvme*; do
        [ -d "$c" ] || continue
        for n in "$SYS"/block/"${c##*/}"n*; do
            [ -d "$n" ] || continue
            echo "${n##*/}"
            for p in "$n"/"${n##*/}"p*; do
                [ -d "$p" ] && echo "${p##*/}"
            done
        done
    done
}

# Why a function must not be taken from the kernel, or nothing.
in_use() {
    local b reason=""
    for b in $(block_devices "$1"); do
        if grep -q "^/dev/$b " /proc/mounts 2>/dev/null; then
            reason="$reason /dev/$b is mounted;"
        fi
        if grep -q "^/dev/$b " /proc/swaps 2>/dev/null; then
            reason="$reason /dev/$b is active swap;"
        fi
        local h
        for h in "$SYS"/block/*/"$b"/holders/* "$SYS"/block/"$b"/holders/*; do
            [ -e "$h" ] && reason="$reason /dev/$b is held by ${h##*/} (device-mapper/md);"
        done
    done
    echo "$reason"
}

# Every device of the IOMMU group must be on vfio-pci, on no driver, or a
# PCI bridge, or VFIO cannot use the group.
group_blockers() {
    local g=$1 self=$2 d b drv class
    for d in "$SYS"/kernel/iommu_groups/"$g"/devices/*; do
        [ -e "$d" ] || continue
        b=${d##*/}
        [ "$b" = "$self" ] && continue
        drv=$(driver_of "$b")
        class=$(cat "$SYS/bus/pci/devices/$b/class" 2>/dev/null || echo 0)
        case "$drv:$class" in
            vfio-pci:* | -:* | *:0x0604*) ;;
            *) echo "$b (on $drv)" ;;
        esac
    done
}

viable() {
    local g
    g=$(group_of "$1")
    [ "$g" != "-" ] && [ -z "$(group_blockers "$g" "$1")" ] && echo yes || echo no
}

has_block_device() { # has_block_device BDF: the kernel made a block device of it
    [ -n "$(block_devices "$1")" ]
}

wait_for() { # wait_for SECONDS TEST... (TEST runs again each time)
    local i=0 limit=$(($1 * 10))
    shift
    while ! "$@"; do
        i=$((i + 1))
        [ "$i" -ge "$limit" ] && return 1
        sleep 0.1
    done
}

setup_hugepages() {
    local want=$((HUGEMEM / 2)) f="$SYS/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages" have
    [ -e "$f" ] || {
        echo "note: no 2 MiB hugepage support; the driver falls back to 4 KiB pages"
        return
    }
    have=$(cat "$f")
    if [ "$have" -lt "$want" ]; then
        put "$want" "$f"
        [ "$DRY" = 1 ] || [ "$(cat "$f")" -ge "$want" ] ||
            echo "warning: only $(cat "$f") of $want hugepages could be reserved"
    fi
}

check_memlock() {
    local l
    l=$(ulimit -l)
    if [ "$l" != unlimited ] && [ "$(id -u)" != 0 ] && [ "$l" -lt $((HUGEMEM * 1024)) ]; then
        echo "warning: RLIMIT_MEMLOCK is $l KiB, below HUGEMEM ($HUGEMEM MiB): raise it (ulimit -l, limits.conf) for DMA mappings"
    fi
}

bind_one() {
    local bdf=$1 drv g why blockers
    is_nvme "$bdf" || die "$bdf is not an NVMe function (or does not exist)"
    drv=$(driver_of "$bdf")
    g=$(group_of "$bdf")
    [ "$g" != "-" ] || die "$bdf has no IOMMU group: enable the IOMMU (intel_iommu=on / amd_iommu=on)"
    if [ "$drv" = vfio-pci ]; then
        echo "$bdf: already on vfio-pci (group $g)"
        return
    fi
    why=$(in_use "$bdf")
    if [ -n "$why" ] && [ "$FORCE" != 1 ]; then
        die "$bdf is in use:$why refusing (--force to take it anyway)"
    fi
    blockers=$(group_blockers "$g" "$bdf")
    if [ -n "$blockers" ]; then
        die "$bdf: IOMMU group $g also holds $(echo "$blockers" | tr '\n' ' ')- bind or unbind those too"
    fi
    [ -d "$SYS/bus/pci/drivers/vfio-pci" ] || {
        if [ "$DRY" = 1 ]; then
            echo "would load vfio-pci"
        else
            modprobe vfio-pci 2>/dev/null || die "cannot load the vfio-pci module"
        fi
    }
    put vfio-pci "$SYS/bus/pci/devices/$bdf/driver_override"
    [ "$drv" = - ] || put "$bdf" "$SYS/bus/pci/devices/$bdf/driver/unbind"
    put "$bdf" "$SYS/bus/pci/drivers_probe"
    if [ "$DRY" = 0 ]; then
        wait_for 5 test -e "/dev/vfio/$g" || die "$bdf: /dev/vfio/$g did not appear"
        if [ -n "$TARGET_USER" ]; then
            chown "$TARGET_USER" "/dev/vfio/$g"
        fi
    fi
    echo "$bdf: bound to vfio-pci (was $drv), /dev/vfio/$g"
}

unbind_one() {
    local bdf=$1 drv
    is_nvme "$bdf" || die "$bdf is not an NVMe function (or does not exist)"
    drv=$(driver_of "$bdf")
    if [ "$drv" = nvme ]; then
        echo "$bdf: already on nvme"
        return
    fi
    put "" "$SYS/bus/pci/devices/$bdf/driver_override"
    [ "$drv" = - ] || put "$bdf" "$SYS/bus/pci/devices/$bdf/driver/unbind"
    put "$bdf" "$SYS/bus/pci/drivers_probe"
    if [ "$DRY" = 0 ]; then
        wait_for 10 has_block_device "$bdf" ||
            echo "warning: $bdf: no block device appeared yet (is the nvme module loaded?)"
    fi
    echo "$bdf: back on $(driver_of "$bdf") (was $drv) $(block_devices "$bdf" | sed 's|^|/dev/|' | tr '\n' ' ')"
}

status() {
    local f="$SYS/kernel/mm/hugepages/hugepages-2048kB"
    printf '%-14s %-24s %-10s %-6s %-7s %s\n' address model driver group viable in-use
    local b
    for b in $(nvme_functions); do
        local why
        why=$(in_use "$b")
        printf '%-14s %-24s %-10s %-6s %-7s %s\n' "$b" "$(model_of "$b" | cut -c1-24)" "$(driver_of "$b")" \
            "$(group_of "$b")" "$(viable "$b")" "${why:-no}"
    done
    if [ -e "$f/nr_hugepages" ]; then
        echo "hugepages (2 MiB): $(cat "$f/nr_hugepages") total, $(cat "$f/free_hugepages") free"
    else
        echo "hugepages (2 MiB): not supported"
    fi
    echo "memlock limit: $(ulimit -l) KiB"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --force) FORCE=1 ;;
        -h | --help) usage ;;
        -*) echo "setup-vfio: unknown option $1" >&2; usage ;;
        *) break ;;
    esac
    shift
done
[ $# -ge 1 ] || usage
cmd=$1
shift

case "$cmd" in
    status) status ;;
    bind)
        [ "$(id -u)" = 0 ] || [ "$DRY" = 1 ] || die "bind needs root"
        if [ $# -eq 0 ]; then
            # shellcheck disable=SC2046 # PCI addresses have no spaces
            set -- $(for b in $(nvme_functions); do
                [ -z "$(in_use "$b")" ] && [ "$(driver_of "$b")" != vfio-pci ] && echo "$b"
            done)
            [ $# -gt 0 ] || echo "no NVMe function to bind (all in use or already on vfio-pci)"
        fi
        for b in "$@"; do bind_one "$(normalize "$b")"; done
        setup_hugepages
        check_memlock
        ;;
    unbind | reset)
        [ "$(id -u)" = 0 ] || [ "$DRY" = 1 ] || die "$cmd needs root"
        if [ $# -eq 0 ]; then
            # shellcheck disable=SC2046 # PCI addresses have no spaces
            set -- $(for b in $(nvme_functions); do
                [ "$(driver_of "$b")" = vfio-pci ] && echo "$b"
            done)
        fi
        for b in "$@"; do unbind_one "$(normalize "$b")"; done
        ;;
    *) usage ;;
esac
