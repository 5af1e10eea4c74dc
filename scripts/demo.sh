#!/usr/bin/env bash
# The praas demo, on the embedded default (local backend, filesystem swap store):
# starts the control plane, creates an application with three cloud processes, invokes
# functions, passes messages around the three, swaps one out and back in with its state intact,
# runs Python functions beside Rust ones and a Python driver script, and prints the timings of
# each step.
#
# Usage: scripts/demo.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh
echo "==> building (release)" >&2
# Build outputs are found through cargo (honouring CARGO_TARGET_DIR), not guessed.
artifacts="$(cargo build --release -p praas-control -p praas-example-functions --message-format=json 2>/dev/null)" || {
    cargo build --release -p praas-control -p praas-example-functions >&2 || true
    echo "demo: error: the release build failed" >&2; exit 1
}
praas="$(jq -r 'select(.reason == "compiler-artifact" and .target.name == "praas" and .executable != null) | .executable' <<<"$artifacts" | tail -n 1)"
functions="$(jq -r 'select(.reason == "compiler-artifact" and .target.name == "praas_example_functions") | .filenames[]' <<<"$artifacts" | grep '\.so$' | tail -n 1)"
[[ -x "$praas" && -f "$functions" ]] || { echo "demo: error: build artifacts not found" >&2; exit 1; }

work="$(mktemp -d)"
# The example manifests, their library paths pointing at this build's library and the Python
# functions' at their module (`praas app create` uploads both with the manifest).
sed "s|^library = .*|library = \"$functions\"|" examples/functions/functions.toml >"$work/functions.toml"
sed -e "s|^library = .*|library = \"$functions\"|" -e "s|^module = \"functions.py\"|module = \"$PWD/examples/python/functions.py\"|" \
    examples/python/manifest.toml >"$work/python.toml"
control_pid=""
cleanup() {
    if [ -n "$control_pid" ]; then
        # Stop the processes the control plane started, then the control plane.
        for p in p1 p2 p3; do "$praas" process stop demo "$p" >/dev/null 2>&1 || true; done
        "$praas" process stop pydemo py1 >/dev/null 2>&1 || true
        kill "$control_pid" 2>/dev/null || true
        wait "$control_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
timed() { # timed LABEL COMMAND...: runs COMMAND, prints its output and how long it took
    local label=$1; shift
    local start end
    start=$(now_ms)
    "$@"
    end=$(now_ms)
    printf '    (%s: %d ms)\n' "$label" $((end - start))
}
step() { printf '\n--- %s\n' "$*"; }
quiet() { "$@" >/dev/null; }

"$praas" control serve --listen 127.0.0.1:0 --data-dir "$work/data" >"$work/control.out" 2>"$work/control.err" &
control_pid=$!
for _ in $(seq 200); do
    grep -q '^control plane on ' "$work/control.out" 2>/dev/null && break
    kill -0 "$control_pid" 2>/dev/null || { cat "$work/control.err" >&2; exit 1; }
    sleep 0.05
done
PRAAS_CONTROL=$(grep -o 'http://[0-9.:]*' "$work/control.out" | head -n 1)
export PRAAS_CONTROL
echo "==> control plane at $PRAAS_CONTROL (data in $work/data)"

step "an application from the example functions' manifest"
"$praas" app create demo --manifest "$work/functions.toml" --vcpus 1 --memory-mb 4096

step "three cloud processes (each answers once ALLOCATED)"
for p in p1 p2 p3; do timed "create $p" quiet "$praas" process create demo "$p"; done
"$praas" process list demo

invoke() { # invoke PROCESS FUNCTION INPUT
    "$praas" invoke --app demo --process "$1" "$2" --input "$3"
    echo
}

step "invocations through the control plane; state survives between them"
timed "echo on p1" invoke p1 echo "hello, praas"
for _ in 1 2 3; do invoke p1 counter ""; done
timed "a function calling functions of its own process, 3 deep" invoke p1 nest 3

step "messages around the ring p1 -> p2 -> p3 -> p1"
timed "p1 puts to p2" invoke p1 msg_put "p2 ring hello from p1"
timed "p2 gets it"    invoke p2 msg_get "p1 ring 5000"
invoke p2 msg_put "p3 ring hello from p2"
invoke p3 msg_get "p2 ring 5000"
invoke p3 msg_put "p1 ring hello from p3"
invoke p1 msg_get "* ring 5000"

step "64 MiB of state on p2, then swap it out and back in"
invoke p2 fill "big 67108864"
invoke p2 counter ""
invoke p2 file_write "notes.txt a state file survives too"
before=$("$praas" invoke --app demo --process p2 checksum --input big)
timed "swap out p2" "$praas" process swap demo p2
"$praas" process list demo
timed "swap in p2" quiet "$praas" process swapin demo p2
after=$("$praas" invoke --app demo --process p2 checksum --input big)
echo "checksum of 'big' before: $before"
echo "checksum of 'big' after:  $after"
[ "$before" = "$after" ] || { echo "demo: the state changed across the swap" >&2; exit 1; }
invoke p2 counter ""
invoke p2 file_read notes.txt

step "errors are answers, not hangs"
"$praas" invoke --app demo --process p1 no_such_function || true
"$praas" process swapin demo p1 || true
"$praas" invoke --app demo --process p1 counter

step "Python functions beside the Rust ones in one process (examples/python)"
"$praas" app create pydemo --manifest "$work/python.toml" --vcpus 1 --memory-mb 2048 >/dev/null
timed "create py1" quiet "$praas" process create pydemo py1
for _ in 1 2; do "$praas" invoke --app pydemo --process py1 py_counter; echo; done
timed "Python invoking the Rust echo" "$praas" invoke --app pydemo --process py1 py_call_echo --input "hello from python"
echo
"$praas" invoke --app pydemo --process py1 py_fail --input "fail to show the traceback" || true
# The process reports its figures every metrics interval (500 ms): wait for the report of these.
for _ in $(seq 100); do
    stats=$("$praas" process stats pydemo py1)
    grep -q '^py_fail' <<<"$stats" && break
    sleep 0.05
done
echo "$stats"

step "a Python driver script (examples/python/driver.py) through the Python client package (python/)"
target_dir="$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)"
py_venv="$target_dir/py-venv"
[ -x "$py_venv/bin/python" ] || python3 -m venv "$py_venv"
"$py_venv/bin/pip" install --quiet --disable-pip-version-check ./python
timed "the driver" "$py_venv/bin/python" examples/python/driver.py --manifest "$work/python.toml" --control "$PRAAS_CONTROL"

step "done"
"$praas" process list demo
