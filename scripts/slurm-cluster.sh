#!/usr/bin/env bash
# A real Slurm cluster on this machine, without systemd: munged, slurmctld and two slurmd virtual
# nodes (n1, n2; Debian's Slurm is built with MULTIPLE_SLURMD), for tests and benchmarks.
#
# Usage: scripts/slurm-cluster.sh start|stop|status [--dir DIR] [--port-base PORT] [--cpus N]
#   --dir DIR        state folder (config, munge key and socket, spool, logs, pid files);
#                    env SLURM_CLUSTER_DIR, default /tmp/praas-slurm
#   --port-base P    slurmctld listens on P, slurmd n1 on P+1, n2 on P+2;
#                    env SLURM_CLUSTER_PORT, default 16817
#   --cpus N         CPUs of each virtual node; env SLURM_CLUSTER_CPUS, default 2
#
# `start` installs the packages if they are missing (apt-get), starts the daemons, waits until both
# nodes are idle and prints `export SLURM_CONF=...` lines to eval; it refuses to start over a running
# cluster in the same folder. `stop` ends exactly the daemons this folder's pid files name (SIGTERM,
# then SIGKILL after 2 s) and is a no-op when nothing runs. `status` prints sinfo and each daemon's
# state; exit status 0 only if every daemon runs. Different --dir and --port-base never collide.
set -euo pipefail

cmd="${1:-}"
shift || true
dir="${SLURM_CLUSTER_DIR:-/tmp/praas-slurm}"
port="${SLURM_CLUSTER_PORT:-16817}"
cpus="${SLURM_CLUSTER_CPUS:-2}"
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) dir="$2"; shift 2 ;;
        --port-base) port="$2"; shift 2 ;;
        --cpus) cpus="$2"; shift 2 ;;
        *) echo "slurm-cluster.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
conf="$dir/slurm.conf"
daemons=(munged slurmctld slurmd-n1 slurmd-n2)

log() { echo "slurm-cluster: $*" >&2; }

install_packages() {
    local missing=()
    command -v munged >/dev/null || missing+=(munge)
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v srun >/dev/null || missing+=(slurm-client)
    [ ${#missing[@]} -eq 0 ] && return
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 || {
        "${sudo[@]}" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    }
}

# The pid recorded for a daemon, if that process still runs.
running_pid() {
    local file="$dir/run/$1.pid" pid
    [ -s "$file" ] || return 1
    pid="$(cat "$file")"
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

write_config() {
    local memory
    memory=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)
    mkdir -p "$dir/run" "$dir/log" "$dir/spool/ctld" "$dir/spool/n1" "$dir/spool/n2" "$dir/munge"
    chmod 711 "$dir/munge"
    cat >"$conf" <<EOF
ClusterName=praas
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$dir/spool/ctld
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/run/slurmctld.real.pid
SlurmdPidFile=$dir/run/slurmd-%n.real.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
MpiDefault=none
ReturnToService=2
KillWait=2
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
NodeName=n1 NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((port + 1)) CPUs=$cpus RealMemory=$memory State=UNKNOWN
NodeName=n2 NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((port + 2)) CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES MaxTime=INFINITE State=UP
EOF
    if [ ! -s "$dir/munge/munge.key" ]; then
        head -c 1024 /dev/urandom >"$dir/munge/munge.key"
        chmod 400 "$dir/munge/munge.key"
    fi
}

# Starts a daemon in the background and records its pid.
launch() {
    local name="$1"
    shift
    "$@" >"$dir/log/$name.out" 2>&1 &
    echo $! >"$dir/run/$name.pid"
}

start() {
    install_packages
    for d in "${daemons[@]}"; do
        if running_pid "$d" >/dev/null; then
            log "$d already runs in $dir: stop it first"
            exit 1
        fi
    done
    local p
    for p in "$port" $((port + 1)) $((port + 2)); do
        if timeout 1 bash -c "</dev/tcp/127.0.0.1/$p" 2>/dev/null; then
            log "port $p is taken: choose another --port-base"
            exit 1
        fi
    done
    write_config
    local started
    started=$(date +%s%N)
    launch munged munged -F --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
        --pid-file="$dir/run/munged.real.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/seed" --force
    for _ in $(seq 50); do [ -S "$dir/munge/munge.socket" ] && break; sleep 0.1; done
    chmod 777 "$dir/munge/munge.socket" 2>/dev/null || true
    export SLURM_CONF="$conf"
    launch slurmctld slurmctld -D -i -f "$conf"
    launch slurmd-n1 slurmd -D -N n1 -f "$conf"
    launch slurmd-n2 slurmd -D -N n2 -f "$conf"
    for _ in $(seq 150); do
        local idle
        idle=$(timeout 2 sinfo -h -N -o '%N %t' 2>/dev/null | awk '$2 == "idle"' | wc -l || true)
        if [ "${idle:-0}" -ge 2 ]; then
            log "2 nodes idle after $((($(date +%s%N) - started) / 1000000)) ms ($dir, ports $port-$((port + 2)))"
            echo "export SLURM_CONF=$conf"
            return 0
        fi
        for d in "${daemons[@]}"; do
            if ! running_pid "$d" >/dev/null; then
                log "$d died; its log:"
                tail -n 20 "$dir/log/$d.out" "$dir/log/"*"${d#slurmd-}"*.log 2>/dev/null >&2 || true
                stop
                exit 1
            fi
        done
        sleep 0.1
    done
    log "nodes not idle after 15 s"
    stop
    exit 1
}

stop() {
    local pids=() d pid
    # Jobs of this cluster first (their slurmstepd processes end with them), then the daemons.
    if running_pid slurmctld >/dev/null; then
        SLURM_CONF="$conf" timeout 5 scancel --full --quiet --user "$(id -un)" 2>/dev/null || true
        for _ in $(seq 30); do
            [ -z "$(SLURM_CONF="$conf" timeout 2 squeue -h -o %i 2>/dev/null || true)" ] && break
            sleep 0.1
        done
    fi
    # Nodes first, the controller next, munge last.
    for d in slurmd-n1 slurmd-n2 slurmctld munged; do
        if pid=$(running_pid "$d"); then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
    done
    # 2 s: a slurmd that ignores SIGTERM does so for about 30 s, waiting longer gains nothing.
    for _ in $(seq 20); do
        local alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ $alive -eq 0 ] && break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid ignored SIGTERM: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    for pid in "${pids[@]}"; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    done
    rm -f "$dir/run/"*.pid
    [ ${#pids[@]} -gt 0 ] && log "stopped ${#pids[@]} daemons of $dir"
    return 0
}

status() {
    local ok=0 d pid
    for d in "${daemons[@]}"; do
        if pid=$(running_pid "$d"); then echo "$d: running (pid $pid)"; else echo "$d: stopped"; ok=1; fi
    done
    if [ $ok -eq 0 ]; then SLURM_CONF="$conf" timeout 5 sinfo -N || ok=1; fi
    return $ok
}

case "$cmd" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status [--dir DIR] [--port-base PORT] [--cpus N]" >&2; exit 2 ;;
esac
