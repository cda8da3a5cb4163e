#!/bin/busybox sh
# shellcheck shell=sh
#
# /init of the guest initramfs built by scripts/vm/run.sh. Runs as PID 1
# under busybox sh inside the VM.
#
# Contract with run.sh (host side):
# - The writable 9p share with mount tag "out" holds:
#     config.sh  sourced here; sets VM_BIND, VM_MEMLOCK, VM_DROP_IPC_LOCK,
#                VM_CWD, VM_NAMESPACES, VM_DEV_TIMEOUT and, via `set --`,
#                the command's argv
#     env.sh     sourced in an empty environment right before the command;
#                `export NAME='value'` lines
#   and this script writes there:
#     stdout, stderr   the command's output streams
#     status           the command's exit status (written last, atomically)
#     setup-error      why the command was not run (if it was not)
#     guest-info       guest facts (kernel, bound devices) for diagnostics
# - The read-only 9p share with mount tag "host" is the host's "/".
# - /etc/vm/modules-share and /etc/vm/modules-dev (in the initramfs) list
#   module files in load order (dependencies first), one path a line.

PATH=/bin:/sbin:/usr/bin:/usr/sbin
export PATH

log() {
    echo "vm-init: $*" >/dev/console
}

poweroff_now() {
    sync
    /bin/busybox poweroff -f
    # poweroff -f does not return; if it does, panic=-1 turns the exit of
    # PID 1 into a reboot, which -no-reboot turns into QEMU exiting.
    exit 1
}

# Record why the command could not be run and stop the VM.
fail_setup() {
    log "setup failed: $*"
    if [ -d /out ] && grep -q ' /out ' /proc/mounts 2>/dev/null; then
        echo "$*" >/out/setup-error
        dmesg >/out/dmesg 2>/dev/null
    fi
    poweroff_now
}

mount_basics() {
    /bin/busybox mkdir -p /proc /sys /dev /tmp /bin /sbin /usr/bin /usr/sbin
    /bin/busybox mount -t proc proc /proc
    /bin/busybox mount -t sysfs sysfs /sys
    /bin/busybox mount -t devtmpfs devtmpfs /dev
    /bin/busybox --install -s
    mkdir -p /dev/pts /dev/shm
    mount -t devpts devpts /dev/pts
    mount -t tmpfs tmpfs /dev/shm
    mount -t tmpfs tmpfs /tmp
}

# insmod every module listed in file $1. A module that is already loaded
# (or built in) is fine; other failures are logged and judged later by
# require_modules, because optional soft dependencies (e.g. a CPU-specific
# crc implementation) may legitimately fail.
load_module_list() {
    while IFS= read -r ko; do
        [ -n "$ko" ] || continue
        name=${ko##*/}
        name=${name%.ko}
        name=$(echo "$name" | tr - _)
        [ -d "/sys/module/$name" ] && continue
        insmod "$ko" 2>/tmp/insmod.err || log "insmod $ko: $(cat /tmp/insmod.err)"
    done <"$1"
}

require_modules() {
    for m in "$@"; do
        [ -d "/sys/module/$m" ] || fail_setup "kernel module $m is not loaded"
    done
}

mount_out_share() {
    load_module_list /etc/vm/modules-share
    require_modules virtio_pci 9pnet_virtio 9p
    mkdir -p /out
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out /out ||
        fail_setup "cannot mount the output share"
}

# PCI functions with class 0x010802 (NVMe), as BDFs, one a line.
nvme_functions() {
    for dev in /sys/bus/pci/devices/*; do
        [ "$(cat "$dev/class")" = 0x010802 ] && echo "${dev##*/}"
    done
}

# Mark every NVMe function for vfio-pci before any NVMe-capable driver is
# loaded, so the kernel nvme driver never claims them.
override_nvme_functions() {
    for bdf in $(nvme_functions); do
        echo vfio-pci >"/sys/bus/pci/devices/$bdf/driver_override"
    done
}

