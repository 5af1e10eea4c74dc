#!/usr/bin/env bash
# Sets up a SoftRoCE (rdma_rxe) device on a host whose kernel has rdma_rxe:
# users' clusters, CI runners with a stock distribution kernel.  (This
# project's own machines have no InfiniBand in their kernel: there,
# scripts/rxe-vm.sh runs the tests inside a VM instead.)
#
# On success it prints, on stdout, lines that can be eval'ed:
#   PRAAS_RDMA_DEVICE=rxe0
#   PRAAS_RDMA_ADDR=<the IPv4 address of the netdev>
# Messages go to stderr.
set -euo pipefail

readonly DEVICE_DEFAULT=rxe0
readonly DUMMY_NETDEV=dummy0
readonly DUMMY_ADDR_DEFAULT=10.77.0.1/24
readonly PACKAGES=(rdma-core ibverbs-utils ibverbs-providers iproute2 kmod)

log() { printf 'softroce-setup: %s\n' "$*" >&2; }
die() { printf 'softroce-setup: error: %s\n' "$1" >&2; exit "${2:-1}"; }

usage() {
    cat <<EOF
Usage: scripts/softroce-setup.sh [--name DEV] [NETDEV | --dummy [--addr CIDR]]
       scripts/softroce-setup.sh --check
       scripts/softroce-setup.sh --remove [--name DEV] [--dummy]

Creates the SoftRoCE device DEV (default $DEVICE_DEFAULT) on NETDEV (default: the
interface of the default route), after installing rdma-core, ibverbs-utils
and iproute2 (apt-get, when missing) and loading rdma_rxe.  Idempotent: an
existing DEV is kept.  Checks that its port is ACTIVE and prints
PRAAS_RDMA_DEVICE=... and PRAAS_RDMA_ADDR=... on stdout.

  --dummy        put DEV on a $DUMMY_NETDEV interface (created if absent) with the
                 private address CIDR (default $DUMMY_ADDR_DEFAULT); it exists only on
                 this host, so both ends of a test must run here
  --addr CIDR    the address for --dummy
  --name DEV     the rxe device name (default $DEVICE_DEFAULT)
  --check        only report whether this host's kernel can run rdma_rxe;
                 changes nothing; exit 0 if it can, 1 if not
  --remove       delete DEV (and $DUMMY_NETDEV too with --dummy)
  -h, --help     this text
EOF
}

# ------------------------------------------------------------ the kernel

# The running kernel's build configuration, if the host exposes it.
kernel_config() {
    if [[ -r /proc/config.gz ]]; then
        zcat /proc/config.gz 2>/dev/null
    elif [[ -r "/boot/config-$(uname -r)" ]]; then
        cat "/boot/config-$(uname -r)"
    fi
}

# Prints why the kernel cannot run rdma_rxe, one reason a line; prints
# nothing if it can.  Reads only: loads no module, creates no device.
kernel_cannot_reasons() {
    local kver config mods
    kver="$(uname -r)"
    # Already running: the module is loaded, or built in.
    [[ -d /sys/module/rdma_rxe ]] && return 0
    config="$(kernel_config || true)"
    if [[ -n "$config" ]]; then
        if ! grep -q '^CONFIG_INFINIBAND=[ym]' <<<"$config"; then
            echo "kernel $kver is built without InfiniBand/RDMA support (CONFIG_INFINIBAND is not set)"
            return 0
        fi
        if ! grep -q '^CONFIG_RDMA_RXE=[ym]' <<<"$config"; then
            echo "kernel $kver is built without SoftRoCE (CONFIG_RDMA_RXE is not set)"
            return 0
        fi
        grep -q '^CONFIG_RDMA_RXE=y' <<<"$config" && return 0
        if ! grep -q '^CONFIG_MODULES=y' <<<"$config"; then
            echo "kernel $kver cannot load modules (CONFIG_MODULES is not set) and rdma_rxe is not built in"
            return 0
        fi
    fi
    mods="/lib/modules/$kver"
    if [[ ! -d "$mods" ]]; then
        echo "no modules for kernel $kver ($mods does not exist), and rdma_rxe is not loaded"
        return 0
    fi
    if ! grep -qsE '(^|/)rdma_rxe\.ko(\.[a-z]+)?:' "$mods/modules.dep" \
        && ! grep -qsE '(^|/)rdma_rxe\.ko' "$mods/modules.builtin"; then
        echo "the module rdma_rxe is not installed for kernel $kver (not in $mods/modules.dep)"
    fi
}

check_only() {
    local reasons
    reasons="$(kernel_cannot_reasons)"
    if [[ -n "$reasons" ]]; then
        log "NO: this host's kernel cannot run SoftRoCE (rdma_rxe):"
        printf '  - %s\n' "${reasons//$'\n'/$'\n'  - }" >&2
        log "run RDMA tests in a VM instead: scripts/rxe-vm.sh -- COMMAND"
        exit 1
    fi
    log "YES: kernel $(uname -r) can run SoftRoCE (rdma_rxe)"
    exit 0
}

# ------------------------------------------------------------ set-up steps

ensure_packages() {
    local missing=() pkg
    for pkg in "${PACKAGES[@]}"; do
        [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)" == ii* ]] \
            || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
        || die "apt-get install failed: ${missing[*]}"
}

load_module() {
    [[ -d /sys/module/rdma_rxe ]] && return 0
    modprobe rdma_rxe || die "modprobe rdma_rxe failed"
}

