#!/usr/bin/env bash
# Runs every test of praas, failing on the first failure:
#   formatting, no module cycle in any crate, clippy with warnings denied, all unit, integration
#   and property tests of the workspace, the Python client's pytest suite, a short run of every
#   fuzz target, and the SoftRoCE harness self-test (perftest over
#   rxe0 inside the QEMU VM of scripts/rxe-vm.sh).
#
# Usage: scripts/test.sh            (FUZZ_SECONDS=N sets each fuzz target's run, default 15)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-15}"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

step() { printf '\n==> %s\n' "$*" >&2; }

step "setup"
scripts/setup.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "module cycles (none in any crate; the check's self-test makes one on purpose)"
python3 scripts/check-module-cycles.py --self-test
python3 scripts/check-module-cycles.py

step "cargo clippy (warnings denied)"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "cargo test"
cargo test --workspace 2>&1 | tee "$log"

step "the Python client (python/): built with maturin into a virtualenv, its pytest suite against real processes and a control plane"
target_dir="$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)"
py_venv="$target_dir/py-venv"
[ -x "$py_venv/bin/python" ] || python3 -m venv "$py_venv"
"$py_venv/bin/pip" install --quiet --disable-pip-version-check pytest ./python
"$py_venv/bin/python" -m pytest python/tests -q 2>&1 | tee -a "$log"

step "fuzz targets (${FUZZ_SECONDS}s each)"
fuzz_targets=$(cd dataplane && cargo fuzz list)
# The fuzz builds go below the workspace's target folder, wherever CARGO_TARGET_DIR puts it.
fuzz_target_dir="$target_dir/fuzz"
for target in $fuzz_targets; do
    (cd dataplane && cargo fuzz run --sanitizer none --target-dir "$fuzz_target_dir" "$target" -- \
        -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 2>&1 | tail -n 3)
    echo "fuzz $target: no crash in ${FUZZ_SECONDS}s"
done

step "RDMA transport: clippy and tests on SoftRoCE (never skipped)"
cargo clippy -p praas-dataplane --features rdma --all-targets --quiet -- -D warnings
scripts/test-rdma.sh | tee -a "$log"

step "RDMA on SoftRoCE"
scripts/rxe-selftest.sh | tee -a "$log"

passed=$(grep -Eo '[0-9]+ passed' "$log" | awk '{s += $1} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s += $1} END {print s + 0}')
echo
echo "praas: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
