#!/usr/bin/env bash
# Builds the release benchmark and the example functions it serves, then runs
# `praas-bench invoke` with this script's arguments, e.g.
#   scripts/bench.sh --json --sizes 8,1024
#   scripts/bench.sh --plot figures      # also SVG figures in ./figures (docs/observability.md)
# Output contract: docs/benchmarks.md (a table by default, JSON lines with --json).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cargo="${CARGO:-cargo}"
manifest="$root/Cargo.toml"

# Cargo's output goes to stderr, so that stdout carries only the results.
"$cargo" build --release --manifest-path "$manifest" -p praas-bench -p praas-example-functions >&2
exec "$cargo" run --quiet --release --manifest-path "$manifest" -p praas-bench -- invoke "$@"
