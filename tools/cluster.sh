#!/usr/bin/env bash
# A local Ocean Liner cluster on loopback, for trying things out and for tests.
#
#   tools/cluster.sh start N [DIR]   start N nodes (peers on 127.0.0.1:8000+K, clients on 9000+K)
#   tools/cluster.sh status [DIR]    one line per node: id, client address, role, term, commit index
#   tools/cluster.sh kill K [DIR]    SIGKILL node K
#   tools/cluster.sh restart K [DIR] start node K again with its data
#   tools/cluster.sh stop [DIR]      SIGTERM every node and wait for a clean exit
#   tools/cluster.sh add [DIR]       start the next node id with --join and add it as a learner
#   tools/cluster.sh promote K [DIR] make learner K a voter (once it has caught up)
#   tools/cluster.sh remove K [DIR]  remove node K from the cluster, then stop it
#
# DIR defaults to ./cluster. Environment: OCEAN_LINER (the binary; default: the release
# build of this checkout, built if missing), PEER_PORT_BASE (8000), CLIENT_PORT_BASE (9000),
# OL_ARGS (extra server flags, e.g. "--read-mode index").
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
bin=${OCEAN_LINER:-$here/target/release/ocean-liner}
peer_base=${PEER_PORT_BASE:-8000}
client_base=${CLIENT_PORT_BASE:-9000}

die() { echo "cluster.sh: $*" >&2; exit 2; }

ensure_bin() {
    if [ ! -x "$bin" ]; then
        [ -z "${OCEAN_LINER:-}" ] || die "OCEAN_LINER=$bin is not executable"
        (cd "$here" && cargo build --release --quiet) || die "cargo build failed"
    fi
}

node_count() { cat "$1/nodes" 2>/dev/null || die "no cluster in $1 (run: $0 start N $1)"; }

# The node ids this script runs in DIR: the first N, then those added, less those removed.
members_of() {
    if [ -f "$1/members" ]; then cat "$1/members"; else seq 0 $(($(node_count "$1") - 1)); fi
}

# A peer address of some running member, for `ocean-liner member`.
any_peer() {
    local k
    for k in $(members_of "$1"); do
        if alive "$1" "$k"; then echo "127.0.0.1:$((peer_base + k))"; return; fi
    done
    die "no node of $1 is running"
}

peers_of() {
    local n=$1 list="" k
    for ((k = 0; k < n; k++)); do list+="${list:+,}127.0.0.1:$((peer_base + k))"; done
    echo "$list"
}

pid_of() { cat "$1/node-$2.pid" 2>/dev/null || true; }

alive() { local pid; pid=$(pid_of "$1" "$2"); [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }

start_node() {
    local dir=$1 k=$2 n join=()
    n=$(node_count "$dir")
    members_of "$dir" | grep -qx "$k" || die "node $k is not a member of the cluster in $dir"
    # A node just killed may take a moment to be reaped.
    for _ in $(seq 1 50); do alive "$dir" "$k" || break; sleep 0.05; done
    alive "$dir" "$k" && die "node $k is already running (pid $(pid_of "$dir" "$k"))"
    if ((k >= n)); then
        # Added after the start: its own entry in --peers, the cluster's id, and no say
        # until the cluster adds it (its data, once it has some, knows the members).
        join=(--join --cluster-id "$(cat "$dir/cluster-id")")
        n=$((k + 1))
    fi
    # shellcheck disable=SC2086
    "$bin" --no-pin --cores 2 --peers "$(peers_of "$n")" --node-id "$k" "${join[@]}" \
        --client-port $((client_base + k)) --data-dir "$dir/node-$k" ${OL_ARGS:-} \
        >>"$dir/node-$k.log" 2>&1 &
    echo $! >"$dir/node-$k.pid"
}

cmd=${1:-}
case "$cmd" in
start)
    n=${2:-}; dir=${3:-./cluster}
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "usage: $0 start N [DIR]"
    ensure_bin
    mkdir -p "$dir"
    echo "$n" >"$dir/nodes"
    seq 0 $((n - 1)) >"$dir/members"
    for ((k = 0; k < n; k++)); do start_node "$dir" "$k"; done
    # Wait (bounded) until some node reports itself leader.
    for _ in $(seq 1 100); do
        now=$("$0" status "$dir" 2>/dev/null || true)
        if grep -q " leader " <<<"$now"; then echo "$now"; exit 0; fi
        sleep 0.1
    done
    "$0" status "$dir"
    die "no leader after 10 s; see $dir/node-*.log"
    ;;
