#!/usr/bin/env bash
# Builds the RDMA integration tests (dataplane/tests/rdma.rs and control/tests/rdma.rs, cargo
# feature `rdma`, with the praas binary the control-plane test starts) and runs them
# on SoftRoCE: on this host if its kernel can run rdma_rxe (scripts/softroce-setup.sh --check),
# else inside the QEMU VM of scripts/rxe-vm.sh. The RDMA tests are never skipped: a missing
# device, a failed boot or a failed test fails this script.
#
# Usage: scripts/test-rdma.sh [--timeout SECS] [-- TEST-BINARY-ARGS...]
#   (default timeout 280 s for the VM; arguments after -- go to the test binary, e.g. a filter)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# The data-plane tests print the transport's log lines of a failing test (not the praas
# processes the control-plane test starts: they would log to the terminal).
log_filter="${RUST_LOG:-praas_dataplane=debug}"

timeout=280
while (($#)); do
    case "$1" in
        --timeout) timeout="${2:?--timeout needs a value}"; shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "test-rdma: unknown argument: $1" >&2; exit 2 ;;
    esac
done
test_args=("$@")

log() { printf 'test-rdma: %s\n' "$*" >&2; }

# The test binaries: cargo prints their paths in the compiler-artifact messages of the `rdma`
# tests, and the praas binary's in that of the `praas` bin (the control-plane test runs it).
log "building the RDMA tests (feature rdma)"
artifacts="$(cargo test -p praas-dataplane --features rdma -p praas-control --test rdma --no-run --message-format=json 2>/dev/null)" || {
    cargo test -p praas-dataplane --features rdma -p praas-control --test rdma --no-run >&2 || true
    log "error: building the RDMA test binaries failed"; exit 1
}
executable() {
    jq -r --arg package "$1" --arg target "$2" 'select(.reason == "compiler-artifact" and .target.name == $target
        and (.package_id | contains($package)) and .executable != null) | .executable' <<<"$artifacts" | tail -n 1
}
test_bin="$(executable praas-dataplane rdma)"
control_test_bin="$(executable praas-control rdma)"
praas_bin="$(executable praas-control praas)"
for bin in "$test_bin" "$control_test_bin" "$praas_bin"; do
    [[ -n "$bin" && -x "$bin" ]] || { log "error: a test binary is missing from the build ($bin)"; exit 1; }
done

# The example functions the tests load (the guest has no cargo to build them).
functions="$(cargo build -p praas-example-functions --message-format=json 2>/dev/null \
    | jq -r 'select(.reason == "compiler-artifact" and .target.name == "praas_example_functions") | .filenames[]' \
    | grep '\.so$' | tail -n 1)"
[[ -n "$functions" && -f "$functions" ]] || { log "error: building the example functions failed"; exit 1; }

# The C client library and the example C client (ffi/client), which the control-plane test runs
# against a process's rdma:// address; built here, where there is a C compiler.
client_lib="$(cargo build -p praas-client-c --message-format=json 2>/dev/null \
    | jq -r 'select(.reason == "compiler-artifact" and .target.name == "praas_client") | .filenames[]' \
    | grep '\.so$' | tail -n 1)"
[[ -n "$client_lib" && -f "$client_lib" ]] || { log "error: building the C client library failed"; exit 1; }
c_invoke="$(dirname "$client_lib")/praas-c-invoke"
"${CC:-cc}" -O2 -std=c11 -Wall -Wextra -Werror -I ffi/include ffi/client/examples/invoke.c -o "$c_invoke" \
    -L "$(dirname "$client_lib")" -Wl,-rpath,"$(dirname "$client_lib")" -lpraas_client \
    || { log "error: compiling the example C client failed"; exit 1; }

