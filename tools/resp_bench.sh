#!/usr/bin/env bash
# redis-benchmark against Ocean Liner's RESP door and against Redis (appendfsync always,
# and no persistence), one server at a time, in one run: SET and GET, 100-byte values,
# 50 clients, pipeline 1 and 16. Prints a Markdown table of requests per second and p50,
# and each Ocean Liner figure as a ratio of Redis's.
#
#   tools/resp_bench.sh     (env: REQUESTS=200000 CLIENTS=50 PORT=6390 DATA=/var/tmp/ol-resp-bench
#                            OL_FLAGS="--cores 2" OCEAN_LINER=path/to/binary, not rebuilt)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${OCEAN_LINER:-$here/target/release/ocean-liner}
requests=${REQUESTS:-200000}
clients=${CLIENTS:-50}
port=${PORT:-6390}
data=${DATA:-/var/tmp/ol-resp-bench}
[ -n "${OCEAN_LINER:-}" ] || (cd "$here" && cargo build --release --quiet)
command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null || {
    echo "needs redis-server and redis-benchmark (apt-get install redis-server redis-tools)" >&2
    exit 1
}
rm -rf "$data" && mkdir -p "$data"
results=$data/results.csv
: >"$results"

wait_up() {
    for _ in $(seq 100); do
        redis-cli -p "$port" SET __up 1 2>/dev/null | grep -q OK && return 0
        sleep 0.1
    done
    echo "server on $port did not come up" >&2
    exit 1
}

bench() {
    local system=$1
    for p in 1 16; do
        redis-benchmark -p "$port" -t set,get -n "$requests" -c "$clients" -P "$p" -d 100 \
            -r 100000 --csv 2>/dev/null | tail -n +2 | tr -d '"' |
            awk -F, -v s="$system" -v p="$p" '{print s","p","$1","$2","$4}' >>"$results"
    done
}

# Ocean Liner, its own defaults otherwise.
# shellcheck disable=SC2086
"$bin" --data-dir "$data/ol" --client-port $((port + 1)) --resp-port "$port" ${OL_FLAGS:---cores 2} \
    2>"$data/ol.log" &
server=$!
wait_up
bench ocean-liner
kill "$server" && wait "$server" 2>/dev/null || true

redis-server --port "$port" --dir "$data" --save '' --appendonly yes --appendfsync always \
    --daemonize no >"$data/redis-always.log" 2>&1 &
server=$!
wait_up
bench "redis-always"
kill "$server" && wait "$server" 2>/dev/null || true

redis-server --port "$port" --dir "$data" --save '' --appendonly no --daemonize no \
    >"$data/redis-none.log" 2>&1 &
server=$!
wait_up
bench "redis-none"
kill "$server" && wait "$server" 2>/dev/null || true

python3 - "$results" <<'PY'
import csv, sys
rows = {}
for system, p, test, rps, p50 in csv.reader(open(sys.argv[1])):
    rows[(system, p, test)] = (float(rps), float(p50))
print("| test | pipeline | Ocean Liner req/s (p50 ms) | Redis appendfsync always | ratio | Redis no persistence | ratio |")
print("|---|---|---|---|---|---|---|")
for test in ("SET", "GET"):
    for p in ("1", "16"):
        ol = rows.get(("ocean-liner", p, test))
        a = rows.get(("redis-always", p, test))
        n = rows.get(("redis-none", p, test))
        if not (ol and a and n):
            continue
        print(f"| {test} | {p} | {ol[0]:,.0f} ({ol[1]:.2f}) | {a[0]:,.0f} ({a[1]:.2f}) | "
              f"{ol[0] / a[0]:.2f} | {n[0]:,.0f} ({n[1]:.2f}) | {ol[0] / n[0]:.2f} |")
PY