status)
    dir=${2:-./cluster}; ensure_bin
    for k in $(members_of "$dir"); do
        addr=127.0.0.1:$((client_base + k))
        if stats=$("$bin" stats --server "$addr" --timeout 0.5 2>/dev/null); then
            role=$(sed -n 's/^role=//p' <<<"$stats")
            term=$(sed -n 's/^term=//p' <<<"$stats")
            commit=$(sed -n 's/^commit_index=//p' <<<"$stats")
            echo "node $k $addr $role term $term commit $commit"
        else
            echo "node $k $addr down"
        fi
    done
    ;;
kill)
    k=${2:-}; dir=${3:-./cluster}
    [[ "$k" =~ ^[0-9]+$ ]] || die "usage: $0 kill K [DIR]"
    pid=$(pid_of "$dir" "$k"); [ -n "$pid" ] || die "node $k has no pid file"
    kill -9 "$pid" 2>/dev/null || true
    ;;
restart)
    k=${2:-}; dir=${3:-./cluster}
    [[ "$k" =~ ^[0-9]+$ ]] || die "usage: $0 restart K [DIR]"
    ensure_bin
    if alive "$dir" "$k"; then kill -9 "$(pid_of "$dir" "$k")"; sleep 0.2; fi
    start_node "$dir" "$k"
    ;;
add)
    dir=${2:-./cluster}; ensure_bin
    peer=$(any_peer "$dir")
    list=$("$bin" member list --peer "$peer") || die "cannot list the members at $peer"
    sed -n 's/^cluster id \([0-9]*\),.*/\1/p' <<<"$list" >"$dir/cluster-id"
    k=$(( $(members_of "$dir" | sort -n | tail -1) + 1 ))
    echo "$k" >>"$dir/members"
    start_node "$dir" "$k"
    "$bin" member add "$k" "127.0.0.1:$((peer_base + k))" "127.0.0.1:$((client_base + k))" \
        --peer "$peer" || die "adding node $k failed (it runs: stop it with $0 remove $k $dir)"
    ;;
promote)
    k=${2:-}; dir=${3:-./cluster}
    [[ "$k" =~ ^[0-9]+$ ]] || die "usage: $0 promote K [DIR]"
    ensure_bin
    "$bin" member promote "$k" --peer "$(any_peer "$dir")"
    ;;
remove)
    k=${2:-}; dir=${3:-./cluster}
    [[ "$k" =~ ^[0-9]+$ ]] || die "usage: $0 remove K [DIR]"
    ensure_bin
    "$bin" member remove "$k" --peer "$(any_peer "$dir")"
    pid=$(pid_of "$dir" "$k")
    if [ -n "$pid" ]; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do alive "$dir" "$k" || break; sleep 0.1; done
        alive "$dir" "$k" && kill -9 "$pid" 2>/dev/null || true
        rm -f "$dir/node-$k.pid"
    fi
    members_of "$dir" | grep -vx "$k" >"$dir/members.new" || true
    mv "$dir/members.new" "$dir/members"
    ;;
stop)
    dir=${2:-./cluster}
    for k in $(members_of "$dir"); do
        pid=$(pid_of "$dir" "$k"); [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true
    done
    for k in $(members_of "$dir"); do
        for _ in $(seq 1 100); do alive "$dir" "$k" || break; sleep 0.1; done
        alive "$dir" "$k" && kill -9 "$(pid_of "$dir" "$k")" 2>/dev/null || true
        rm -f "$dir/node-$k.pid"
    done
    ;;
*)
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
