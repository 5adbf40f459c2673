#!/usr/bin/env bash
# Measures failover: kills the leader of a local 3-node cluster with SIGKILL, ROUNDS times,
# and reports how long until another node reports itself leader (median and max, ms).
# Each killed node is restarted and allowed to catch up before the next round.
#
#   tools/failover.sh [ROUNDS] [DIR]      (defaults: 20, a fresh temporary directory)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-20}
dir=${2:-$(mktemp -d /var/tmp/ol-failover.XXXXXX)}
bin=${OCEAN_LINER:-$here/target/release/ocean-liner}
cluster="$here/tools/cluster.sh"
[ -x "$bin" ] || (cd "$here" && cargo build --release --quiet)
trap '"$cluster" stop "$dir" >/dev/null 2>&1 || true' EXIT

# The node id that reports itself leader, asking only the nodes in "$@" (a dead node would
# make each poll wait for its timeout).
leader_among() {
    local k
    for k in "$@"; do
        if "$bin" stats --server "127.0.0.1:$((9000 + k))" --timeout 0.05 2>/dev/null | grep -q '^role=leader$'; then
            echo "$k"; return
        fi
    done
}
leader_of() { leader_among 0 1 2; }

"$cluster" start 3 "$dir" >/dev/null
# A light write load keeps entries flowing through every failover.
"$bin" bench --server 127.0.0.1:9000,127.0.0.1:9001,127.0.0.1:9002 --workload set \
    --keys 10000 --concurrency 64 --duration $((rounds * 4 + 10)) --warmup 0 >/dev/null 2>&1 &
load=$!
times=()
for ((r = 1; r <= rounds; r++)); do
    old=$(leader_of)
    [ -n "$old" ] || { sleep 0.2; r=$((r - 1)); continue; }
    start=$(date +%s%N)
    "$cluster" kill "$old" "$dir"
    others=()
    for k in 0 1 2; do [ "$k" = "$old" ] || others+=("$k"); done
    while true; do
        new=$(leader_among "${others[@]}")
        [ -n "$new" ] && break
    done
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    times+=("$ms")
    echo "round $r: killed leader $old, node $new leads after $ms ms"
    "$cluster" restart "$old" "$dir"
    sleep 2
done
kill "$load" 2>/dev/null || true
sorted=$(printf '%s\n' "${times[@]}" | sort -n)
median=$(echo "$sorted" | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }')
max=$(echo "$sorted" | tail -n 1)
echo "failover over $rounds leader kills: median ${median} ms, max ${max} ms"