default_route_netdev() {
    { ip -o route show default 2>/dev/null || true; } | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }'
}

# Creates the dummy netdev with its address unless present.
ensure_dummy_netdev() {
    local addr="$1"
    if ! ip link show "$DUMMY_NETDEV" >/dev/null 2>&1; then
        modprobe dummy 2>/dev/null || true
        # Loading dummy.ko may create dummy0 by itself (numdummies=1).
        ip link show "$DUMMY_NETDEV" >/dev/null 2>&1 \
            || ip link add "$DUMMY_NETDEV" type dummy || die "cannot create $DUMMY_NETDEV"
    fi
    ip -o addr show dev "$DUMMY_NETDEV" | grep -qF " ${addr} " \
        || ip addr add "$addr" dev "$DUMMY_NETDEV" || die "cannot add $addr to $DUMMY_NETDEV"
    # Jumbo frames, so rxe uses a 4096-byte RDMA MTU (as RoCE fabrics do) instead of 1024.
    ip link set "$DUMMY_NETDEV" mtu 9000
    ip link set "$DUMMY_NETDEV" up
}

# Prints the netdev an existing rxe device is bound to, or nothing.
rxe_netdev_of() {
    { rdma link show "$1/1" 2>/dev/null || true; } \
        | awk '{ for (i = 1; i < NF; i++) if ($i == "netdev") print $(i + 1) }'
}

ensure_rxe_device() {
    local dev="$1" netdev="$2" bound
    bound="$(rxe_netdev_of "$dev")"
    if [[ -n "$bound" ]]; then
        [[ "$bound" == "$netdev" ]] || log "warning: $dev exists on $bound, not $netdev; keeping it"
        RXE_NETDEV="$bound"
        return 0
    fi
    rdma link add "$dev" type rxe netdev "$netdev" || die "rdma link add $dev type rxe netdev $netdev failed"
    RXE_NETDEV="$netdev"
}

# Waits (up to 10 s) for the port to be ACTIVE, as user space sees it.
verify_device() {
    local dev="$1" i
    ibv_devices | grep -qw "$dev" || die "ibv_devices does not list $dev"
    for ((i = 0; i < 100; i++)); do
        ibv_devinfo -d "$dev" 2>/dev/null | grep -q 'state:[[:space:]]*PORT_ACTIVE' && return 0
        sleep 0.1
    done
    ibv_devinfo -d "$dev" >&2 || true
    die "$dev port is not PORT_ACTIVE (is $RXE_NETDEV up?)"
}

ipv4_of() {
    { ip -o -4 addr show dev "$1" 2>/dev/null || true; } | awk '{ split($4, a, "/"); print a[1]; exit }'
}

remove_device() {
    local dev="$1" dummy="$2"
    if rdma link show "$dev/1" >/dev/null 2>&1; then
        rdma link delete "$dev" || die "rdma link delete $dev failed"
        log "removed $dev"
    else
        log "$dev does not exist"
    fi
    if ((dummy)) && ip link show "$DUMMY_NETDEV" >/dev/null 2>&1; then
        ip link delete "$DUMMY_NETDEV"
        log "removed $DUMMY_NETDEV"
    fi
}

main() {
    local mode=setup dummy=0 addr="$DUMMY_ADDR_DEFAULT" dev="$DEVICE_DEFAULT" netdev=""
    while (($#)); do
        case "$1" in
            --check) mode=check; shift ;;
            --remove) mode=remove; shift ;;
            --dummy) dummy=1; shift ;;
            --addr) addr="${2:?--addr needs a value}"; shift 2 ;;
            --name) dev="${2:?--name needs a value}"; shift 2 ;;
            -h|--help) usage; exit 0 ;;
            -*) usage >&2; die "unknown option: $1" 2 ;;
            *) [[ -z "$netdev" ]] || die "only one NETDEV" 2; netdev="$1"; shift ;;
        esac
    done
    [[ "$mode" == check ]] && check_only
    [[ $EUID -eq 0 ]] || die "must run as root"
    if [[ "$mode" == remove ]]; then
        remove_device "$dev" "$dummy"
        exit 0
    fi

    local reasons
    reasons="$(kernel_cannot_reasons)"
    [[ -z "$reasons" ]] || die "$(printf '%s; ' "$reasons")use scripts/rxe-vm.sh instead"
    ensure_packages
    load_module
    if ((dummy)); then
        [[ -z "$netdev" ]] || die "give NETDEV or --dummy, not both" 2
        ensure_dummy_netdev "$addr"
        netdev="$DUMMY_NETDEV"
    elif [[ -z "$netdev" ]]; then
        netdev="$(default_route_netdev)"
        [[ -n "$netdev" ]] || die "no default route: give NETDEV or --dummy"
    fi
    ip link show "$netdev" >/dev/null 2>&1 || die "no such netdev: $netdev"
    ensure_rxe_device "$dev" "$netdev"
    verify_device "$dev"
    local ip4
    ip4="$(ipv4_of "$RXE_NETDEV")"
    [[ -n "$ip4" ]] || log "warning: $RXE_NETDEV has no IPv4 address; RoCEv2 over IPv4 needs one"
    log "$dev is ACTIVE on $RXE_NETDEV${ip4:+ ($ip4)}"
    echo "PRAAS_RDMA_DEVICE=$dev"
    echo "PRAAS_RDMA_ADDR=$ip4"
}

main "$@"
