#!/usr/bin/env bash
# A backup of a large node under writes: one node gets KEYS keys of 100 B (prefilled), then
# 6 s of SETs from 256 clients over 10k keys as a baseline, then the same load while
# `snapshot save` runs; prints the file size and time, both loads' ops/s and latencies,
# the node's RSS before and at its peak, and how long `snapshot restore` takes.
#
#   tools/backup_bench.sh            (env: KEYS=10000000 PORT=9700 DATA=/var/tmp/ol-backup
#                                     OCEAN_LINER=path/to/binary, not rebuilt)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${OCEAN_LINER:-$here/target/release/ocean-liner}
[ -n "${OCEAN_LINER:-}" ] || (cd "$here" && cargo build --release --quiet)
keys=${KEYS:-10000000}
port=${PORT:-9700}
data=${DATA:-/var/tmp/ol-backup}
rm -rf "$data"; mkdir -p "$data"
"$bin" --data-dir "$data/node" --client-port "$port" --cores 2 2>"$data/server.log" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
sleep 1
srv=(--server "127.0.0.1:$port")
"$bin" bench "${srv[@]}" --keys "$keys" --value-size 100 --workload set --prefill \
    --concurrency 16384 --duration 1 --warmup 0 --json >/dev/null 2>"$data/prefill.log"
load=(bench "${srv[@]}" --keys 10000 --value-size 100 --workload set --concurrency 256 --warmup 0 --json)
summary() {
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], {k: r.get(k) for k in ('ops_per_sec','p50_us','p99_us','p999_us','max_us','timeouts')})" "$@"
}
echo "node RSS before: $(awk '/VmRSS/ {print $2}' "/proc/$server/status") KiB"
"$bin" "${load[@]}" --duration 6 >"$data/baseline.json" 2>/dev/null
summary "$data/baseline.json" "SETs without a save:"
"$bin" "${load[@]}" --duration 30 >"$data/during.json" 2>/dev/null &
loader=$!
sleep 2
start=$(date +%s.%N)
"$bin" snapshot save "$data/backup.olsnap" "${srv[@]}"
echo "save took $(echo "$(date +%s.%N) - $start" | bc) s"
echo "node RSS peak: $(awk '/VmHWM/ {print $2}' "/proc/$server/status") KiB"
wait $loader
summary "$data/during.json" "SETs during the save (30 s window):"
start=$(date +%s.%N)
"$bin" snapshot restore "$data/backup.olsnap" --data-dir "$data/restored"
echo "restore took $(echo "$(date +%s.%N) - $start" | bc) s"
