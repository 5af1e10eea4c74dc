#!/usr/bin/env bash
# Run a command inside a small QEMU virtual machine that has a SoftRoCE
# (rdma_rxe) device, and stream the command's output back.
#
# Why a VM: the host kernel of this project's machines is built without
# InfiniBand (no rdma_rxe, no NETLINK_RDMA), and its /dev/kvm cannot run a
# stock Debian kernel.  So we boot Debian 12's own kernel under QEMU TCG
# (software emulation), with a busybox initramfs, load the rdma modules, put
# rxe0 on a dummy netdev whose address exists only inside the VM, and run the
# command there.  Both ends of an RDMA test talk to that address inside the
# same VM.  (Measured on 2 host cores: boot to init about 2.5 s with the
# decompressed kernel, rxe0 ready about 4.5 s after start.)
#
# Nothing is installed on the host except Debian packages that provide the
# tools (qemu, busybox-static, rdma-core, perftest, ...); the kernel package
# is only downloaded and unpacked into the cache folder.
#
# Cache (${PRAAS_VM_CACHE:-$REPO/.vm}):
#   debs/                     downloaded linux-image-*.deb
#   kernel/KVER/root/         the unpacked kernel package (dpkg -x)
#   kernel/KVER/vmlinux       the decompressed kernel QEMU boots
#   base-HASH.cpio            busybox + rdma user space + modules + /init
#   base-HASH.list            the files in it (per-run layers skip those)
# A warm run only builds a small per-run cpio archive with the --file files
# and the command, appended to the base archive (the kernel unpacks
# concatenated cpio archives in order, later entries overwriting earlier).
set -euo pipefail

SCRIPT_PATH="$(readlink -f "${BASH_SOURCE[0]}")"
REPO="$(cd "$(dirname "$SCRIPT_PATH")/.." && pwd)"
CACHE="${PRAAS_VM_CACHE:-$REPO/.vm}"
readonly SCRIPT_PATH REPO CACHE

# What the guest provides; exported to the command as PRAAS_RDMA_*.
readonly RXE_DEVICE=rxe0
readonly RXE_NETDEV=dummy0
readonly GUEST_ADDR=10.77.0.1
readonly GUEST_PREFIX=24

readonly GUEST_PATH=/bin:/sbin:/usr/bin:/usr/sbin:/opt/praas/bin
readonly VM_MEM_MB="${RXE_VM_MEM_MB:-1024}"

# Host packages that provide every tool this script and the guest use.
readonly HOST_PACKAGES=(
    qemu-system-x86 busybox-static cpio kmod rdma-core ibverbs-utils
    ibverbs-providers perftest iproute2 rdmacm-utils libibverbs-dev
    librdmacm-dev python3
)

# Modules loaded in the guest.  rdma_rxe pulls in ib_core, ib_uverbs,
# udp_tunnel, ip6_udp_tunnel; crc32_generic is not a symbol dependency (rxe
# asks the crypto API for "crc32" at run time) so it is named explicitly, as
# is dummy for the netdev.  rdma_ucm (with rdma_cm, ib_cm, iw_cm) makes
# librdmacm work (/dev/infiniband/rdma_cm) for tests that use the RDMA CM.
readonly GUEST_MODULES=(crc32_generic dummy rdma_rxe rdma_ucm)

# Host programs copied into the guest's /opt/praas/bin with their libraries.
readonly GUEST_TOOLS=(
    ip rdma ibv_devices ibv_devinfo ibv_rc_pingpong
    ib_send_lat ib_write_lat ib_read_lat ib_send_bw ib_write_bw ib_read_bw
    rping
)

log() { printf 'rxe-vm: %s\n' "$*" >&2; }
die() { printf 'rxe-vm: error: %s\n' "$1" >&2; exit "${2:-1}"; }

