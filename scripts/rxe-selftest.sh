#!/usr/bin/env bash
# Self-test of the SoftRoCE VM harness (scripts/rxe-vm.sh): boots the VM,
# checks that rxe0's port is ACTIVE and runs a perftest round trip over it
# (ib_send_lat, then ib_write_lat: server in the background, client to the
# guest's address, both inside the same VM).  Prints perftest's output and
# exits non-zero if any check fails.
#
# Usage: scripts/rxe-selftest.sh [--timeout SECS]
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR

timeout=300
case "${1:-}" in
    --timeout) timeout="${2:?--timeout needs a value}" ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) echo "rxe-selftest: unknown argument: $1" >&2; exit 2 ;;
esac

# Runs in the guest under busybox sh.  Each check prints one
# "check NAME: ok|FAILED" line; the last line sums them up.
read -r -d '' GUEST_SCRIPT <<'EOF' || true
passed=0
failed=0
result() {
    if [ "$2" -eq 0 ]; then
        echo "check $1: ok"; passed=$((passed + 1))
    else
        echo "check $1: FAILED (status $2)"; failed=$((failed + 1))
    fi
}

echo "== ibv_devinfo -d $PRAAS_RDMA_DEVICE"
ibv_devinfo -d "$PRAAS_RDMA_DEVICE" >/tmp/devinfo 2>&1
rc=$?
cat /tmp/devinfo
[ $rc -eq 0 ] && ! grep -q 'state:[[:space:]]*PORT_ACTIVE' /tmp/devinfo && rc=1
result "ibv_devinfo port PORT_ACTIVE" $rc

for test in ib_send_lat ib_write_lat; do
    echo "== $test -d $PRAAS_RDMA_DEVICE -s 8 -n 1000 (server and client to $PRAAS_RDMA_ADDR)"
    $test -d "$PRAAS_RDMA_DEVICE" -s 8 -n 1000 >/tmp/$test.server 2>&1 &
    server=$!
    sleep 1
    $test -d "$PRAAS_RDMA_DEVICE" -s 8 -n 1000 "$PRAAS_RDMA_ADDR"
    client_rc=$?
    wait $server
    server_rc=$?
    echo "-- $test server output:"
    cat /tmp/$test.server
    [ $client_rc -ne 0 ] && rc=$client_rc || rc=$server_rc
    result "$test" $rc
done

echo "rxe-selftest: $passed passed, $failed failed"
[ $failed -eq 0 ]
EOF

start=$(date +%s.%N)
status=0
"$SCRIPT_DIR/rxe-vm.sh" --timeout "$timeout" -- "$GUEST_SCRIPT" || status=$?
elapsed="$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
if ((status == 0)); then
    echo "rxe-selftest: PASSED in ${elapsed} s" >&2
else
    echo "rxe-selftest: FAILED (exit status $status) after ${elapsed} s" >&2
fi
exit "$status"
