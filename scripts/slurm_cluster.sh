#!/usr/bin/env bash
# A throwaway one-node SLURM cluster on this machine, to try (and test) dlexp's cluster sweeps.
#
#   scripts/slurm_cluster.sh start    # install what is missing, write the configs, start the daemons
#   scripts/slurm_cluster.sh status   # sinfo
#   scripts/slurm_cluster.sh stop     # stop the daemons by their process ids, remove /etc/slurm/slurm.conf
#   scripts/slurm_cluster.sh dir      # print the folder holding its configs, logs and databases
#
# Debian's SLURM (22.05) without systemd or cgroups: munge (authentication), MariaDB + slurmdbd (accounting:
# submitit polls `sacct`, and without it a job that dies silently is never reported), slurmctld and one
# slurmd named `localhost` (so the machine's hostname does not matter), partitions `debug` (the default) and
# `urgent`, whose jobs preempt (requeue) those of `debug`.
# Everything the daemons write goes into one folder per checkout (`scripts/slurm_cluster.sh dir` prints it):
# /var/lib/dlexp/CHECKOUT-HASH/slurm, or $DLEXP_SERVICES_DIR/slurm (scripts/service_state.sh: MariaDB runs as
# `mysql`, who cannot enter a checkout in a private folder). Client commands (sbatch, sacct, scancel) read
# /etc/slurm/slurm.conf, which becomes a link to our config while the cluster runs; a slurm.conf that is not
# ours is never touched. Needs root (daemons, apt-get). Not for a real cluster: SlurmUser=root, one node, no
# cgroups. A start that fails says why in its last line.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
say() { echo "slurm_cluster: $*" >&2; }
die() { say "error: $*"; exit 1; }
# shellcheck source=scripts/service_state.sh
. "$ROOT/scripts/service_state.sh"
STATE="$(state_dir slurm)"
ETC_CONF=/etc/slurm/slurm.conf
MARIADB_PORT="${DLEXP_MARIADB_PORT:-6820}"
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)

