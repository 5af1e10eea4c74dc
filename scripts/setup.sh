#!/usr/bin/env bash
# Installs what praas needs to build and test on Debian 12, and nothing twice:
# system packages with apt-get (only the missing ones) and cargo-fuzz from crates.io.
# The Rust toolchain itself comes with the machine.
#
# Usage: scripts/setup.sh
set -euo pipefail

PACKAGES=(
    # building: C compiler for the C example functions, bindgen for rdma-sys
    gcc g++ make pkg-config clang libclang-dev
    # RDMA user space: verbs and rdma_cm headers and libraries, the rxe provider, tools, perftest
    libibverbs-dev librdmacm-dev rdma-core ibverbs-providers ibverbs-utils rdmacm-utils perftest iproute2
    # the SoftRoCE VM on hosts whose kernel has no rdma_rxe (scripts/rxe-vm.sh)
    qemu-system-x86 busybox-static cpio kmod python3
    # the Slurm test cluster (scripts/slurm-cluster.sh, control/tests/slurm.rs)
    slurmctld slurmd slurm-client munge
)

missing_packages() {
    local pkg
    for pkg in "${PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            echo "$pkg"
        fi
    done
}

install_packages() {
    local missing
    mapfile -t missing < <(missing_packages)
    if [ "${#missing[@]}" -eq 0 ]; then
        return
    fi
    echo "setup: installing ${missing[*]}" >&2
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

install_cargo_fuzz() {
    if cargo fuzz --version >/dev/null 2>&1; then
        return
    fi
    echo "setup: installing cargo-fuzz" >&2
    cargo install --quiet --locked cargo-fuzz
}

install_packages
install_cargo_fuzz
