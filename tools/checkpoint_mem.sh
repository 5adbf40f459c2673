#!/usr/bin/env bash
# A checkpoint's memory on a large map whose pages are all changed: one node is prefilled
# with KEYS keys of 100 bytes, then takes durable SETs over all of them at full speed for
# SECONDS, with a checkpoint every INTERVAL seconds. The node's RSS is sampled every
# 100 ms; the rise is the peak RSS minus the 10th percentile over the load (caches are
# capped small, so they are full before the measured phase and do not grow meanwhile),
# reported as a multiple of the map's size.
#
#   tools/checkpoint_mem.sh   (env: KEYS=10000000 SECONDS_LOAD=75 INTERVAL=20 PORT=9650
#                              DATA=/var/tmp/ol-ckpt-mem OCEAN_LINER=path/to/binary)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${OCEAN_LINER:-$here/target/release/ocean-liner}
keys=${KEYS:-10000000}
seconds=${SECONDS_LOAD:-75}
interval=${INTERVAL:-20}
port=${PORT:-9650}
data=${DATA:-/var/tmp/ol-ckpt-mem}
[ -n "${OCEAN_LINER:-}" ] || (cd "$here" && cargo build --release --quiet)
rm -rf "$data"
mkdir -p "$data"
"$bin" --data-dir "$data/node" --client-port "$port" --cores 2 --log-cache-mib 64 \
    --value-cache-mib 16 --checkpoint-interval-s "$interval" 2>"$data/server.log" &
server=$!
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; rm -rf "$data"' EXIT
sleep 1
common=(--server "127.0.0.1:$port" --value-size 100 --sockets 16 --keys "$keys" --json)
"$bin" bench "${common[@]}" --workload set --prefill --concurrency 16384 --duration 1 \
    --warmup 0 >/dev/null 2>"$data/prefill.log"
# Let the checkpoint that follows the prefill finish, so the measured ones start clean.
sleep $((interval + 5))
stat() { "$bin" stats --server "127.0.0.1:$port" | sed -n "s/^$1=//p"; }
: >"$data/rss"
(
    while kill -0 "$server" 2>/dev/null; do
        printf '%s %s %s\n' "$(date +%s.%N)" "$(awk '/VmRSS/ {print $2}' "/proc/$server/status")" \
            "$(stat checkpoints)" >>"$data/rss"
        sleep 0.1
    done
) &
sampler=$!
"$bin" bench "${common[@]}" --workload set --concurrency 16384 --duration "$seconds" \
    --warmup 0 >"$data/load.json" 2>/dev/null
kill "$sampler" 2>/dev/null || true
echo "index_bytes=$(stat index_bytes) map_pages=$(stat map_pages) checkpoint_copy_peak_bytes=$(stat checkpoint_copy_peak_bytes) last_checkpoint_us=$(stat last_checkpoint_us)"
python3 - "$data/rss" "$data/load.json" "$(stat index_bytes)" <<'PY'
import json, sys
rows = [l.split() for l in open(sys.argv[1]) if len(l.split()) == 3]
rows = [(float(t), int(r) * 1024, int(c)) for t, r, c in rows]
load = json.load(open(sys.argv[2]))
index = int(sys.argv[3])
print(f"SETs {load['ops_per_sec']:.0f}/s p99 {load['p99_us']/1000:.1f} ms; map {index/2**20:.0f} MiB")
rss = sorted(r for _, r, _ in rows)
base = rss[len(rss) // 10]
peak = rss[-1]
done = rows[-1][2] - rows[0][2]
print(f"checkpoints during the load: {done}; RSS p10 {base/2**20:.0f} MiB, max {peak/2**20:.0f} MiB, "
      f"rise {(peak-base)/2**20:.0f} MiB = {(peak-base)/index:.2f} x the map; "
      f"peak / p10 = {peak/base:.3f}")
PY
