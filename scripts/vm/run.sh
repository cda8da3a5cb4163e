#!/usr/bin/env bash
# Run a host command inside a QEMU VM that has an emulated NVMe controller
# behind an emulated Intel IOMMU, with the controller bound to vfio-pci.
#
#   scripts/vm/run.sh [options] -- COMMAND [ARGS...]
#
# The guest sees the host's "/" read-only (9p) and runs COMMAND chrooted into
# it, in the host's current directory. The command's stdout and stderr are
# printed on this script's stdout and stderr, and this script exits with the
# command's exit status. Any failure of this script or of the VM (install,
# boot, setup, timeout) exits with 125. See scripts/vm/README.md.

set -euo pipefail

readonly EXIT_VM_FAILURE=125
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
REPO_DIR=$(cd "$SCRIPT_DIR/../.." && pwd)
readonly REPO_DIR
readonly GUEST_INIT="$SCRIPT_DIR/guest-init.sh"

# Modules the guest loads, by module name. Dependencies and soft
# dependencies are resolved on the host with `modprobe --show-depends`.
# Loaded before the output share is mounted:
readonly SHARE_MODULES=(virtio_pci 9pnet_virtio 9p)
# Loaded after the NVMe functions got their driver_override:
readonly DEV_MODULES=(vfio vfio_iommu_type1 vfio_virqfd vfio_pci_core vfio_pci irqbypass nvme_core nvme)
# Modules that may be absent from a kernel (merged into vfio in 6.2+).
readonly OPTIONAL_MODULES=(vfio_virqfd)

readonly KERNEL_CMDLINE="console=ttyS0 intel_iommu=on quiet panic=-1"

