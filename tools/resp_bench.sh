#!/usr/bin/env bash
# Ocean Liner's RESP door against Redis (appendfsync always, and no persistence), one
# server at a time, in one run: SET and GET, 100-byte values, 50 connections, pipeline 1
# and 16, driven by two load tools — redis-benchmark, and `ocean-liner bench --protocol
# resp` (the same concurrency model for every system: 50 connections × pipeline commands
# in flight, HDR latency histograms, GETs over 100k prefilled keys). Ocean Liner runs
# twice: at its defaults (50 ms windows) and with `--batch-window-ms 2`. Prints Markdown
# tables with each Ocean Liner figure as a ratio of Redis's.
#
#   tools/resp_bench.sh     (env: REQUESTS=200000 CLIENTS=50 PORT=6390 DATA=/var/tmp/ol-resp-bench
#                            DURATION=5 OL_FLAGS="--cores 2" OCEAN_LINER=path/to/binary,
#                            not rebuilt; SKIP_REDIS_BENCHMARK=1 runs only the second tool)
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
tool_results=$data/tool.csv
: >"$results"
: >"$tool_results"
duration=${DURATION:-5}

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
        if [ -z "${SKIP_REDIS_BENCHMARK:-}" ]; then
            redis-benchmark -p "$port" -t set,get -n "$requests" -c "$clients" -P "$p" -d 100 \
                -r 100000 --csv 2>/dev/null | tail -n +2 | tr -d '"' |
                awk -F, -v s="$system" -v p="$p" '{print s","p","$1","$2","$4}' >>"$results"
        fi
        for w in set get; do
            local prefill=()
            [ "$w" = get ] && prefill=(--prefill)
            "$bin" bench --protocol resp --server "127.0.0.1:$port" --workload "$w" \
                --keys 100000 "${prefill[@]}" --value-size 100 --pipeline "$p" \
                --concurrency $((clients * p)) --duration "$duration" --warmup 1 --json \
                2>/dev/null | python3 -c '
import json, sys
r = json.load(sys.stdin)
print(",".join([sys.argv[1], sys.argv[2], r["workload"].upper(), str(r["ops_per_sec"]),
                str(r["p50_us"] / 1000), str(r["p99_us"] / 1000), str(r["p999_us"] / 1000),
                str(r["errors"])]))' "$system" "$p" >>"$tool_results"
        done
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

# Ocean Liner with 2 ms windows: a write waits for its window, so a closed-loop client's
# writes per second follow the window's length.
rm -rf "$data/ol"
# shellcheck disable=SC2086
"$bin" --data-dir "$data/ol" --client-port $((port + 1)) --resp-port "$port" ${OL_FLAGS:---cores 2} \
    --batch-window-ms 2 2>"$data/ol-2ms.log" &
server=$!
wait_up
bench ocean-liner-2ms
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

python3 - "$results" "$tool_results" <<'PY'
import csv, sys
rows = {}
for system, p, test, rps, p50 in csv.reader(open(sys.argv[1])):
    rows[(system, p, test)] = (float(rps), float(p50))
tool = {}
for system, p, test, ops, p50, p99, p999, errors in csv.reader(open(sys.argv[2])):
    tool[(system, p, test)] = (float(ops), float(p50), float(p99), float(p999), int(errors))
if rows:
    print("redis-benchmark: requests/s (p50 ms)\n")
    print("| test | pipeline | Ocean Liner | Ocean Liner, 2 ms windows | Redis appendfsync always | ratios | Redis no persistence | ratios |")
    print("|---|---|---|---|---|---|---|---|")
    for test in ("SET", "GET"):
        for p in ("1", "16"):
            ol, ol2 = rows.get(("ocean-liner", p, test)), rows.get(("ocean-liner-2ms", p, test))
            a, n = rows.get(("redis-always", p, test)), rows.get(("redis-none", p, test))
            if not (ol and ol2 and a and n):
                continue
            print(f"| {test} | {p} | {ol[0]:,.0f} ({ol[1]:.2f}) | {ol2[0]:,.0f} ({ol2[1]:.2f}) | "
                  f"{a[0]:,.0f} ({a[1]:.2f}) | {ol[0] / a[0]:.2f}, {ol2[0] / a[0]:.2f} | "
                  f"{n[0]:,.0f} ({n[1]:.2f}) | {ol[0] / n[0]:.2f}, {ol2[0] / n[0]:.2f} |")
print("\nocean-liner bench --protocol resp: ops/s (p50 / p99 / p99.9 ms)\n")
print("| test | pipeline | Ocean Liner | Ocean Liner, 2 ms windows | Redis appendfsync always | ratios | Redis no persistence | ratios |")
print("|---|---|---|---|---|---|---|---|")
def cell(r):
    return f"{r[0]:,.0f} ({r[1]:.2f} / {r[2]:.2f} / {r[3]:.2f})" + (f", {r[4]} errors" if r[4] else "")
for test in ("SET", "GET"):
    for p in ("1", "16"):
        ol, ol2 = tool.get(("ocean-liner", p, test)), tool.get(("ocean-liner-2ms", p, test))
        a, n = tool.get(("redis-always", p, test)), tool.get(("redis-none", p, test))
        if not (ol and ol2 and a and n):
            continue
        print(f"| {test} | {p} | {cell(ol)} | {cell(ol2)} | {cell(a)} | "
              f"{ol[0] / a[0]:.2f}, {ol2[0] / a[0]:.2f} | {cell(n)} | "
              f"{ol[0] / n[0]:.2f}, {ol2[0] / n[0]:.2f} |")
PY
