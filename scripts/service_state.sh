# Sourced by scripts/slurm_cluster.sh and scripts/postgres.sh: where a service keeps its state, and checks that
# a daemon's own user can write there. Needs ROOT (the checkout) and a `die` function.
#
# The state of service NAME lives in
#   - $DLEXP_SERVICES_DIR/NAME when that is set;
#   - as root: /var/lib/dlexp/CHECKOUT-HASH/NAME. The daemons run as their own users (MariaDB as `mysql`,
#     PostgreSQL as `postgres`), who cannot enter a checkout in a private folder (mode 0700, as `mktemp -d` and
#     many home folders are). HASH is of the checkout's path, so two checkouts never share a database.
#   - otherwise (the services run as you): CHECKOUT/.services/NAME (git-ignored).

state_dir() {
    if [ -n "${DLEXP_SERVICES_DIR:-}" ]; then
        echo "$DLEXP_SERVICES_DIR/$1"
    elif [ "$(id -u)" -eq 0 ]; then
        echo "/var/lib/dlexp/$(basename "$ROOT")-$(printf %s "$ROOT" | sha256sum | cut -c1-12)/$1"
    else
        echo "$ROOT/.services/$1"
    fi
}

# mkdir -p with mode 755 for every folder it creates (root's umask may be 077, which would close them to the
# daemons' users).
make_open_dir() {
    (umask 022 && mkdir -p "$1")
}

# Stop with one line unless user $1 (a daemon's) can write folder $2 ($3: who, e.g. "MariaDB"). Names the first
# folder on the way that user cannot enter.
require_writable_by() {
    local user=$1 dir=$2 who=$3 path closed=""
    [ "$(id -u)" -eq 0 ] || return 0  # not root: the daemon runs as you
    runuser -u "$user" -- test -w "$dir" && return 0
    path=$dir
    while [ "$path" != / ]; do  # the folder closest to / that the user cannot enter
        runuser -u "$user" -- test -x "$path" || closed=$path
        path=$(dirname "$path")
    done
    [ -n "$closed" ] && die "$who runs as user $user, who cannot enter $closed (mode $(stat -c %a "$closed")," \
        "owner $(stat -c %U "$closed")); set DLEXP_SERVICES_DIR to a folder $user can enter, or leave it unset"
    die "$who runs as user $user, who cannot write $dir; set DLEXP_SERVICES_DIR to a folder $user can write"
}

# The line of log file $1 that says why a daemon failed, without its time stamp: its first line that says what
# went wrong (could not ..., permission denied, address in use, error, fatal), else its last line.
log_cause() {
    [ -s "$1" ] || { echo "(its log is empty)"; return; }
    { grep -m1 -iE "could not|can't|cannot|denied|in use|\b(error|fatal|panic)\b" "$1" || tail -n 1 "$1"; } \
        | sed -E 's/^[0-9-]+ [0-9:.]+ ([A-Z]+ )?(\[[0-9]+\] )?(0 )?//'
}
