#!/usr/bin/env bash
# The praas demo: starts a cloud process serving the example functions, invokes them with the
# praas CLI, and shows state surviving between invocations, a local invocation chain, clear
# errors, and round-trip timings.
#
# Usage: scripts/demo.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh
echo "==> building (release)" >&2
cargo build --release --quiet -p praas-control -p praas-example-functions

praas=target/release/praas
out="$(mktemp -d)"
server_pid=""
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$out"
}
trap cleanup EXIT

"$praas" process serve --manifest examples/functions/functions.toml --listen 127.0.0.1:0 \
    --workers 2 --id demo-process >"$out/serve.out" 2>"$out/serve.err" &
server_pid=$!
for _ in $(seq 100); do
    grep -q '^listening on ' "$out/serve.out" 2>/dev/null && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$out/serve.err" >&2; exit 1; }
    sleep 0.05
done
addr=$(sed -n 's/^listening on //p' "$out/serve.out")
[ -n "$addr" ] || { echo "demo: the process did not start" >&2; cat "$out/serve.err" >&2; exit 1; }
echo "==> cloud process demo-process listening on $addr"

run() {
    local function=$1 input=${2:-}
    printf '$ praas invoke --process %s %s --input %q\n' "$addr" "$function" "$input"
    "$praas" invoke --process "$addr" "$function" --input "$input" || true
    echo
}

echo; echo "--- a function: echo"
run echo "hello, praas"
echo; echo "--- state survives between invocations (and clients: each line is a new CLI process)"
run counter; run counter; run counter
run state_put "greeting=hello from state"
run state_get greeting
run state_keys
echo "--- a function invoking functions of its own process, three deep"
run nest 3
echo; echo "--- errors are answers, not hangs"
run no_such_function
run panic "on purpose"
"$praas" invoke --process "$addr" sleep --input 2000 --timeout-ms 300 || true
echo "--- the process still serves after all of that"
run counter

echo; echo "--- round-trip timings of 1000 echo invocations through the CLI's SDK"
cargo build --release --quiet -p praas-bench 2>/dev/null && \
    target/release/praas-bench invoke --sizes 8,1024 --iters 2000 --warmup 200 || \
    echo "(praas-bench not available)"
