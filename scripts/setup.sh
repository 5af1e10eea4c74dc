#!/usr/bin/env bash
# Installs what praas needs to build and test on Debian 12, and nothing twice:
# system packages with apt-get (only the missing ones), cargo-fuzz from crates.io, and the
# unprivileged user `praas-other` that control/tests/security.rs runs as (another user of a
# shared login node, who must be refused by the control plane's API).
# The Rust toolchain itself comes with the machine.
#
# Usage: scripts/setup.sh
set -euo pipefail

PACKAGES=(
    # building: C compiler for the C example functions, bindgen for rdma-sys
    gcc g++ make pkg-config clang libclang-dev
    # the scripts find build outputs in cargo's JSON messages
    jq
    # RDMA user space: verbs and rdma_cm headers and libraries, the rxe provider, tools, perftest
    libibverbs-dev librdmacm-dev rdma-core ibverbs-providers ibverbs-utils rdmacm-utils perftest iproute2
    # the SoftRoCE VM on hosts whose kernel has no rdma_rxe (scripts/rxe-vm.sh)
    qemu-system-x86 busybox-static cpio kmod python3
    # the Slurm test cluster (scripts/slurm-cluster.sh, control/tests/slurm.rs)
    slurmctld slurmd slurm-client munge
    # Python: libpython3.11 for Python functions inside processes (PYO3_PYTHON=/usr/bin/python3 in
    # .cargo/config.toml), and venv for the Python client package's tests (python/)
    python3-dev python3-venv
    # observability: promtool checks the control plane's /metrics (control/tests/metrics.rs),
    # rsvg-convert renders praas-bench's SVG figures (bench/tests/plot.rs)
    prometheus librsvg2-bin
    # the Redis baseline of `praas-bench message --redis` (started and stopped by the benchmark)
    redis-server
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

ensure_other_user() {
    if id -u praas-other >/dev/null 2>&1; then
        return
    fi
    if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null; then
        echo "setup: cannot create the test user praas-other (not root, no sudo)" >&2
        return
    fi
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    echo "setup: creating the unprivileged test user praas-other" >&2
    "${sudo[@]}" useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin praas-other
}

install_packages
install_cargo_fuzz
ensure_other_user