install_missing() {
    local missing=()
    for package in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return
    [ "$(id -u)" -eq 0 ] || die "missing packages ${missing[*]}; install them as root"
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# True while the process whose id is in file $1 is alive.
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Wait up to $2 seconds for command $1 to succeed.
wait_for() {
    local deadline=$((SECONDS + $2))
    until eval "$1" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.5
    done
}

start_munge() {
    mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
    alive /run/munge/munged.pid && return
    [ -s /etc/munge/munge.key ] || runuser -u munge -- /usr/sbin/mungekey --create
    runuser -u munge -- /usr/sbin/munged
    touch "$STATE/munged.ours"  # munged serves the whole machine: stop stops it only if this checkout started it
    wait_for "munge -n | unmunge" 10 || die "munged did not start"
}

start_mariadb() {
    local data="$STATE/mariadb" run="$STATE/mariadb-run"  # both written by MariaDB's own user
    make_open_dir "$run" && chown mysql:mysql "$run"
    require_writable_by mysql "$run" MariaDB
    if [ ! -d "$data/mysql" ]; then
        make_open_dir "$data" && chown mysql:mysql "$data"
        mariadb-install-db --user=mysql --datadir="$data" --auth-root-authentication-method=socket \
            --skip-test-db >"$STATE/mariadb-install.log" 2>&1 \
            || die "mariadb-install-db failed: $(log_cause "$STATE/mariadb-install.log") (log: $STATE/mariadb-install.log)"
    fi
    alive "$run/mariadb.pid" || {
        mariadbd --no-defaults --user=mysql --datadir="$data" --socket="$run/mariadb.sock" \
            --port="$MARIADB_PORT" --bind-address=127.0.0.1 --pid-file="$run/mariadb.pid" \
            --log-error="$run/mariadb.log" --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &
        disown
    }
    wait_for "mariadb --socket='$run/mariadb.sock' -u root -e 'select 1'" 60 \
        || die "MariaDB did not start: $(log_cause "$run/mariadb.log") (log: $run/mariadb.log)"
    mariadb --socket="$run/mariadb.sock" -u root -e "
        CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$(cat "$STATE/db_password")';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
}

write_configs() {
    make_open_dir "$STATE/ctld" && make_open_dir "$STATE/spool"
    [ -s "$STATE/db_password" ] || (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$STATE/db_password")
    local cpus memory
    cpus=$(nproc)
    memory=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    cat >"$STATE/slurm.conf" <<EOF
# Written by scripts/slurm_cluster.sh: a one-node cluster on this machine.
ClusterName=dlexp
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
KillWait=30
# Preemption as clusters with a "scavenger" partition have it: a job of partition urgent (a higher PriorityTier)
# preempts those of debug, which are requeued; SLURM sends their --signal (submitit's USR2) at once and gives
# them GraceTime seconds to checkpoint before it stops them.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=60
PartitionName=urgent Nodes=localhost MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
EOF
    (umask 077 && cat >"$STATE/slurmdbd.conf" <<EOF
# Written by scripts/slurm_cluster.sh (slurmdbd insists on mode 600).
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MARIADB_PORT
StorageUser=slurm
StoragePass=$(cat "$STATE/db_password")
StorageLoc=slurm_acct_db
EOF
    )
    chmod 600 "$STATE/slurmdbd.conf"
    if [ -e "$ETC_CONF" ] && [ "$(readlink "$ETC_CONF")" != "$STATE/slurm.conf" ]; then
        die "$ETC_CONF exists and is not ours: this machine already has a SLURM cluster"
    fi
    mkdir -p /etc/slurm && ln -sfn "$STATE/slurm.conf" "$ETC_CONF"
}

start() {
    local started=$SECONDS
    install_missing
    [ "$(id -u)" -eq 0 ] || die "the daemons need root"
    make_open_dir "$STATE"
    write_configs
    start_munge
    start_mariadb
    export SLURM_CONF="$STATE/slurm.conf"  # the daemons find slurmdbd.conf beside it
    alive "$STATE/slurmdbd.pid" || slurmdbd
    wait_for "sacctmgr -n list cluster" 30 \
        || die "slurmdbd did not start: $(log_cause "$STATE/slurmdbd.log") (log: $STATE/slurmdbd.log)"
    sacctmgr -i add cluster dlexp >/dev/null 2>&1 || true
    alive "$STATE/slurmctld.pid" || slurmctld
    alive "$STATE/slurmd.pid" || slurmd -N localhost
    wait_for "sinfo -h -N -o %T | grep -qx idle" 60 || die "the node did not become idle: $(sinfo -N 2>&1)"
    say "one-node cluster up in $((SECONDS - started)) s (partitions debug and urgent); stop it with $0 stop"
}

stopped=0
stop_pid_file() {  # TERM the daemon in pid file $1, then KILL it after 10 s
    alive "$1" || { rm -f "$1"; return 0; }
    stopped=$((stopped + 1))
    local pid deadline=$((SECONDS + 10))
    pid=$(cat "$1")
    kill "$pid"
    while kill -0 "$pid" 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || { kill -9 "$pid" 2>/dev/null || true; break; }
        sleep 0.2
    done
    rm -f "$1"
}

stop() {
    for daemon in slurmd slurmctld slurmdbd; do
        stop_pid_file "$STATE/$daemon.pid"
    done
    stop_pid_file "$STATE/mariadb-run/mariadb.pid"
    if [ -e "$STATE/munged.ours" ]; then
        stop_pid_file /run/munge/munged.pid
        rm -f "$STATE/munged.ours"
    fi
    if [ "$(readlink "$ETC_CONF" 2>/dev/null)" = "$STATE/slurm.conf" ]; then rm -f "$ETC_CONF"; fi
    if [ "$stopped" -gt 0 ]; then say "stopped"; else say "not running (state: $STATE)"; fi
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) sinfo ;;
    dir) echo "$STATE" ;;
    *) echo "usage: $0 start|stop|status|dir" >&2; exit 2 ;;
esac
