#!/usr/bin/env bash
# Builds the release benchmark and the example functions and runs
# `praas-bench invoke --transport rdma --split` (or `message --transport rdma`) with this script's
# arguments on SoftRoCE: on this host if its kernel can run rdma_rxe (scripts/softroce-setup.sh
# --check), else inside the QEMU VM of scripts/rxe-vm.sh, where perftest's ib_send_lat /
# ib_write_lat run beside it as baselines. PRAAS_RDMA_POLL (busy, events, adaptive[:US]) is passed on.
#   scripts/bench-rdma.sh [invoke|message] [--json] [--sizes 8,1024]
# Output contract: docs/benchmarks.md (a table by default, JSON lines with --json).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bench_args=(invoke --transport rdma --split)
case "${1:-}" in
    invoke) shift ;;
    message) shift; bench_args=(message --transport rdma) ;;
esac

artifacts="$(cargo build --release -p praas-bench -p praas-example-functions --message-format=json 2>/dev/null)" || {
    cargo build --release -p praas-bench -p praas-example-functions >&2 || true
    echo "bench-rdma: error: the release build failed" >&2; exit 1
}
bench="$(jq -r 'select(.reason == "compiler-artifact" and .target.name == "praas-bench" and .executable != null) | .executable' <<<"$artifacts" | tail -n 1)"
functions="$(jq -r 'select(.reason == "compiler-artifact" and .target.name == "praas_example_functions") | .filenames[]' <<<"$artifacts" | grep '\.so$' | tail -n 1)"
[[ -x "$bench" && -f "$functions" ]] || { echo "bench-rdma: error: build artifacts not found" >&2; exit 1; }

if scripts/softroce-setup.sh --check >/dev/null 2>&1; then
    eval "$(scripts/softroce-setup.sh --dummy)"
    exec "$bench" "${bench_args[@]}" "$@"
fi
quoted="${bench_args[*]}"
for arg in "$@"; do quoted+=" '${arg//\'/\'\\\'\'}'"; done
guest_lib=/opt/praas/bin/libpraas_example_functions.so  # found next to the executable
exec scripts/rxe-vm.sh --timeout "${BENCH_TIMEOUT:-900}" \
    --file "$bench:/opt/praas/bin/praas-bench" \
    --file "$functions:$guest_lib" \
    ${PRAAS_RDMA_POLL:+--env PRAAS_RDMA_POLL="$PRAAS_RDMA_POLL"} \
    -- "praas-bench $quoted"
