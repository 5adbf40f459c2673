#!/usr/bin/env bash
# How a follower that lost its data catches up: a 3-node cluster on loopback takes SECONDS
# of overwrite load on KEYS keys, then one follower is killed, its data directory wiped,
# and it is started again; the script times how long until it has applied everything the
# leader committed, and reports what it received against the live data and the history.
#
#   tools/catchup.sh                 defaults: KEYS=50000 SECONDS_LOAD=25 VALUE=100
#   KEYS=1000000 SECONDS_LOAD=60 tools/catchup.sh
#
# Environment: OCEAN_LINER (the servers' binary, as for tools/cluster.sh; the load tool
# and `stats` are this tree's build), OL_ARGS (server flags; default small segments and retention so the
# leader's log is compacted well within the run), DIR (default a temporary directory),
# PEER_PORT_BASE (8600), CLIENT_PORT_BASE (9600).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
bin=$here/target/release/ocean-liner
[ -x "$bin" ] || (cd "$here" && cargo build --release --quiet)
keys=${KEYS:-50000}
seconds=${SECONDS_LOAD:-25}
value=${VALUE:-100}
dir=${DIR:-$(mktemp -d)}
export PEER_PORT_BASE=${PEER_PORT_BASE:-8600} CLIENT_PORT_BASE=${CLIENT_PORT_BASE:-9600}
export OL_ARGS=${OL_ARGS:---segment-mib 8 --raft-log-retain-mib 32 --checkpoint-interval-s 5}
cluster() { "$here/tools/cluster.sh" "$@"; }
addr() { echo "127.0.0.1:$((CLIENT_PORT_BASE + $1))"; }
stat() { "$bin" stats --server "$(addr "$1")" --timeout 1 2>/dev/null | sed -n "s/^$2=//p"; }
trap 'cluster stop "$dir" >/dev/null 2>&1 || true' EXIT

cluster start 3 "$dir" >/dev/null
servers="$(addr 0),$(addr 1),$(addr 2)"
echo "load: $seconds s of SETs over $keys keys of $value B"
"$bin" bench --server "$servers" --workload set --keys "$keys" --value-size "$value" \
    --duration "$seconds" --warmup 0 --concurrency 8192 --json >"$dir/bench.json" 2>/dev/null
sleep 6 # a checkpoint or two: the leader deletes what it no longer needs
leader=""
for k in 0 1 2; do [ "$(stat $k role)" = leader ] && leader=$k; done
[ -n "$leader" ] || { echo "no leader" >&2; exit 1; }
follower=$(((leader + 1) % 3))
applied=$(stat "$leader" commands_applied)
echo "leader: node $leader, $(stat "$leader" keys) keys, $applied commands applied," \
    "live_bytes $(stat "$leader" live_bytes), disk_bytes $(stat "$leader" disk_bytes)," \
    "log deleted $(stat "$leader" bytes_deleted) B, first_log_index $(stat "$leader" first_log_index)"
echo "history: $applied SETs of $value B values ($((applied * value / 1048576)) MiB of values)"
cluster kill "$follower" "$dir"
sleep 0.3
rm -rf "$dir/node-$follower"
start=$(date +%s.%N)
cluster restart "$follower" "$dir"
target=$(stat "$leader" commit_index)
while :; do
    a=$(stat "$follower" applied_index || true)
    if [ -n "$a" ] && [ "$a" -ge "$target" ]; then break; fi
    sleep 0.05
done
end=$(date +%s.%N)
echo "wiped follower node $follower caught up to index $target in $(echo "$end - $start" | bc) s" \
    "(including process start-up)"
echo "follower: snapshots_received $(stat "$follower" snapshots_received)," \
    "snapshot_bytes_received $(stat "$follower" snapshot_bytes_received)," \
    "keys $(stat "$follower" keys), disk_bytes $(stat "$follower" disk_bytes)"
du -sh "$dir"/node-* | sed 's/^/du: /'