bind_nvme_to_vfio() {
    found=0
    for bdf in $(nvme_functions); do
        found=1
        dev=/sys/bus/pci/devices/$bdf
        if [ ! -e "$dev/driver" ]; then
            echo "$bdf" >/sys/bus/pci/drivers_probe
        fi
        drv=$(readlink "$dev/driver" 2>/dev/null)
        [ "${drv##*/}" = vfio-pci ] ||
            fail_setup "$bdf is bound to '${drv##*/}', not vfio-pci"
        [ -e "$dev/iommu_group" ] || fail_setup "$bdf has no IOMMU group"
        group=$(readlink "$dev/iommu_group")
        group=${group##*/}
        wait_for "/dev/vfio/$group" || fail_setup "/dev/vfio/$group did not appear"
        echo "nvme $bdf vfio-pci group $group" >>/out/guest-info
        log "$bdf bound to vfio-pci, /dev/vfio/$group"
    done
    [ "$found" = 1 ] || fail_setup "no NVMe PCI function (class 0x010802) found"
}

# Wait (up to VM_DEV_TIMEOUT seconds) for a path to exist.
wait_for() {
    i=0
    while [ ! -e "$1" ]; do
        i=$((i + 1))
        [ "$i" -le $((VM_DEV_TIMEOUT * 10)) ] || return 1
        usleep 100000
    done
    return 0
}

wait_for_nvme_block_devices() {
    [ -n "$(nvme_functions)" ] || fail_setup "no NVMe PCI function (class 0x010802) found"
    n=1
    while [ "$n" -le "$VM_NAMESPACES" ]; do
        wait_for "/dev/nvme0n$n" || fail_setup "/dev/nvme0n$n did not appear"
        n=$((n + 1))
    done
    for bdf in $(nvme_functions); do
        drv=$(readlink "/sys/bus/pci/devices/$bdf/driver" 2>/dev/null)
        echo "nvme $bdf ${drv##*/}" >>/out/guest-info
        log "$bdf left on driver ${drv##*/}"
    done
}

mount_host_root() {
    mkdir -p /host
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro host /host ||
        fail_setup "cannot mount the host share"
    for d in proc sys dev tmp; do
        [ -d "/host/$d" ] || fail_setup "host has no /$d to mount over"
    done
    mount --bind /proc /host/proc
    mount --bind /sys /host/sys
    mount --rbind /dev /host/dev
    # The command gets a writable /tmp of its own. When its working directory
    # lives under the host's /tmp (a CI checkout, say), that directory is
    # bound back in, read-only like the rest of the host root.
    case "$VM_CWD" in
        /tmp/?*)
            top=${VM_CWD#/tmp/}
            top=${top%%/*}
            mkdir -p /hosttmp
            mount --bind /host/tmp /hosttmp
            mount -t tmpfs tmpfs /host/tmp
            mkdir -p "/host/tmp/$top"
            mount --bind "/hosttmp/$top" "/host/tmp/$top"
            ;;
        *)
            mount -t tmpfs tmpfs /host/tmp
            ;;
    esac
    # run.sh --hotplug: the directory the command and the host talk through.
    if [ "$VM_HOTPLUG" = 1 ]; then
        mkdir -p /host/tmp/vm-ctl
        mount --bind /out/ctl /host/tmp/vm-ctl || fail_setup "cannot bind the control directory"
    fi
}

# Run the command inside the host root. Its exit status is returned.
run_command() {
    # shellcheck disable=SC3045 # busybox ash has ulimit -l
    ulimit -l "$VM_MEMLOCK" || fail_setup "ulimit -l $VM_MEMLOCK failed"
    # Root has CAP_IPC_LOCK, which bypasses RLIMIT_MEMLOCK both in mlock()
    # and in VFIO type1 DMA-mapping accounting; dropping it from the bounding
    # set makes the limit apply to the command like to an unprivileged user.
    if [ "$VM_DROP_IPC_LOCK" = 1 ]; then
        set -- /usr/bin/setpriv --bounding-set=-ipc_lock --inh-caps=-ipc_lock -- "$@"
    fi
    # env -i: the command sees only what env.sh exports (plus VM_GUEST).
    # cd happens inside the chroot, with the host's /bin/sh.
    # shellcheck disable=SC2016 # expanded by the inner shells
    env -i /bin/busybox sh -c '. /out/env.sh; export VM_GUEST=1; exec "$@"' vm-env \
        /bin/busybox chroot /host /bin/sh -c 'cd -- "$1" || exit 126; shift; exec "$@"' vm-run \
        "$VM_CWD" "$@" </dev/null >/out/stdout 2>/out/stderr
}

main() {
    mount_basics
    # run.sh boots with vm.probe once to find out whether KVM works.
    if grep -qw vm.probe /proc/cmdline; then
        log "probe ok"
        poweroff_now
    fi
    mount_out_share
    [ -r /out/config.sh ] || fail_setup "no config.sh in the output share"
    # Defaults, overridden by config.sh.
    VM_BIND=1 VM_MEMLOCK=unlimited VM_DROP_IPC_LOCK=0 VM_CWD=/ VM_NAMESPACES=1 VM_DEV_TIMEOUT=60 VM_HOTPLUG=0
    # config.sh is written by run.sh; its `set --` sets the command's argv.
    # shellcheck source=/dev/null
    . /out/config.sh
    echo "kernel $(uname -r)" >/out/guest-info

    [ "$VM_BIND" = 1 ] && override_nvme_functions
    load_module_list /etc/vm/modules-dev
    log "modules loaded"
    require_modules vfio vfio_iommu_type1 vfio_pci nvme nvme_core
    [ -n "$(ls /sys/kernel/iommu_groups 2>/dev/null)" ] ||
        fail_setup "/sys/kernel/iommu_groups is empty: the IOMMU is not active"
    if [ "$VM_BIND" = 1 ]; then
        bind_nvme_to_vfio
    else
        wait_for_nvme_block_devices
    fi

    mount_host_root
    [ -d "/host$VM_CWD" ] ||
        fail_setup "working directory $VM_CWD does not exist in the guest"
    log "running command"
    run_command "$@"
    status=$?
    echo "$status" >/out/status.tmp && mv /out/status.tmp /out/status
    log "command exited with status $status"
    poweroff_now
}

main "$@"