usage() {
    cat <<EOF
Usage: scripts/rxe-vm.sh [--timeout SECS] [--file HOSTPATH[:GUESTPATH]]...
                         [--env K=V]... -- COMMAND [ARGS...]
       scripts/rxe-vm.sh --prepare

Boots a QEMU (TCG) VM with Debian 12's kernel and a SoftRoCE device
($RXE_DEVICE on $RXE_NETDEV, address $GUEST_ADDR/$GUEST_PREFIX, which exists only
inside the VM), runs COMMAND there with busybox sh, prints its output and
exits with its exit status. COMMAND's standard output comes back on this
script's standard output and its standard error on this script's standard
error (the guest's second serial port), so that e.g. JSON lines stay clean.

  --timeout SECS   kill the VM after SECS seconds (default 300); exit 124
  --file H[:G]     copy host file H into the guest at G (default
                   /opt/praas/<basename of H>; a G ending in / is a folder),
                   together with the shared libraries ldd says it needs
  --env K=V        export K=V to COMMAND (may be repeated)
  --prepare        only install host packages, fetch the kernel and build the
                   cached base initramfs; boot nothing
  -h, --help       this text

COMMAND: a single word is used verbatim as a shell script (so
  -- 'a && b | c' works); several words are quoted one by one and run as
  one simple command.
Guest: PATH=$GUEST_PATH (busybox applets run first: call
  iproute2's ip as /opt/praas/bin/ip), cwd /tmp (tmpfs), HOME=/root, env
  PRAAS_RDMA_DEVICE=$RXE_DEVICE PRAAS_RDMA_ADDR=$GUEST_ADDR PRAAS_RDMA_NETDEV=$RXE_NETDEV PRAAS_IN_VM=1.
Environment: PRAAS_VM_CACHE (cache folder, default \$REPO/.vm),
  RXE_VM_VERBOSE=1 (show the whole console, kernel boot included),
  RXE_VM_MEM_MB (guest memory, default 1024),
  RXE_VM_CPU (QEMU's -cpu model, default max; e.g. max,-erms,-fsrm),
  PRAAS_VM_KERNEL_PKG (use this linux-image package instead of the one
  linux-image-amd64 depends on).
Exit status: COMMAND's; 124 on timeout; 125 if the VM did not boot or
  $RXE_DEVICE did not come up; 1 on a host-side failure; 2 on bad usage.
EOF
}

# ---------------------------------------------------------------- arguments

TIMEOUT=300
PREPARE_ONLY=0
FILE_SPECS=()
ENV_SPECS=()
COMMAND_WORDS=()

parse_args() {
    while (($#)); do
        case "$1" in
            --timeout)
                (($# >= 2)) || die "--timeout needs a value" 2
                [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "--timeout: not a positive integer: $2" 2
                TIMEOUT="$2"; shift 2 ;;
            --timeout=*)
                TIMEOUT="${1#--timeout=}"
                [[ "$TIMEOUT" =~ ^[1-9][0-9]*$ ]] || die "--timeout: not a positive integer: $TIMEOUT" 2
                shift ;;
            --file)
                (($# >= 2)) || die "--file needs a value" 2
                FILE_SPECS+=("$2"); shift 2 ;;
            --file=*) FILE_SPECS+=("${1#--file=}"); shift ;;
            --env)
                (($# >= 2)) || die "--env needs a value" 2
                ENV_SPECS+=("$2"); shift 2 ;;
            --env=*) ENV_SPECS+=("${1#--env=}"); shift ;;
            --prepare) PREPARE_ONLY=1; shift ;;
            -h|--help) usage; exit 0 ;;
            --) shift; COMMAND_WORDS=("$@"); break ;;
            *) usage >&2; die "unknown argument: $1 (the command goes after --)" 2 ;;
        esac
    done
    local spec
    for spec in "${ENV_SPECS[@]+"${ENV_SPECS[@]}"}"; do
        [[ "$spec" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env: expected K=V, got: $spec" 2
    done
    if ((PREPARE_ONLY == 0 && ${#COMMAND_WORDS[@]} == 0)); then
        usage >&2; die "no command given after --" 2
    fi
}

# ------------------------------------------------------------ host set-up

# Quote a string for sh (busybox ash and bash alike): 'it'\''s'.
sh_quote() {
    local s="${1//\'/\'\\\'\'}"
    printf "'%s'" "$s"
}

# Installs the Debian packages that are missing.  Idempotent: asks dpkg
# first, so a host that has them all touches nothing.
ensure_host_packages() {
    local missing=() pkg status
    for pkg in "${HOST_PACKAGES[@]}"; do
        status="$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)"
        [[ "$status" == ii* ]] || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    [[ $EUID -eq 0 ]] || die "missing packages (run as root, or install them): ${missing[*]}"
    log "installing host packages: ${missing[*]}"
    # Note: qemu-system-x86 (7.2) replaces a preinstalled qemu-utils from
    # backports; nothing here needs qemu-utils.
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
        || die "apt-get install failed: ${missing[*]}"
}

host_python() {
    if [[ -x /usr/bin/python3 ]]; then echo /usr/bin/python3; else command -v python3; fi
}

# Prints the kernel package to boot: the one Debian's linux-image-amd64
# meta-package depends on (e.g. linux-image-6.1.0-41-amd64).
kernel_package_name() {
    if [[ -n "${PRAAS_VM_KERNEL_PKG:-}" ]]; then
        echo "$PRAAS_VM_KERNEL_PKG"; return 0
    fi
    local name
    name="$(apt-cache depends linux-image-amd64 2>/dev/null \
        | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')"
    if [[ -z "$name" ]]; then
        # Empty or stale package lists (a fresh machine): refresh once.
        apt-get update -qq >&2 || true
        name="$(apt-cache depends linux-image-amd64 2>/dev/null \
            | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')"
    fi
    echo "$name"
}

# Prints the existing path among its arguments with the highest version
# (sort -V), or nothing; for globs that may match nothing.
newest() {
    local path
    for path in "$@"; do
        if [[ -e "$path" ]]; then printf '%s\n' "$path"; fi
    done | sort -V | tail -n 1
}

# Downloads and unpacks the kernel package into $CACHE/kernel/KVER/root and
# decompresses its vmlinux.  Sets KVER, KERNEL_ROOT, VMLINUX.
prepare_kernel() {
    local pkg
    pkg="$(kernel_package_name)"
    if [[ -z "$pkg" ]]; then
        # No package lists and no network: fall back to a kernel in the cache.
        local cached
        cached="$(newest "$CACHE"/kernel/*/vmlinux)"
        [[ -n "$cached" ]] || die "cannot find the linux-image-amd64 dependency (apt-cache depends)"
        pkg="linux-image-$(basename "$(dirname "$cached")")"
        log "warning: apt-cache gave no kernel; using cached $pkg"
    fi
    KVER="${pkg#linux-image-}"
    local kdir="$CACHE/kernel/$KVER"
    KERNEL_ROOT="$kdir/root"
    VMLINUX="$kdir/vmlinux"
    [[ -s "$VMLINUX" && -d "$KERNEL_ROOT/lib/modules/$KVER" ]] && return 0

    mkdir -p "$CACHE/debs" "$kdir"
    local deb
    deb="$(newest "$CACHE/debs/${pkg}_"*.deb)"
    if [[ -z "$deb" ]]; then
        log "downloading $pkg"
        local dl
        dl="$(mktemp -d "$CACHE/debs/.download.XXXXXX")"
        # apt-get download runs as _apt when it can; let it write here.
        chmod 0777 "$dl"
        if ! (cd "$dl" && apt-get download -qq "$pkg" >/dev/null 2>&1); then
            # A 404 means the package lists are older than the mirror.
            apt-get update -qq >&2 || true
            (cd "$dl" && apt-get download -qq "$pkg" >&2) || { rm -rf "$dl"; die "apt-get download $pkg failed"; }
        fi
        mv "$dl"/*.deb "$CACHE/debs/"
        rm -rf "$dl"
        deb="$(newest "$CACHE/debs/${pkg}_"*.deb)"
    fi

    log "unpacking $(basename "$deb")"
    rm -rf "$KERNEL_ROOT" "$kdir/vmlinux" "$kdir/.root.tmp"
    dpkg -x "$deb" "$kdir/.root.tmp"
    mv "$kdir/.root.tmp" "$KERNEL_ROOT"
    [[ -d "$KERNEL_ROOT/lib/modules/$KVER" ]] || die "$deb has no lib/modules/$KVER"
    # modprobe --show-depends needs modules.dep; the package ships none.
    depmod -b "$KERNEL_ROOT" "$KVER"
    extract_vmlinux "$KERNEL_ROOT/boot/vmlinuz-$KVER" "$kdir/vmlinux.tmp"
    mv "$kdir/vmlinux.tmp" "$VMLINUX"
}

# The bzImage carries the kernel as an XZ stream.  Under TCG, booting the
# decompressed ELF vmlinux directly (QEMU uses its PVH entry note) saves
# about 4 s per boot: the emulated CPU decompresses slowly.
extract_vmlinux() {
    local src="$1" dst="$2"
    "$(host_python)" - "$src" "$dst" <<'PY' || die "could not extract vmlinux from $src"
import lzma, sys
src, dst = sys.argv[1], sys.argv[2]
data = open(src, "rb").read()
magic = b"\xfd7zXZ\x00"
pos = data.find(magic)
while pos != -1:
    try:
        out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[pos:])
    except lzma.LZMAError:
        out = b""
    if out[:4] == b"\x7fELF":
        with open(dst, "wb") as f:
            f.write(out)
        sys.exit(0)
    pos = data.find(magic, pos + 1)
sys.exit("no XZ-compressed ELF found in " + src)
PY
}

# Copies host file $1 to $2 inside staging folder $3 (dereferencing links).
# Host and guest are both merged-/usr, so /lib/x.so and /usr/lib/x.so are
# one place; the folder part is canonicalised so that a path never puts a
# real folder where the staging tree has a /lib -> usr/lib link.
stage_host_file() {
    local src="$1" dst="$2" stage="$3" dir
    dir="$(dirname "$dst")"
    mkdir -p "$stage$dir"
    dir="$(readlink -f "$stage$dir")"
    cp -L --preserve=mode "$src" "$dir/$(basename "$dst")"
}

# Prints the shared libraries (with the ELF interpreter) that ldd says $1
# needs, one absolute host path a line.  Prints nothing for non-ELF files
# and static binaries.
shared_libraries_of() {
    local file="$1"
    [[ "$(head -c 4 "$file" 2>/dev/null | od -An -c | tr -d ' ')" == '177ELF' ]] || return 0
    ldd "$file" 2>/dev/null | awk '
        $2 == "=>" && $3 ~ /^\// { print $3; next }
        $1 ~ /^\// { print $1 }
        $2 == "=>" && $3 == "not" { print "MISSING " $1 > "/dev/stderr" }
    ' || true
}

# Creates the merged-/usr top-level links, as on a Debian 12 host.
make_merged_usr_links() {
    local stage="$1" d
    mkdir -p "$stage/usr/bin" "$stage/usr/sbin" "$stage/usr/lib" "$stage/usr/lib64"
    for d in bin sbin lib lib64; do
        ln -sfn "usr/$d" "$stage/$d"
    done
}

# Stages the guest's PID 1 script.  It reads the per-run layer's
# /etc/praas/token and /etc/praas/run.sh.
write_init() {
    local stage="$1"
    cat >"$stage/init" <<EOF
#!/bin/sh
# PID 1 of the praas SoftRoCE test VM, written by scripts/rxe-vm.sh.
export PATH=$GUEST_PATH
export HOME=/root
TOKEN=\$(cat /etc/praas/token 2>/dev/null || echo none)
# Markers the host looks for on the console.
marker() { echo "@@PRAAS-VM:\$TOKEN:\$*@@"; }
setup_failed() {
    marker "SETUP-FAILED:\$*"
    dmesg | tail -n 30
    poweroff -f; sleep 60
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /tmp /run /root
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs tmpfs /run
hostname praas-vm
marker BOOTED

while read -r ko; do
    insmod "\$ko" || setup_failed "insmod \$ko"
done </etc/praas/modules.list

# No duplicate address detection: the IPv6 link-local address (and its
# RoCE GID) is usable at once; nothing else is on this link.
echo 0 >/proc/sys/net/ipv6/conf/default/accept_dad
# busybox's ip applet would shadow iproute2's: full path.
IP=/opt/praas/bin/ip
\$IP link set lo up || setup_failed "lo up"
# Loading dummy.ko already creates dummy0 (numdummies=1).
\$IP link show $RXE_NETDEV >/dev/null 2>&1 \\
    || \$IP link add $RXE_NETDEV type dummy || setup_failed "ip link add $RXE_NETDEV"
\$IP addr add $GUEST_ADDR/$GUEST_PREFIX dev $RXE_NETDEV || setup_failed "ip addr add"
# Jumbo frames, as RoCE fabrics run them: rxe then uses a 4096-byte RDMA MTU instead of 1024
# (with 1500, a 1 KiB payload plus its header took two packets each way).
\$IP link set $RXE_NETDEV mtu 9000 || setup_failed "ip link set $RXE_NETDEV mtu 9000"
\$IP link set $RXE_NETDEV up || setup_failed "ip link set $RXE_NETDEV up"
rdma link add $RXE_DEVICE type rxe netdev $RXE_NETDEV || setup_failed "rdma link add $RXE_DEVICE"

# Wait until the port is ACTIVE and the GID table holds the IPv4-mapped
# GID of $GUEST_ADDR (RoCEv2 traffic uses it); it is filled asynchronously.
want_gid=\$(printf '0000:0000:0000:0000:0000:ffff:%02x%02x:%02x%02x' \$(echo $GUEST_ADDR | tr . ' '))
port=/sys/class/infiniband/$RXE_DEVICE/ports/1
tries=0
until grep -q ACTIVE \$port/state 2>/dev/null && cat \$port/gids/* 2>/dev/null | grep -q "\$want_gid"; do
    tries=\$((tries + 1))
    [ \$tries -le 100 ] || setup_failed "$RXE_DEVICE port not ACTIVE with GID \$want_gid after 10 s"
    usleep 100000
done
# Settle time for the rest of the GID table (IPv6 entries), as measured.
sleep 1

ulimit -l unlimited 2>/dev/null
# Kernel messages of level error and worse still reach the console.
echo 4 >/proc/sys/kernel/printk
cd /tmp
marker START
# The command's standard error leaves on the second serial port (the host's stderr), so that
# its standard output reaches the host's stdout alone (JSON lines stay parseable).
if [ -c /dev/ttyS1 ]; then
    stty -F /dev/ttyS1 raw -echo 2>/dev/null
    sh /etc/praas/run.sh </dev/null 2>/dev/ttyS1
else
    sh /etc/praas/run.sh </dev/null
fi
status=\$?
marker "EXIT:\$status"
sync
poweroff -f
sleep 60
EOF
    chmod 0755 "$stage/init"
}

# Writes archive $2 from staging folder $1 (newc, owned by root).
make_cpio() {
    local stage="$1" out="$2"
    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort \
        | cpio -o -H newc -R 0:0 --quiet) >"$out"
}

# Identifies what the base archive is built from: the kernel, this script
# (it defines the layout and /init) and the host packages copied in.
base_stamp() {
    {
        echo "kernel=$KVER"
        sha256sum "$SCRIPT_PATH" | cut -d' ' -f1
        dpkg-query -W -f='${Package}=${Version}\n' busybox-static rdma-core \
            ibverbs-providers ibverbs-utils libibverbs1 librdmacm1 perftest \
            iproute2 rdmacm-utils libc6 libnl-3-200 2>/dev/null || true
    } | sha256sum | cut -c1-16
}

# Builds $CACHE/base-HASH.cpio: busybox, the rdma modules, the rdma
# user space with its libraries, /init.  Sets BASE_CPIO and BASE_LIST.
prepare_base_initramfs() {
    local hash
    hash="$(base_stamp)"
    BASE_CPIO="$CACHE/base-$hash.cpio"
    BASE_LIST="$CACHE/base-$hash.list"
    [[ -s "$BASE_CPIO" && -s "$BASE_LIST" ]] && return 0

    log "building the base initramfs for $KVER"
    local stage
    stage="$(mktemp -d "$CACHE/.base.XXXXXX")"
    make_merged_usr_links "$stage"
    mkdir -p "$stage"/{dev,proc,sys,tmp,run,root,etc/praas,opt/praas/bin,etc/libibverbs.d}

    # busybox-static: one binary, one link per applet.
    local busybox applet
    busybox="$(command -v busybox)"
    ldd "$busybox" >/dev/null 2>&1 && die "$busybox is dynamically linked; need busybox-static"
    stage_host_file "$busybox" /usr/bin/busybox "$stage"
    while read -r applet; do
        [[ -e "$stage/$applet" || -L "$stage/$applet" ]] || ln -s /usr/bin/busybox "$stage/$applet"
    done < <("$busybox" --list-full)

    # Kernel modules, in load order, without duplicates.
    local mod deps="" line ko
    for mod in "${GUEST_MODULES[@]}"; do
        deps+="$(modprobe -d "$KERNEL_ROOT" -S "$KVER" --show-depends "$mod")"$'\n' \
            || die "modprobe --show-depends $mod failed for $KVER"
    done
    : >"$stage/etc/praas/modules.list"
    while read -r line; do
        # "insmod /path/x.ko [params]" or "builtin x".
        [[ "$line" == insmod\ * ]] || continue
        ko="$(awk '{print $2}' <<<"$line")"
        ko="${ko#"$KERNEL_ROOT"}"
        case "$ko" in
            *.ko) ;;
            *.ko.xz)
                # busybox insmod may lack xz support: store it decompressed.
                mkdir -p "$stage$(dirname "$ko")"
                xz -dc "$KERNEL_ROOT$ko" >"$(readlink -f "$stage$(dirname "$ko")")/$(basename "$ko" .xz)"
                ko="${ko%.xz}" ;;
            *) die "unexpected module file: $ko" ;;
        esac
        grep -qxF "$ko" "$stage/etc/praas/modules.list" && continue
        [[ -e "$stage$ko" ]] || stage_host_file "$KERNEL_ROOT$ko" "$ko" "$stage"
        echo "$ko" >>"$stage/etc/praas/modules.list"
    done <<<"$deps"
    grep -q '/rdma_rxe\.ko$' "$stage/etc/praas/modules.list" || die "rdma_rxe.ko not found in $KVER"

    # rdma-core, iproute2 and perftest programs with their libraries; the
    # rxe provider is dlopen()ed by libibverbs, so ldd cannot see it.
    local tool path provider
    declare -A libs=()
    for tool in "${GUEST_TOOLS[@]}"; do
        path="$(PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH command -v "$tool")" \
            || die "host tool not found: $tool"
        stage_host_file "$path" "/opt/praas/bin/$tool" "$stage"
        for line in $(shared_libraries_of "$path"); do libs["$line"]=1; done
    done
    provider="$(dpkg -L ibverbs-providers | grep '/librxe-rdmav[0-9]*\.so$' | head -n 1)"
    [[ -n "$provider" ]] || die "ibverbs-providers has no librxe provider"
    libs["$provider"]=1
    for line in $(shared_libraries_of "$provider"); do libs["$line"]=1; done
    for line in "${!libs[@]}"; do stage_host_file "$line" "$line" "$stage"; done
    stage_host_file /etc/libibverbs.d/rxe.driver /etc/libibverbs.d/rxe.driver "$stage"

    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$stage/etc/passwd"
    printf 'root:x:0:\n' >"$stage/etc/group"
    printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n%s\tpraas-vm\n' "$GUEST_ADDR" >"$stage/etc/hosts"
    write_init "$stage"

    make_cpio "$stage" "$BASE_CPIO.tmp"
    (cd "$stage" && find . -mindepth 1 -type f | sed 's/^\.//' | LC_ALL=C sort) >"$BASE_LIST.tmp"
    rm -rf "$stage"
    mv "$BASE_LIST.tmp" "$BASE_LIST"
    mv "$BASE_CPIO.tmp" "$BASE_CPIO"
    # Base archives of older stamps are garbage once no run uses them.
    find "$CACHE" -maxdepth 1 -name 'base-*' ! -name "base-$hash.*" -mmin +60 -delete 2>/dev/null || true
}

# Everything shared between runs, under a lock so that concurrent runs do
# not install or build the same thing twice.
prepare_cache() {
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    flock 9
    ensure_host_packages
    prepare_kernel
    prepare_base_initramfs
    flock -u 9
    exec 9>&-
}

# ------------------------------------------------------------ per-run layer

# Builds the per-run cpio: the token, /etc/praas/run.sh, the --file files
# and the libraries they need that the base archive lacks.
build_run_layer() {
    local stage="$RUN_DIR/stage" spec host guest lib
    mkdir -p "$stage/etc/praas"
    make_merged_usr_links "$stage"
    echo "$TOKEN" >"$stage/etc/praas/token"

    declare -A libs=()
    for spec in "${FILE_SPECS[@]+"${FILE_SPECS[@]}"}"; do
        host="${spec%%:*}"
        if [[ "$spec" == *:* ]]; then guest="${spec#*:}"; else guest=/opt/praas/; fi
        [[ -f "$host" ]] || die "--file: not a file: $host" 2
        [[ "$guest" == /* ]] || die "--file: guest path must be absolute: $guest" 2
        [[ "$guest" == */ ]] && guest="$guest$(basename "$host")"
        stage_host_file "$host" "$guest" "$stage"
        for lib in $(shared_libraries_of "$host"); do libs["$lib"]=1; done
    done
    for lib in "${!libs[@]}"; do
        # Skip what the base archive already has (libc, libibverbs, ...).
        grep -qxF "$(readlink -f "$(dirname "$lib")")/$(basename "$lib")" "$BASE_LIST" && continue
        stage_host_file "$lib" "$lib" "$stage"
    done

    {
        echo "# Written by scripts/rxe-vm.sh for one run."
        echo "export PRAAS_RDMA_DEVICE=$RXE_DEVICE"
        echo "export PRAAS_RDMA_ADDR=$GUEST_ADDR"
        echo "export PRAAS_RDMA_NETDEV=$RXE_NETDEV"
        echo "export PRAAS_IN_VM=1"
        for spec in "${ENV_SPECS[@]+"${ENV_SPECS[@]}"}"; do
            echo "export ${spec%%=*}=$(sh_quote "${spec#*=}")"
        done
        if ((${#COMMAND_WORDS[@]} == 1)); then
            printf '%s\n' "${COMMAND_WORDS[0]}"
        else
            local word line=""
            for word in "${COMMAND_WORDS[@]}"; do line+="$(sh_quote "$word") "; done
            printf '%s\n' "$line"
        fi
    } >"$stage/etc/praas/run.sh"

    make_cpio "$stage" "$RUN_DIR/run.cpio"
    cat "$BASE_CPIO" "$RUN_DIR/run.cpio" >"$RUN_DIR/initrd.cpio"
}

# ------------------------------------------------------------------ the VM

QEMU_PID=""
FILTER_PID=""
STDERR_PID=""
RUN_DIR=""

# Stops what this run started (timeout(1) passes the signal on to QEMU)
# and removes the run folder once nothing writes into it any more.
# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
    if [[ -n "$QEMU_PID" ]]; then
        kill "$QEMU_PID" 2>/dev/null || true
        wait "$QEMU_PID" 2>/dev/null || true
    fi
    if [[ -n "$FILTER_PID" ]]; then
        kill "$FILTER_PID" 2>/dev/null || true
        wait "$FILTER_PID" 2>/dev/null || true
    fi
    if [[ -n "$STDERR_PID" ]]; then
        kill "$STDERR_PID" 2>/dev/null || true
        wait "$STDERR_PID" 2>/dev/null || true
    fi
    [[ -n "$RUN_DIR" ]] && rm -rf "$RUN_DIR"
    return 0
}

# Reads the console from stdin.  Prints what the command printed (between
# the START and EXIT markers; everything with RXE_VM_VERBOSE=1), keeps the
# whole console in $RUN_DIR/console.log and the markers seen in
# $RUN_DIR/markers.
filter_console() {
    awk -v tok="@@PRAAS-VM:$TOKEN:" -v verbose="${RXE_VM_VERBOSE:-0}" \
        -v logf="$RUN_DIR/console.log" -v markf="$RUN_DIR/markers" '
    {
        sub(/\r+$/, "")
        # SeaBIOS clears the screen with escape sequences; drop them.
        gsub(/\033(c|\[[0-9;?]*[A-Za-z])/, "")
        print > logf
        i = index($0, tok)
        if (i == 0) {
            if (inside || verbose == "1") { print; fflush() }
            next
        }
        before = substr($0, 1, i - 1)
        rest = substr($0, i + length(tok))
        sub(/@@.*$/, "", rest)
        if ((inside || verbose == "1") && before != "") { print before; fflush() }
        if (verbose == "1") { print substr($0, i); fflush() }
        print rest > markf; fflush(markf)
        if (rest == "START") inside = 1
        if (rest ~ /^EXIT:/) inside = 0
    }'
}

# Boots the VM and waits for it.  Sets QEMU_RC (124 on timeout).
run_vm() {
    # clocksource=tsc: under TCG the kernel distrusts the TSC and picks the HPET, which makes
    # every clock_gettime a system call plus an emulated MMIO read (microseconds); the TSC TCG
    # emulates is the host's, constant and monotonic, as on the clusters praas targets.
    local append="console=ttyS0 quiet loglevel=4 panic=1 mitigations=off clocksource=tsc tsc=reliable"
    append+=" rdinit=/init i8042.noaux i8042.nopnp random.trust_cpu=on"
    mkfifo "$RUN_DIR/console" "$RUN_DIR/stderr"
    # timeout(1) kills QEMU at the deadline; -no-reboot with panic=1 makes a
    # kernel panic (e.g. init died) end QEMU instead of rebooting forever.
    timeout -k 5 "$TIMEOUT" qemu-system-x86_64 \
        -accel tcg,thread=multi -cpu "${RXE_VM_CPU:-max}" -smp 2 -m "$VM_MEM_MB" \
        -nographic -nic none -no-reboot -no-user-config \
        -kernel "$VMLINUX" -initrd "$RUN_DIR/initrd.cpio" -append "$append" \
        -serial mon:stdio -chardev file,id=stderr,path="$RUN_DIR/stderr" -serial chardev:stderr \
        </dev/null >"$RUN_DIR/console" 2>"$RUN_DIR/qemu.stderr" &
    QEMU_PID=$!
    filter_console <"$RUN_DIR/console" &
    FILTER_PID=$!
    # The guest's ttyS1: the command's standard error, to ours as it comes.
    tr -d '\r' <"$RUN_DIR/stderr" >&2 &
    STDERR_PID=$!
    # `wait` (unlike a foreground command) lets the INT/TERM trap run at once.
    QEMU_RC=0
    wait "$QEMU_PID" || QEMU_RC=$?
    QEMU_PID=""
    wait "$FILTER_PID" || true
    FILTER_PID=""
    # It ends with QEMU's end of the file; should QEMU have stopped before opening it, the
    # reader would wait for a writer forever.
    for _ in {1..20}; do kill -0 "$STDERR_PID" 2>/dev/null || break; sleep 0.1; done
    kill "$STDERR_PID" 2>/dev/null || true
    wait "$STDERR_PID" 2>/dev/null || true
    STDERR_PID=""
}

# Maps what happened in the VM to this script's exit status.
report_and_exit() {
    local markers="$RUN_DIR/markers" status
    touch "$markers"
    status="$(sed -n 's/^EXIT://p' "$markers" | tail -n 1)"
    if [[ -n "$status" ]]; then
        exit "$status"
    fi
    if ((QEMU_RC == 124)); then
        log "timeout: the VM did not finish within ${TIMEOUT}s (killed)"
        grep -qx START "$markers" || show_console_tail
        exit 124
    fi
    if grep -q '^SETUP-FAILED:' "$markers"; then
        log "$RXE_DEVICE did not come up: $(sed -n 's/^SETUP-FAILED://p' "$markers" | head -n 1)"
        show_console_tail
        exit 125
    fi
    if ! grep -qx BOOTED "$markers"; then
        log "the VM failed to boot (QEMU exit status $QEMU_RC)"
        [[ -s "$RUN_DIR/qemu.stderr" ]] && sed 's/^/qemu: /' "$RUN_DIR/qemu.stderr" >&2
        show_console_tail
        exit 125
    fi
    if grep -qx START "$markers"; then
        log "the VM stopped before the command finished (QEMU exit status $QEMU_RC)"
        exit 125
    fi
    log "the VM stopped during set-up (QEMU exit status $QEMU_RC)"
    show_console_tail
    exit 125
}

show_console_tail() {
    [[ "${RXE_VM_VERBOSE:-0}" == 1 ]] && return 0
    log "last console lines (RXE_VM_VERBOSE=1 shows all):"
    tail -n 40 "$RUN_DIR/console.log" 2>/dev/null | sed 's/^/  | /' >&2 || true
}

main() {
    parse_args "$@"
    prepare_cache
    if ((PREPARE_ONLY)); then
        log "ready: kernel $KVER, $(basename "$BASE_CPIO")"
        exit 0
    fi
    RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/rxe-vm.XXXXXX")"
    trap cleanup EXIT
    trap 'log "interrupted"; exit 130' INT TERM
    TOKEN="$(basename "$RUN_DIR" | tr -dc 'A-Za-z0-9')$$"
    build_run_layer
    run_vm
    report_and_exit
}

main "$@"