# The example C function libraries the remote-invocation tests load (testkit::c_functions and
# c_functions_v1 compile them where there is a C compiler; the guest has none): built here with
# the flags testkit uses, against the current header and against the version-1 one.
c_functions="$(dirname "$functions")/libc_functions-rdma.so"
c_functions_v1="$(dirname "$functions")/libc_functions-v1-rdma.so"
for build in "ffi/include:$c_functions" "ffi/tests/v1:$c_functions_v1"; do
    "${CC:-cc}" -shared -fPIC -O2 -std=c11 -Wall -Wextra -Werror -I "${build%%:*}" ffi/examples/c_functions.c \
        -o "${build#*:}" || { log "error: compiling the example C functions (${build%%:*}) failed"; exit 1; }
done

start=$(date +%s.%N)
status=0
if scripts/softroce-setup.sh --check >/dev/null 2>&1; then
    log "this host can run rdma_rxe: testing here"
    eval "$(scripts/softroce-setup.sh --dummy)"
    for bin in "$test_bin" "$control_test_bin"; do
        log_env=()
        [[ $bin != "$test_bin" ]] || log_env=(RUST_LOG="$log_filter")
        env "${log_env[@]+"${log_env[@]}"}" PRAAS_RDMA_DEVICE="$PRAAS_RDMA_DEVICE" PRAAS_RDMA_ADDR="$PRAAS_RDMA_ADDR" \
            PRAAS_RDMA_REQUIRED=1 PRAAS_C_INVOKE="$c_invoke" PRAAS_EXAMPLE_FUNCTIONS="$functions" \
            PRAAS_C_FUNCTIONS="$c_functions" PRAAS_C_FUNCTIONS_V1="$c_functions_v1" \
            "$bin" --include-ignored --test-threads=2 "${test_args[@]+"${test_args[@]}"}" \
            || status=$?
    done
else
    log "no rdma_rxe in this kernel: testing in the SoftRoCE VM (scripts/rxe-vm.sh)"
    # Two tests at a time, each moving 16 MiB payloads through several processes (a remote
    # invocation holds the input and the output at the client, the caller and the callee):
    # 1 GiB of guest memory ran out (the kernel killed the test binary), 2 GiB leaves room.
    export RXE_VM_MEM_MB="${RXE_VM_MEM_MB:-2048}"
    guest_lib=/opt/praas/lib/libpraas_example_functions.so
    quoted_args=""
    for arg in "${test_args[@]+"${test_args[@]}"}"; do quoted_args+=" '${arg//\'/\'\\\'\'}'"; done
    # The guest has none of the build's paths (its /tmp is a fresh tmpfs): everything goes under
    # /opt/praas, and the tests are told where.
    scripts/rxe-vm.sh --timeout "$timeout" \
        --file "$test_bin:/opt/praas/bin/praas-rdma-tests" \
        --file "$control_test_bin:/opt/praas/bin/praas-control-rdma-tests" \
        --file "$praas_bin:/opt/praas/bin/praas" \
        --env PRAAS_BIN=/opt/praas/bin/praas \
        --file "$client_lib:/opt/praas/lib/libpraas_client.so" \
        --file "$c_invoke:/opt/praas/bin/praas-c-invoke" \
        --env PRAAS_C_INVOKE=/opt/praas/bin/praas-c-invoke \
        --env LD_LIBRARY_PATH=/opt/praas/lib \
        --file "$functions:$guest_lib" \
        --env PRAAS_EXAMPLE_FUNCTIONS="$guest_lib" \
        --file "$c_functions:/opt/praas/lib/libc_functions.so" \
        --env PRAAS_C_FUNCTIONS=/opt/praas/lib/libc_functions.so \
        --file "$c_functions_v1:/opt/praas/lib/libc_functions-v1.so" \
        --env PRAAS_C_FUNCTIONS_V1=/opt/praas/lib/libc_functions-v1.so \
        --env PRAAS_RDMA_REQUIRED=1 \
        --env RUST_BACKTRACE=1 \
        -- "RUST_LOG='$log_filter' praas-rdma-tests --include-ignored --test-threads=2$quoted_args; s=\$?;
            praas-control-rdma-tests --include-ignored --test-threads=1$quoted_args || s=1; exit \$s" || status=$?
fi
elapsed="$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
if ((status == 0)); then
    log "PASSED in ${elapsed} s"
else
    log "FAILED (exit status $status) after ${elapsed} s"
fi
exit "$status"
