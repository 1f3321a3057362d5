#!/usr/bin/env bash
# A throwaway PostgreSQL for the tracking server, to try (and test) `python -m dlexp.server` on a real database.
#
#   scripts/postgres.sh start   # initdb (first time), start on 127.0.0.1:$DLEXP_POSTGRES_PORT, print the store URI
#   scripts/postgres.sh uri     # print the store URI: postgresql://dlexp:PASSWORD@127.0.0.1:PORT/dlexp
#   scripts/postgres.sh stop    # stop the server by its process id
#   scripts/postgres.sh dir     # print the folder holding its database cluster, password and log
#
# The database cluster lives in one folder per checkout (scripts/service_state.sh): as root
# /var/lib/dlexp/CHECKOUT-HASH/postgres, owned by `postgres` (PostgreSQL refuses root, and `postgres` cannot
# enter a checkout in a private folder); as another user .services/postgres in the checkout; or
# $DLEXP_SERVICES_DIR/postgres. A random password for the role `dlexp` is kept in that folder. It listens on
# 127.0.0.1 only. A start that fails says why in its last line.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PORT="${DLEXP_POSTGRES_PORT:-6821}"

say() { echo "postgres: $*" >&2; }
die() { say "error: $*"; exit 1; }
# shellcheck source=scripts/service_state.sh
. "$ROOT/scripts/service_state.sh"
STATE="$(state_dir postgres)"

# Debian keeps initdb and pg_ctl in PostgreSQL's versioned folder, not on PATH.
bin_dir() {
    if command -v pg_ctl >/dev/null; then dirname "$(readlink -f "$(command -v pg_ctl)")"; return; fi
    find /usr/lib/postgresql -maxdepth 3 -name pg_ctl 2>/dev/null | sort -V | tail -1 | xargs -r dirname
}

install_missing() {
    [ -n "$(bin_dir)" ] && return
    [ "$(id -u)" -eq 0 ] || die "PostgreSQL (initdb, pg_ctl) is not installed; install it as root (apt-get install postgresql)"
    say "installing postgresql"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
}

as_owner() {  # run a command as the cluster's (non-root) owner, from / (it may not enter the current folder)
    if [ "$(id -u)" -eq 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

start() {
    local started=$SECONDS bin
    install_missing
    bin=$(bin_dir)
    make_open_dir "$STATE"
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$STATE"; fi
    chmod 700 "$STATE"
    require_writable_by postgres "$STATE" PostgreSQL
    if [ ! -s "$STATE/data/PG_VERSION" ]; then
        as_owner sh -c "umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >'$STATE/password'"
        as_owner "$bin/initdb" -D "$STATE/data" -U dlexp --pwfile="$STATE/password" -E UTF8 \
            --auth-local=scram-sha-256 --auth-host=scram-sha-256 >"$STATE/initdb.log" 2>&1 \
            || die "initdb failed: $(log_cause "$STATE/initdb.log") (log: $STATE/initdb.log)"
    fi
    if ! as_owner "$bin/pg_ctl" -D "$STATE/data" status >/dev/null 2>&1; then
        as_owner "$bin/pg_ctl" -D "$STATE/data" -l "$STATE/postgres.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $PORT -k '$STATE'" start >/dev/null \
            || die "PostgreSQL did not start: $(log_cause "$STATE/postgres.log") (log: $STATE/postgres.log)"
    fi
    local password
    password=$(cat "$STATE/password")
    PGPASSWORD="$password" "$bin/psql" -h 127.0.0.1 -p "$PORT" -U dlexp -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'dlexp'" | grep -q 1 \
        || PGPASSWORD="$password" "$bin/createdb" -h 127.0.0.1 -p "$PORT" -U dlexp dlexp
    echo "postgresql://dlexp:$password@127.0.0.1:$PORT/dlexp" >"$STATE/uri"
    say "PostgreSQL up on 127.0.0.1:$PORT in $((SECONDS - started)) s; store URI: $0 uri"
    cat "$STATE/uri"
}

stop() {
    local pid_file="$STATE/data/postmaster.pid" pid deadline=$((SECONDS + 30))
    if [ ! -s "$pid_file" ]; then say "not running"; return; fi
    pid=$(head -1 "$pid_file")
    kill -INT "$pid" 2>/dev/null || true  # fast shutdown: roll back open transactions, stop
    while kill -0 "$pid" 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || { kill -9 "$pid" 2>/dev/null || true; break; }
        sleep 0.2
    done
    say "stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    uri) cat "$STATE/uri" 2>/dev/null || die "not started: $0 start" ;;
    dir) echo "$STATE" ;;
    *) echo "usage: $0 start|stop|uri|dir" >&2; exit 2 ;;
esac
