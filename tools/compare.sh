#!/usr/bin/env bash
# Side-by-side benchmark on this machine, in one run: Ocean Liner (single node, durable
# SETs) and Redis (no persistence, and appendfsync always), 100-byte values, 1M keys.
# Ocean Liner is driven by `ocean-liner bench` at the concurrency where it peaks; Redis by
# redis-benchmark (50 clients, pipeline 1 and 16) through ../shared/peers/redis_bench.sh.
#
#   tools/compare.sh            (env: DURATION=10, SET_CONCURRENCY=16384, GET_CONCURRENCY=512)
#
# Needs redis-server and redis-tools (apt-get install redis-server redis-tools).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
peers=${PEERS_DIR:-$here/../shared/peers}
bin=$here/target/release/ocean-liner
duration=${DURATION:-10}
set_c=${SET_CONCURRENCY:-16384}
get_c=${GET_CONCURRENCY:-512}
out=$(mktemp -d /var/tmp/ol-compare.XXXXXX)
(cd "$here" && cargo build --release --quiet)

data=$out/data
"$bin" --data-dir "$data" --client-port 9300 --cores 2 2>"$out/server.log" &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
sleep 1
common=(--server 127.0.0.1:9300 --keys 1000000 --value-size 100 --sockets 16 --json)
"$bin" bench "${common[@]}" --workload set --prefill --concurrency "$set_c" --duration 1 --warmup 0 >/dev/null 2>"$out/prefill.log"
"$bin" bench "${common[@]}" --workload set --concurrency "$set_c" --duration "$duration" --warmup 2 >"$out/ol_set.json" 2>/dev/null
"$bin" bench "${common[@]}" --workload get --concurrency "$get_c" --duration "$duration" --warmup 2 >"$out/ol_get.json" 2>/dev/null
kill $server; wait $server 2>/dev/null || true

REPS=1 MODES="none always" OUT="$out/redis" bash "$peers/redis_bench.sh" >"$out/redis.log" 2>&1

python3 - "$out" "$set_c" "$get_c" <<'PY'
import csv, json, sys
out, set_c, get_c = sys.argv[1], sys.argv[2], sys.argv[3]
ol = {op: json.load(open(f"{out}/ol_{op}.json")) for op in ("set", "get")}
redis = {}
for row in csv.DictReader(open(f"{out}/redis/redis_runs.csv")):
    redis[(row["mode"], row["test"].lower(), row["pipeline"])] = row
print(f"| system | op | config | ops/s | p50 ms | p99 ms | p99.9 ms | Ocean Liner / this |")
print("|---|---|---|---|---|---|---|---|")
for op, conc in (("set", set_c), ("get", get_c)):
    o = ol[op]
    print(f"| Ocean Liner (durable) | {op.upper()} | {conc} outstanding, UDP | {o['ops_per_sec']:.0f} | "
          f"{o['p50_us']/1000:.2f} | {o['p99_us']/1000:.2f} | {o['p999_us']/1000:.2f} | 1.00 |")
    for mode in ("none", "always"):
        for p in ("1", "16"):
            r = redis.get((mode, op, p))
            if not r:
                continue
            rps = float(r["rps"])
            label = "no persistence" if mode == "none" else "appendfsync always"
            print(f"| Redis ({label}) | {op.upper()} | 50 clients, pipeline {p} | {rps:.0f} | "
                  f"{float(r['p50_ms']):.2f} | {float(r['p99_ms']):.2f} | - | {o['ops_per_sec']/rps:.2f} |")
PY
echo "raw results: $out"
