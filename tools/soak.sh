#!/usr/bin/env bash
# A long overwrite run on one node: durable SETs at full speed over KEYS keys (prefilled
# first) for MINUTES minutes, measured one minute at a time by the load tool. After each
# minute it prints one row: ops/s, p50/p99/p99.9 of that minute, the data directory's size
# on disk (du), the segments' disk and live bytes and the cleaner's counters from STATS,
# and the server's RSS. Disk use that stays flat while the writes go on is the point.
#
#   tools/soak.sh           (env: MINUTES=30 KEYS=1000000 VALUE=100 CONCURRENCY=16384
#                            PORT=9400 DATA=/var/tmp/ol-soak SERVER_FLAGS="...")
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=$here/target/release/ocean-liner
minutes=${MINUTES:-30}
keys=${KEYS:-1000000}
value=${VALUE:-100}
conc=${CONCURRENCY:-16384}
port=${PORT:-9400}
data=${DATA:-/var/tmp/ol-soak}
(cd "$here" && cargo build --release --quiet)
rm -rf "$data"
mkdir -p "$data"
# shellcheck disable=SC2086
"$bin" --data-dir "$data/node" --client-port "$port" --cores 2 ${SERVER_FLAGS:-} 2>"$data/server.log" &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
sleep 1
common=(--server "127.0.0.1:$port" --keys "$keys" --value-size "$value" --sockets 16 --json)
"$bin" bench "${common[@]}" --workload set --prefill --concurrency "$conc" --duration 1 --warmup 0 >/dev/null 2>"$data/prefill.log"
stat() { "$bin" stats --server "127.0.0.1:$port" | sed -n "s/^$1=//p"; }
printf '| minute | SET ops/s | p50 ms | p99 ms | p99.9 ms | du MiB | disk MiB | live MiB | segments | deleted | values moved | clean errors | RSS MiB |\n'
printf '|---|---|---|---|---|---|---|---|---|---|---|---|---|\n'
for m in $(seq 1 "$minutes"); do
    "$bin" bench "${common[@]}" --workload set --concurrency "$conc" --duration 60 --warmup 0 >"$data/minute-$m.json" 2>/dev/null
    rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$server/status")
    du_mib=$(du -sm "$data/node" | cut -f1)
    python3 - "$data/minute-$m.json" "$m" "$du_mib" "$(stat disk_bytes)" "$(stat live_bytes)" \
        "$(stat segments)" "$(stat segments_deleted)" "$(stat values_moved)" "$(stat clean_errors)" "$rss_kib" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
m, du, disk, live, segs, deleted, moved, errs, rss = sys.argv[2:]
mib = lambda b: f"{int(b) / 2**20:.0f}"
print(f"| {m} | {r['ops_per_sec']:.0f} | {r['p50_us']/1000:.1f} | {r['p99_us']/1000:.1f} | "
      f"{r['p999_us']/1000:.1f} | {du} | {mib(disk)} | {mib(live)} | {segs} | {deleted} | "
      f"{moved} | {errs} | {int(rss) / 1024:.0f} |", flush=True)
PY
done