usage() {
    cat <<'EOF'
Usage: scripts/vm/run.sh [options] -- COMMAND [ARGS...]
       scripts/vm/run.sh --prepare

Boots a QEMU VM (q35, intel-iommu, emulated NVMe), binds the NVMe function to
vfio-pci and runs COMMAND (a host binary, via a read-only 9p share of "/") in
the current directory. Prints the command's stdout/stderr and exits with its
status; exits 125 if the VM could not run it.

Options (environment variable in brackets):
  --image PATH        backing image of namespace 1; repeat for namespaces 2..N.
                      Created (sparse) if absent. Missing ones default to
                      PATH.nsK; without --image, temporary files are used.
                      [VM_IMAGE, namespace 1 only]
  --image-size SIZE[,SIZE...]
                      size of newly created images (K/M/G suffixes, binary);
                      one value for all namespaces or one per namespace.
                      Default 256M. [VM_IMAGE_SIZE]
  --lba-size 512|4096 logical and physical block size. Default 512. [VM_LBA_SIZE]
  --namespaces N      number of namespaces (1..32). Default 1. [VM_NAMESPACES]
  --controllers N     NVMe controllers (1..4). Default 1. Controllers 2..N
                      (ids nvme1...) have one namespace each, on a temporary
                      image of the first namespace's size. [VM_CONTROLLERS]
  --zoned N[,N...]    namespace N is zoned (QEMU nvme-ns zoned=true: Zoned
                      Namespace command set) with zones of --zone-size, at
                      most 8 open and 14 active; repeatable. [VM_ZONED]
  --ns-opts N:PROPS   more QEMU nvme-ns properties for namespace N, e.g.
                      1:ms=8,mset=1,pi=1 (metadata, extended LBAs, end-to-end
                      protection type 1; also pil, pif); repeatable.
  --zone-size SIZE    zone size of zoned namespaces (K/M/G suffixes, binary;
                      a divisor of the image size). Default 4M. [VM_ZONE_SIZE]
  --cmb-mb N          controller memory buffer size in MiB (0 = none).
                      [VM_CMB_MB]
  --queues N          max I/O queue pairs (QEMU max_ioqpairs). [VM_QUEUES]
  --mdts N            maximum data transfer size, 2^N pages. [VM_MDTS]
  --prefill WHAT      before boot, fill every namespace image: zero | random |
                      0xNN (one byte repeated) | FILE (copied to offset 0).
                      [VM_PREFILL]
  --no-bind           leave the NVMe function on the kernel nvme driver.
                      [VM_NO_BIND=1]
  --hotplug           put the NVMe controller behind a PCIe root port (hot
                      pluggable) and let the command ask for its hot unplug:
                      it writes the QEMU device id (nvme0) into
                      $VM_CTL/unplug; the host then sends device_del over
                      QMP and writes $VM_CTL/unplugged: "ok" once QEMU
                      reports the device deleted, else "error: ...".
                      Needs python3 on the host. [VM_HOTPLUG=1]
  --tsc-reliable      boot the guest kernel with tsc=reliable: it keeps the
                      TSC as its clock source (QEMU's TCG CPUs do not say
                      the TSC is invariant, so the guest otherwise marks it
                      unstable and runs on the HPET, whose every read costs
                      microseconds). For timing runs. [VM_TSC_RELIABLE=1]
  --memlock KB        RLIMIT_MEMLOCK of the command (default unlimited). A
                      value also drops CAP_IPC_LOCK from the command, since
                      root would otherwise bypass the limit. [VM_MEMLOCK]
  --keep-ipc-lock     with --memlock, keep CAP_IPC_LOCK. [VM_KEEP_IPC_LOCK=1]
  --aw-bits 39|48     IOMMU guest address width: IOVAs the IOMMU accepts are
                      below 2^N (minus the MSI window). Default 39 (also
                      QEMU 7.2's default; QEMU 10.0 defaults to 48).
                      [VM_IOMMU_AW_BITS]
  --env NAME[=VALUE]  pass one more environment variable (repeatable).
  --timeout SEC       kill the VM after SEC seconds. Default 600. [VM_TIMEOUT]
  --console-log PATH  copy the guest console log to PATH. [VM_CONSOLE_LOG]
  --keep              keep the run directory (output share, console log,
                      temporary images) and print its path. [VM_KEEP=1]
  -v, --verbose       show the guest console and progress on stderr.
                      [VM_VERBOSE=1]
  --prepare           only install packages and build the cache, then exit.
  -h, --help          this text.

Other environment variables:
  VM_CACHE       cache directory (default: <repo>/target/vm-cache)
  VM_ACCEL       tcg | kvm | auto (default auto: KVM if a probe boot under
                 it succeeds, else TCG; the probe result is cached)
  VM_MEM_MB      guest memory (default 1024)
  VM_SMP         guest CPUs (default 2)
  VM_KERNEL_PKG  Debian linux-image package to boot (default: the one behind
                 linux-image-amd64)
  VM_PARALLEL=1  do not serialize VM runs (by default a lock in the cache
                 lets only one VM run at a time)

Environment passed to COMMAND: PATH HOME USER LOGNAME LANG LC_ALL TZ TERM,
RUST_*, CARGO_*, NVME_*, VM_*, --env variables, and VM_GUEST=1.
EOF
}

# ---------------------------------------------------------------- messages

die() {
    echo "run.sh: error: $*" >&2
    exit "$EXIT_VM_FAILURE"
}

# Progress messages: only with -v, except during one-time cache setup.
info() {
    if [[ "$VERBOSE" == 1 ]]; then
        echo "run.sh: $*" >&2
    fi
}

setup_note() {
    echo "run.sh: $*" >&2
}

# ---------------------------------------------------------------- options

parse_options() {
    IMAGES=()
    if [[ -n "${VM_IMAGE:-}" ]]; then IMAGES+=("$VM_IMAGE"); fi
    IMAGE_SIZE=${VM_IMAGE_SIZE:-}
    LBA_SIZE=${VM_LBA_SIZE:-512}
    NAMESPACES=${VM_NAMESPACES:-1}
    CONTROLLERS=${VM_CONTROLLERS:-1}
    ZONED=${VM_ZONED:-}
    ZONE_SIZE=${VM_ZONE_SIZE:-4M}
    NS_OPTS=()
    CMB_MB=${VM_CMB_MB:-0}
    QUEUES=${VM_QUEUES:-}
    MDTS=${VM_MDTS:-}
    PREFILL=${VM_PREFILL:-}
    NO_BIND=${VM_NO_BIND:-0}
    HOTPLUG=${VM_HOTPLUG:-0}
    TSC_RELIABLE=${VM_TSC_RELIABLE:-0}
    MEMLOCK=${VM_MEMLOCK:-}
    KEEP_IPC_LOCK=${VM_KEEP_IPC_LOCK:-0}
    TIMEOUT=${VM_TIMEOUT:-600}
    AW_BITS=${VM_IOMMU_AW_BITS:-39}
    CONSOLE_LOG=${VM_CONSOLE_LOG:-}
    KEEP=${VM_KEEP:-0}
    VERBOSE=${VM_VERBOSE:-0}
    PREPARE=0
    EXTRA_ENV=()
    COMMAND=()

    while (($# > 0)); do
        local opt=$1 val=""
        case "$opt" in
            --*=*)
                val=${opt#*=}
                opt=${opt%%=*}
                set -- "$opt" "$val" "${@:2}"
                ;;
        esac
        case "$opt" in
            --image | --image-size | --lba-size | --namespaces | --controllers | --cmb-mb | \
                --queues | --mdts | --prefill | --memlock | --timeout | \
                --console-log | --env | --aw-bits | --zoned | --zone-size | --ns-opts)
                (($# >= 2)) || die "option $opt needs a value"
                val=$2
                shift 2
                ;;
            *) shift ;;
        esac
        case "$opt" in
            --image) IMAGES+=("$val") ;;
            --image-size) IMAGE_SIZE=$val ;;
            --lba-size) LBA_SIZE=$val ;;
            --namespaces) NAMESPACES=$val ;;
            --controllers) CONTROLLERS=$val ;;
            --zoned) ZONED+=${ZONED:+,}$val ;;
            --zone-size) ZONE_SIZE=$val ;;
            --ns-opts) NS_OPTS+=("$val") ;;
            --cmb-mb) CMB_MB=$val ;;
            --queues) QUEUES=$val ;;
            --mdts) MDTS=$val ;;
            --prefill) PREFILL=$val ;;
            --no-bind) NO_BIND=1 ;;
            --hotplug) HOTPLUG=1 ;;
            --tsc-reliable) TSC_RELIABLE=1 ;;
            --memlock) MEMLOCK=$val ;;
            --keep-ipc-lock) KEEP_IPC_LOCK=1 ;;
            --env) EXTRA_ENV+=("$val") ;;
            --timeout) TIMEOUT=$val ;;
            --aw-bits) AW_BITS=$val ;;
            --console-log) CONSOLE_LOG=$val ;;
            --keep) KEEP=1 ;;
            -v | --verbose) VERBOSE=1 ;;
            --prepare) PREPARE=1 ;;
            -h | --help)
                usage
                exit 0
                ;;
            --)
                COMMAND=("$@")
                break
                ;;
            *) die "unknown option '$opt' (see --help; put the command after --)" ;;
        esac
    done

    if [[ "$PREPARE" == 0 ]] && ((${#COMMAND[@]} == 0)); then
        die "no command given (usage: run.sh [options] -- COMMAND [ARGS...])"
    fi
    validate_options
    local z
    for z in ${ZONED//,/ }; do
        [[ "$z" =~ ^[0-9]+$ ]] && ((z >= 1 && z <= NAMESPACES)) ||
            die "--zoned: '$z' is not a namespace number 1..$NAMESPACES"
    done
    [[ "$ZONE_SIZE" =~ ^[1-9][0-9]*[KMG]?$ ]] || die "--zone-size must be a size such as 4M, not '$ZONE_SIZE'"
    local o prop='[a-z_.]+=[A-Za-z0-9]+'
    for o in "${NS_OPTS[@]}"; do
        [[ "$o" =~ ^([0-9]+):$prop(,$prop)*$ ]] && ((BASH_REMATCH[1] >= 1 && BASH_REMATCH[1] <= NAMESPACES)) ||
            die "--ns-opts: '$o' is not N:PROP=VALUE[,...] for a namespace 1..$NAMESPACES"
    done
}

is_uint() {
    [[ "$1" =~ ^[0-9]+$ ]]
}

validate_options() {
    [[ "$LBA_SIZE" == 512 || "$LBA_SIZE" == 4096 ]] || die "--lba-size must be 512 or 4096, not '$LBA_SIZE'"
    if ! is_uint "$NAMESPACES" || ((NAMESPACES < 1 || NAMESPACES > 32)); then
        die "--namespaces must be 1..32, not '$NAMESPACES'"
    fi
    if ! is_uint "$CONTROLLERS" || ((CONTROLLERS < 1 || CONTROLLERS > 4)); then
        die "--controllers must be 1..4, not '$CONTROLLERS'"
    fi
    if ((CONTROLLERS > 1)) && [[ "$HOTPLUG" == 1 || "$NO_BIND" == 1 ]]; then
        die "--controllers takes neither --hotplug nor --no-bind"
    fi
    is_uint "$CMB_MB" || die "--cmb-mb must be a number of MiB, not '$CMB_MB'"
    if [[ -n "$QUEUES" ]] && { ! is_uint "$QUEUES" || ((QUEUES < 1)); }; then
        die "--queues must be >= 1, not '$QUEUES'"
    fi
    if [[ -n "$MDTS" ]] && { ! is_uint "$MDTS" || ((MDTS > 255)); }; then
        die "--mdts must be 0..255, not '$MDTS'"
    fi
    [[ "$AW_BITS" == 39 || "$AW_BITS" == 48 ]] || die "--aw-bits must be 39 or 48, not '$AW_BITS'"
    if [[ "$HOTPLUG" == 1 ]] && ! command -v python3 >/dev/null; then
        die "--hotplug needs python3 on the host (QMP client)"
    fi
    [[ -z "$MEMLOCK" || "$MEMLOCK" == unlimited ]] || is_uint "$MEMLOCK" ||
        die "--memlock must be a number of KiB or 'unlimited', not '$MEMLOCK'"
    if ! is_uint "$TIMEOUT" || ((TIMEOUT == 0)); then
        die "--timeout must be a positive number of seconds, not '$TIMEOUT'"
    fi
    ((${#IMAGES[@]} <= NAMESPACES)) || die "more --image options (${#IMAGES[@]}) than namespaces ($NAMESPACES)"
    local e
    for e in "${EXTRA_ENV[@]}"; do
        [[ "${e%%=*}" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "--env: bad variable name in '$e'"
    done
    if [[ -n "$PREFILL" ]]; then
        case "$PREFILL" in
            zero | random | 0x[0-9a-fA-F][0-9a-fA-F]) ;;
            *) [[ -f "$PREFILL" ]] || die "--prefill: '$PREFILL' is not zero, random, 0xNN or an existing file" ;;
        esac
    fi
}

# ---------------------------------------------------------------- host packages

APT_LOG=""

# apt-get with output to a log; on failure, retry once after `apt-get update`
# (a fresh machine may have no package lists yet).
apt_get() {
    if DEBIAN_FRONTEND=noninteractive apt-get -q -y -o APT::Sandbox::User=root "$@" >>"$APT_LOG" 2>&1; then
        return 0
    fi
    setup_note "apt-get $1 failed; running apt-get update and retrying"
    DEBIAN_FRONTEND=noninteractive apt-get -q -y update >>"$APT_LOG" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get -q -y -o APT::Sandbox::User=root "$@" >>"$APT_LOG" 2>&1
}

apt_failure() {
    echo "run.sh: error: $*" >&2
    echo "run.sh: last lines of $APT_LOG:" >&2
    tail -n 15 "$APT_LOG" >&2 || true
    exit "$EXIT_VM_FAILURE"
}

# Install the Debian packages that provide missing host commands.
ensure_host_packages() {
    local -A pkg_of=(
        [qemu-system-x86_64]=qemu-system-x86
        [cpio]=cpio
        [depmod]=kmod
        [modprobe]=kmod
        [gzip]=gzip
        [flock]=util-linux
        [timeout]=coreutils
        [numfmt]=coreutils
        [dpkg-deb]=dpkg
    )
    local cmd missing=()
    for cmd in "${!pkg_of[@]}"; do
        if ! command -v "$cmd" >/dev/null 2>&1 && [[ ! -x "/sbin/$cmd" && ! -x "/usr/sbin/$cmd" ]]; then
            missing+=("${pkg_of[$cmd]}")
        fi
    done
    ((${#missing[@]} == 0)) && return 0
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    [[ "$(id -u)" == 0 ]] || die "missing packages (${missing[*]}) and not root: install them with apt-get"
    command -v apt-get >/dev/null || die "missing packages (${missing[*]}) and no apt-get"
    setup_note "installing ${missing[*]} (log: $APT_LOG)"
    apt_get install --no-install-recommends "${missing[@]}" || apt_failure "cannot install ${missing[*]}"
    hash -r
    for cmd in "${!pkg_of[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || [[ -x "/sbin/$cmd" || -x "/usr/sbin/$cmd" ]] ||
            die "'$cmd' still missing after installing ${pkg_of[$cmd]}"
    done
}

# Download one Debian package into the cache and unpack it (no install).
# Prints the directory it was unpacked into.
download_and_unpack() {
    local pkg=$1 dir="$CACHE/pkg/$1"
    if [[ -f "$dir/.unpacked" ]]; then
        echo "$dir/root"
        return 0
    fi
    rm -rf "$dir"
    mkdir -p "$dir"
    setup_note "downloading $pkg (log: $APT_LOG)"
    (cd "$dir" && apt_get download "$pkg") || apt_failure "cannot download Debian package $pkg"
    local deb
    deb=$(find "$dir" -maxdepth 1 -name '*.deb' | head -n 1)
    [[ -n "$deb" ]] || die "apt-get download $pkg produced no .deb"
    dpkg-deb -x "$deb" "$dir/root" || die "cannot unpack $deb"
    rm -f "$deb"
    touch "$dir/.unpacked"
    echo "$dir/root"
}

# The versioned kernel package behind linux-image-amd64, remembered in the
# cache so later runs need no apt.
select_kernel_package() {
    if [[ -n "${VM_KERNEL_PKG:-}" ]]; then
        echo "$VM_KERNEL_PKG"
        return 0
    fi
    if [[ -s "$CACHE/kernel-package" ]]; then
        cat "$CACHE/kernel-package"
        return 0
    fi
    local pkg
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    if [[ -z "$pkg" ]]; then
        setup_note "running apt-get update to find the kernel package"
        DEBIAN_FRONTEND=noninteractive apt-get -q -y update >>"$APT_LOG" 2>&1 || true
        pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    fi
    [[ -n "$pkg" ]] || apt_failure "cannot find the package behind linux-image-amd64"
    echo "$pkg" >"$CACHE/kernel-package"
    echo "$pkg"
}

# Sets KERNEL_IMAGE, KERNEL_VERSION, KERNEL_ROOT (the unpacked package, with
# modules decompressed and depmod run).
prepare_kernel() {
    local pkg root
    pkg=$(select_kernel_package)
    root=$(download_and_unpack "$pkg")
    KERNEL_ROOT=$root
    local moddirs=("$root"/lib/modules/*/)
    [[ -d "${moddirs[0]}" ]] || die "package $pkg has no lib/modules/<version>"
    KERNEL_VERSION=$(basename "${moddirs[0]}")
    KERNEL_IMAGE="$root/boot/vmlinuz-$KERNEL_VERSION"
    [[ -f "$KERNEL_IMAGE" ]] || die "package $pkg has no boot/vmlinuz-$KERNEL_VERSION"
    if [[ ! -f "$root/.depmod-done" ]]; then
        decompress_modules "$root/lib/modules/$KERNEL_VERSION"
        depmod -b "$root" "$KERNEL_VERSION" || die "depmod failed on $root"
        touch "$root/.depmod-done"
    fi
}

# Newer Debian kernels ship .ko.xz (or .ko.zst); busybox insmod wants .ko.
decompress_modules() {
    local dir=$1
    if find "$dir" -name '*.ko.xz' -print -quit | grep -q .; then
        command -v xz >/dev/null || apt_get install --no-install-recommends xz-utils || apt_failure "cannot install xz-utils"
        find "$dir" -name '*.ko.xz' -exec xz -d -f {} + || die "cannot decompress modules in $dir"
    fi
    if find "$dir" -name '*.ko.zst' -print -quit | grep -q .; then
        command -v zstd >/dev/null || apt_get install --no-install-recommends zstd || apt_failure "cannot install zstd"
        find "$dir" -name '*.ko.zst' -exec zstd -d -q --rm -f {} + || die "cannot decompress modules in $dir"
    fi
}

# Sets BUSYBOX: a static busybox, from the installed busybox-static package or
# from that package unpacked into the cache (it conflicts with the dynamic
# busybox package, so it is not installed over it).
prepare_busybox() {
    if dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed' &&
        [[ -x /bin/busybox ]]; then
        BUSYBOX=/bin/busybox
        return 0
    fi
    local root
    root=$(download_and_unpack busybox-static)
    BUSYBOX="$root/bin/busybox"
    [[ -x "$BUSYBOX" ]] || die "busybox-static has no bin/busybox"
}

# Module files (paths inside KERNEL_ROOT) needed for the given module names,
# dependencies first, each once, excluding any in the file given as $1.
module_files() {
    local exclude=$1 name
    shift
    for name in "$@"; do
        if ! modprobe -d "$KERNEL_ROOT" -S "$KERNEL_VERSION" --show-depends "$name" 2>/dev/null; then
            if [[ " ${OPTIONAL_MODULES[*]} " == *" $name "* ]]; then
                continue
            fi
            die "kernel $KERNEL_VERSION has no module $name (or it is built in: check its config)"
        fi
    done | awk '$1 == "insmod" { print $2 }' | awk -v ex="$exclude" '
        BEGIN { while ((getline l < ex) > 0) seen[l] = 1 }
        !seen[$0]++'
}

# Sets INITRAMFS: busybox + guest-init.sh + modules, cached by content hash.
prepare_initramfs() {
    local key
    key=$(
        {
            cat "$GUEST_INIT"
            echo "$KERNEL_VERSION ${SHARE_MODULES[*]} / ${DEV_MODULES[*]}"
            sha256sum "$BUSYBOX"
        } | sha256sum | cut -c1-16
    )
    INITRAMFS="$CACHE/initramfs-$KERNEL_VERSION-$key.cpio.gz"
    [[ -f "$INITRAMFS" ]] && return 0

    setup_note "building $INITRAMFS"
    local stage="$CACHE/initramfs-stage"
    rm -rf "$stage"
    mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc/vm,proc,sys,dev,tmp,host,out}
    cp "$BUSYBOX" "$stage/bin/busybox"
    cp "$GUEST_INIT" "$stage/init"
    chmod 755 "$stage/init" "$stage/bin/busybox"

    local kroot_mod="$KERNEL_ROOT/lib/modules/$KERNEL_VERSION"
    local smod="$stage/lib/modules/$KERNEL_VERSION"
    mkdir -p "$smod"
    : >"$stage/etc/vm/empty"
    module_files "$stage/etc/vm/empty" "${SHARE_MODULES[@]}" >"$stage/etc/vm/modules-share.host"
    module_files "$stage/etc/vm/modules-share.host" "${DEV_MODULES[@]}" >"$stage/etc/vm/modules-dev.host"
    local list f rel
    for list in modules-share modules-dev; do
        : >"$stage/etc/vm/$list"
        while IFS= read -r f; do
            rel=${f#"$KERNEL_ROOT"}
            [[ "$rel" != "$f" ]] || die "module path $f is outside $KERNEL_ROOT"
            mkdir -p "$stage$(dirname "$rel")"
            cp "$f" "$stage$rel"
            echo "$rel" >>"$stage/etc/vm/$list"
        done <"$stage/etc/vm/$list.host"
        rm "$stage/etc/vm/$list.host"
    done
    rm "$stage/etc/vm/empty"
    # modules.dep etc. inside the guest, so `modprobe` works there too.
    cp "$kroot_mod"/modules.builtin* "$kroot_mod"/modules.order "$smod/" 2>/dev/null || true
    depmod -b "$stage" "$KERNEL_VERSION" || die "depmod failed on the initramfs tree"

    (cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) |
        gzip -1 >"$INITRAMFS.tmp" || die "cannot build the initramfs"
    mv "$INITRAMFS.tmp" "$INITRAMFS"
    rm -rf "$stage"
    # Older initramfs images of other keys are stale.
    find "$CACHE" -maxdepth 1 -name 'initramfs-*.cpio.gz' ! -path "$INITRAMFS" -delete
}

# ---------------------------------------------------------------- accelerator

# Sets ACCEL_ARGS and CPU_MODEL. VM_ACCEL=auto boots the guest once under KVM
# with a short timeout and remembers the outcome (per host kernel and QEMU).
choose_accelerator() {
    local accel=${VM_ACCEL:-auto}
    if [[ "$accel" == auto ]]; then
        accel=tcg
        if [[ -r /dev/kvm && -w /dev/kvm ]]; then
            local probe_key probe_file
            probe_key="$(uname -r) $(qemu-system-x86_64 --version | head -n 1) $KERNEL_VERSION"
            probe_file="$CACHE/kvm-probe"
            if [[ ! -f "$probe_file" || "$(head -n 1 "$probe_file")" != "$probe_key" ]]; then
                setup_note "probing whether KVM can boot the guest (once; result kept in $probe_file)"
                local result=no
                if probe_kvm; then result=yes; fi
                printf '%s\n%s\n' "$probe_key" "$result" >"$probe_file"
            fi
            [[ "$(sed -n 2p "$probe_file")" == yes ]] && accel=kvm
        fi
    fi
    case "$accel" in
        tcg)
            # shellcheck disable=SC2054 # commas belong to QEMU's syntax
            ACCEL_ARGS=(-accel tcg,thread=multi -M q35)
            CPU_MODEL=max
            ;;
        kvm)
            # intel-iommu interrupt remapping with KVM needs the split irqchip.
            # shellcheck disable=SC2054 # commas belong to QEMU's syntax
            ACCEL_ARGS=(-accel kvm -M q35,kernel-irqchip=split)
            CPU_MODEL=host
            ;;
        *) die "VM_ACCEL must be tcg, kvm or auto, not '$accel'" ;;
    esac
    ACCEL=$accel
}

# Boot the guest under KVM up to its /init, which powers off at once when the
# command line has vm.probe. Succeeds if the marker appears within 30 s.
probe_kvm() {
    local log="$CACHE/kvm-probe.log"
    rm -f "$log"
    { timeout --kill-after=5 30 qemu-system-x86_64 \
        -accel kvm -M q35,kernel-irqchip=split -cpu host -m 512 -smp 1 \
        -nodefaults -display none -monitor none -no-reboot \
        -serial "file:$log" -device intel-iommu,intremap=on \
        -kernel "$KERNEL_IMAGE" -initrd "$INITRAMFS" \
        -append "$KERNEL_CMDLINE vm.probe" </dev/null >/dev/null 2>&1; } 2>/dev/null || true
    grep -q 'vm-init: probe ok' "$log" 2>/dev/null
}

# ---------------------------------------------------------------- per run

# QEMU option values escape "," as ",,".
qemu_escape() {
    printf '%s' "${1//,/,,}"
}

# Single-quote a string for sh.
sh_quote() {
    local s=${1//\'/\'\\\'\'}
    printf "'%s'" "$s"
}

size_to_bytes() {
    numfmt --from=iec "$1" 2>/dev/null || die "bad size '$1' (use e.g. 64M, 1G)"
}

# Sets IMAGE_PATHS (absolute) and creates or prefills the images.
prepare_images() {
    local sizes=() i size_arg
    IFS=, read -r -a sizes <<<"${IMAGE_SIZE:-256M}"
    if ((${#sizes[@]} != 1 && ${#sizes[@]} != NAMESPACES)); then
        die "--image-size has ${#sizes[@]} values for $NAMESPACES namespaces"
    fi
    IMAGE_PATHS=()
    for ((i = 1; i <= NAMESPACES; i++)); do
        local path
        if ((i <= ${#IMAGES[@]})); then
            path=${IMAGES[i - 1]}
        elif ((${#IMAGES[@]} > 0)); then
            path="${IMAGES[0]}.ns$i"
        else
            path="$RUN_DIR/ns$i.img"
        fi
        [[ "$path" == /* ]] || path="$PWD/$path"
        size_arg=${sizes[0]}
        ((${#sizes[@]} == 1)) || size_arg=${sizes[i - 1]}
        local bytes
        bytes=$(size_to_bytes "$size_arg")
        ((bytes > 0 && bytes % LBA_SIZE == 0)) || die "image size $size_arg is not a positive multiple of $LBA_SIZE"
        if [[ -e "$path" ]]; then
            [[ -f "$path" ]] || die "image $path is not a regular file"
            local have
            have=$(stat -c %s "$path")
            if [[ -n "$IMAGE_SIZE" && "$have" != "$bytes" ]]; then
                die "image $path has $have bytes, but --image-size asks for $bytes (remove it or drop --image-size)"
            fi
            ((have > 0 && have % LBA_SIZE == 0)) || die "image $path size $have is not a multiple of $LBA_SIZE"
        else
            mkdir -p "$(dirname "$path")"
            truncate -s "$bytes" "$path" || die "cannot create image $path"
        fi
        [[ -z "$PREFILL" ]] || prefill_image "$path"
        IMAGE_PATHS+=("$path")
    done
}

prefill_image() {
    local path=$1 bytes
    bytes=$(stat -c %s "$path")
    case "$PREFILL" in
        zero)
            truncate -s 0 "$path" && truncate -s "$bytes" "$path"
            ;;
        random)
            head -c "$bytes" /dev/urandom | dd of="$path" bs=1M conv=notrunc iflag=fullblock status=none
            ;;
        0x*)
            local octal
            octal=$(printf '%03o' "$((PREFILL))")
            head -c "$bytes" /dev/zero | tr '\0' "\\$octal" | dd of="$path" bs=1M conv=notrunc iflag=fullblock status=none
            ;;
        *)
            local fsize
            fsize=$(stat -c %s "$PREFILL")
            ((fsize <= bytes)) || die "--prefill file $PREFILL ($fsize bytes) is larger than image $path ($bytes bytes)"
            dd if="$PREFILL" of="$path" bs=1M conv=notrunc status=none
            ;;
    esac || die "cannot prefill $path"
}

# Write config.sh and env.sh into the output share.
write_guest_config() {
    local out=$1 memlock=${MEMLOCK:-unlimited} drop=0 arg
    if [[ -n "$MEMLOCK" && "$MEMLOCK" != unlimited && "$KEEP_IPC_LOCK" != 1 ]]; then
        drop=1
    fi
    {
        echo "VM_BIND=$((NO_BIND == 1 ? 0 : 1))"
        echo "VM_MEMLOCK=$memlock"
        echo "VM_DROP_IPC_LOCK=$drop"
        echo "VM_NAMESPACES=$NAMESPACES"
        echo "VM_HOTPLUG=$HOTPLUG"
        echo "VM_CWD=$(sh_quote "$PWD")"
        printf 'set --'
        for arg in "${COMMAND[@]}"; do
            printf ' %s' "$(sh_quote "$arg")"
        done
        echo
    } >"$out/config.sh"

    local name names=()
    while IFS= read -r name; do
        case "$name" in
            PATH | HOME | USER | LOGNAME | LANG | LC_ALL | TZ | TERM | RUST_* | CARGO_* | NVME_* | VM_*)
                names+=("$name")
                ;;
        esac
    done < <(compgen -e)
    {
        for name in "${names[@]}"; do
            echo "export $name=$(sh_quote "${!name}")"
        done
        # The control directory of --hotplug, as the command sees it.
        [[ "$HOTPLUG" != 1 ]] || echo "export VM_CTL=/tmp/vm-ctl"
        local e
        for e in "${EXTRA_ENV[@]}"; do
            if [[ "$e" == *=* ]]; then
                echo "export ${e%%=*}=$(sh_quote "${e#*=}")"
            elif [[ -n "${!e+set}" ]]; then
                echo "export $e=$(sh_quote "${!e}")"
            fi
        done
    } >"$out/env.sh"
}

build_qemu_args() {
    local out=$1 log=$2 cmdline=$KERNEL_CMDLINE
    # -v shows the whole kernel log on the console.
    [[ "$VERBOSE" != 1 ]] || cmdline=${cmdline/ quiet/}
    # Timing runs: the guest keeps the TSC as its clock source.
    [[ "$TSC_RELIABLE" != 1 ]] || cmdline+=" tsc=reliable"
    # shellcheck disable=SC2054 # commas belong to QEMU's syntax
    QEMU_ARGS=(
        "${ACCEL_ARGS[@]}" -cpu "$CPU_MODEL"
        -m "${VM_MEM_MB:-1024}" -smp "${VM_SMP:-2}"
        -nodefaults -display none -monitor none -no-reboot
        -serial "file:$(qemu_escape "$log")"
        # The IOMMU must be created before the PCI devices it translates.
        # intremap=on gives the guest interrupt remapping (works under TCG
        # as is; KVM needs kernel-irqchip=split, set in choose_accelerator).
        -device "intel-iommu,intremap=on,aw-bits=$AW_BITS"
        -kernel "$KERNEL_IMAGE" -initrd "$INITRAMFS" -append "$cmdline"
        -virtfs "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap"
        -virtfs "local,path=$(qemu_escape "$out"),mount_tag=out,security_model=none"
    )
    local ctrl="nvme,id=nvme0,serial=vmnvme0"
    ((CMB_MB == 0)) || ctrl+=",cmb_size_mb=$CMB_MB"
    if [[ -n "$QUEUES" ]]; then
        ctrl+=",max_ioqpairs=$QUEUES"
        # One MSI-X vector per queue pair plus the admin queue.
        ((QUEUES < 64)) || ctrl+=",msix_qsize=$((QUEUES + 1))"
    fi
    [[ -z "$MDTS" ]] || ctrl+=",mdts=$MDTS"
    if [[ "$HOTPLUG" == 1 ]]; then
        # A root port the controller can be unplugged from, and the monitor
        # the host asks for the unplug through (scripts/vm/unplug-agent.py).
        # shellcheck disable=SC2054 # commas belong to QEMU's syntax
        # Native PCIe hotplug (the guest's pciehp, as on a server's slot)
        # rather than q35's ACPI hotplug of root ports: QEMU 7.2's ACPI
        # eject of the function the guest has just released sometimes
        # never completes (no DEVICE_DELETED) or crashes QEMU.
        QEMU_ARGS+=(
            -global ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off
            -device pcie-root-port,id=rp0,chassis=1,slot=1
            -qmp "unix:$(qemu_escape "$RUN_DIR/qmp.sock"),server=on,wait=off"
        )
        ctrl+=",bus=rp0"
    fi
    QEMU_ARGS+=(-device "$ctrl")
    local i ns
    for ((i = 1; i <= NAMESPACES; i++)); do
        ns="nvme-ns,drive=ns$i,bus=nvme0,nsid=$i,logical_block_size=$LBA_SIZE,physical_block_size=$LBA_SIZE"
        if [[ ",$ZONED," == *",$i,"* ]]; then
            ns+=",zoned=true,zoned.zone_size=$ZONE_SIZE,zoned.max_open=8,zoned.max_active=14"
        fi
        local o
        for o in "${NS_OPTS[@]}"; do
            if [[ "${o%%:*}" == "$i" ]]; then
                ns+=",${o#*:}"
            fi
        done
        QEMU_ARGS+=(
            -drive "file=$(qemu_escape "${IMAGE_PATHS[i - 1]}"),if=none,id=ns$i,format=raw"
            -device "$ns"
        )
    done
    # More controllers, one namespace each on a temporary image.
    local c size
    size=$(stat -c %s "${IMAGE_PATHS[0]}")
    for ((c = 1; c < CONTROLLERS; c++)); do
        truncate -s "$size" "$RUN_DIR/c$c.img" || die "cannot create $RUN_DIR/c$c.img"
        QEMU_ARGS+=(
            -device "nvme,id=nvme$c,serial=vmnvme$c"
            -drive "file=$(qemu_escape "$RUN_DIR/c$c.img"),if=none,id=c${c}ns1,format=raw"
            -device "nvme-ns,drive=c${c}ns1,bus=nvme$c,nsid=1,logical_block_size=$LBA_SIZE,physical_block_size=$LBA_SIZE"
        )
    done
}

print_console_tail() {
    local log=$1
    if [[ -s "$log" ]]; then
        echo "run.sh: last lines of the guest console (all of it: --console-log PATH or --keep):" >&2
        tail -n 25 "$log" | sed 's/^/  | /' >&2
    else
        echo "run.sh: the guest console log is empty" >&2
    fi
}

stop_vm_on_signal() {
    if [[ -n "${VM_PID:-}" ]]; then
        kill -TERM "$VM_PID" 2>/dev/null || true
        wait "$VM_PID" 2>/dev/null || true
    fi
    echo "run.sh: interrupted; the VM was stopped" >&2
    exit "$EXIT_VM_FAILURE"
}

cleanup_run() {
    if [[ -n "${AGENT_PID:-}" ]]; then
        kill "$AGENT_PID" 2>/dev/null || true
        wait "$AGENT_PID" 2>/dev/null || true
        AGENT_PID=""
    fi
    if [[ -n "${TAIL_PID:-}" ]]; then
        kill "$TAIL_PID" 2>/dev/null || true
        wait "$TAIL_PID" 2>/dev/null || true
        TAIL_PID=""
    fi
    if [[ -n "${RUN_DIR:-}" && -d "$RUN_DIR" ]]; then
        if [[ "$KEEP" == 1 ]]; then
            echo "run.sh: kept $RUN_DIR" >&2
        else
            rm -rf "$RUN_DIR"
        fi
    fi
}

run_vm() {
    RUN_DIR=$(mktemp -d "$CACHE/runs/run.XXXXXX")
    trap cleanup_run EXIT
    local out="$RUN_DIR/out" log="$RUN_DIR/console.log" qerr="$RUN_DIR/qemu.stderr"
    mkdir -p "$out"
    [[ "$HOTPLUG" != 1 ]] || mkdir -p "$out/ctl"
    prepare_images
    write_guest_config "$out"
    build_qemu_args "$out" "$log"

    if [[ "${VM_PARALLEL:-0}" != 1 ]]; then
        exec 8>"$CACHE/vm.lock"
        if ! flock -n 8; then
            info "waiting for another VM run to finish"
            flock 8
        fi
    fi

    : >"$log"
    if [[ "$VERBOSE" == 1 ]]; then
        tail -n +1 -f "$log" >&2 8>&- &
        TAIL_PID=$!
        info "accelerator $ACCEL, kernel $KERNEL_VERSION, run dir $RUN_DIR"
    fi
    local start qemu_status=0
    start=$(date +%s.%N)
    # In the background so that a signal to this script can stop the VM:
    # timeout(1) runs QEMU in its own process group.
    timeout --kill-after=10 "$TIMEOUT" qemu-system-x86_64 "${QEMU_ARGS[@]}" </dev/null >"$qerr" 2>&1 &
    VM_PID=$!
    if [[ "$HOTPLUG" == 1 ]]; then
        python3 "$SCRIPT_DIR/unplug-agent.py" "$RUN_DIR/qmp.sock" "$out/ctl" \
            2>>"$RUN_DIR/agent.log" &
        AGENT_PID=$!
    fi
    trap stop_vm_on_signal INT TERM HUP
    wait "$VM_PID" || qemu_status=$?
    VM_PID=""
    trap - INT TERM HUP
    if [[ "${VM_PARALLEL:-0}" != 1 ]]; then
        exec 8>&-
    fi
    info "VM ran $(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }') s"
    if [[ -n "${TAIL_PID:-}" ]]; then
        sleep 0.2
        kill "$TAIL_PID" 2>/dev/null || true
        wait "$TAIL_PID" 2>/dev/null || true
        TAIL_PID=""
    fi
    if [[ -n "$CONSOLE_LOG" ]]; then
        cp "$log" "$CONSOLE_LOG" || echo "run.sh: warning: cannot write $CONSOLE_LOG" >&2
    fi

    # The command's output, even if partial (e.g. after a timeout).
    [[ ! -f "$out/stdout" ]] || cat "$out/stdout"
    [[ ! -f "$out/stderr" ]] || cat "$out/stderr" >&2

    if [[ -f "$out/status" ]]; then
        local status
        status=$(<"$out/status")
        is_uint "$status" || die "guest wrote a bad exit status '$status'"
        exit "$status"
    fi
    if ((qemu_status == 124 || qemu_status == 137)); then
        echo "run.sh: error: timeout: the VM did not finish within $TIMEOUT s" >&2
    elif [[ -f "$out/setup-error" ]]; then
        echo "run.sh: error: guest setup failed: $(<"$out/setup-error")" >&2
    elif [[ -f "$out/stdout" ]]; then
        echo "run.sh: error: the VM stopped while the command was running (QEMU status $qemu_status)" >&2
    else
        echo "run.sh: error: the VM stopped before running the command (QEMU status $qemu_status)" >&2
    fi
    if [[ -s "$qerr" ]]; then
        echo "run.sh: QEMU said:" >&2
        sed 's/^/  | /' "$qerr" >&2
    fi
    print_console_tail "$log"
    exit "$EXIT_VM_FAILURE"
}

# ---------------------------------------------------------------- main

main() {
    parse_options "$@"
    CACHE=${VM_CACHE:-$REPO_DIR/target/vm-cache}
    mkdir -p "$CACHE/runs" || die "cannot create cache directory $CACHE"
    CACHE=$(cd "$CACHE" && pwd)
    APT_LOG="$CACHE/apt.log"

    # One-time setup, serialized between concurrent runs.
    exec 9>"$CACHE/setup.lock"
    flock 9 || die "cannot lock $CACHE/setup.lock"
    ensure_host_packages
    prepare_kernel
    prepare_busybox
    prepare_initramfs
    choose_accelerator
    exec 9>&-

    if [[ "$PREPARE" == 1 ]]; then
        echo "run.sh: ready: kernel $KERNEL_VERSION, accelerator $ACCEL, $INITRAMFS" >&2
        return 0
    fi
    run_vm
}

main "$@"
