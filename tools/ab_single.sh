#!/usr/bin/env bash
# Two builds of a single node side by side in one run: each gets 1M keys prefilled, 20 s of
# durable 100-byte SETs at 16384 outstanding (long enough for segments to fill and the
# cleaner to run), then 8 s of GETs at 512, in the order A B B A; one line per run and op,
# and the data directory's size after it. The load tool is this tree's build.
#
#   tools/ab_single.sh OLD_BINARY NEW_BINARY
set -euo pipefail
A=$1 B=$2; out=$(mktemp -d /var/tmp/ol-ab1.XXXXXX)
bench=$(cd "$(dirname "$0")/.." && pwd)/target/release/ocean-liner
run() { # label bin idx
  local d=$out/$1-$3; mkdir -p $d
  $2 --data-dir $d/node --client-port 9500 --cores 2 2>$d/server.log & local s=$!
  sleep 1
  local c=(--server 127.0.0.1:9500 --keys 1000000 --value-size 100 --sockets 16 --json)
  $bench bench "${c[@]}" --workload set --prefill --concurrency 16384 --duration 1 --warmup 0 >/dev/null 2>&1
  $bench bench "${c[@]}" --workload set --concurrency 16384 --duration 20 --warmup 2 >$d/set.json 2>/dev/null
  $bench bench "${c[@]}" --workload get --concurrency 512 --duration 8 --warmup 2 >$d/get.json 2>/dev/null
  du -sm $d/node | cut -f1 > $d/du
  kill $s; wait $s 2>/dev/null || true
  python3 -c "
import json
for op in ('set','get'):
    r=json.load(open('$d/'+op+'.json'))
    print('$1', op, round(r['ops_per_sec']), r['p50_us']/1000, r['p99_us']/1000, r['p999_us']/1000, 'errors', r['errors'], 'timeouts', r['timeouts'])
print('$1 du_mib', open('$d/du').read().strip())
"
  rm -rf $d/node
}
run A $A 0; run B $B 0; run B $B 1; run A $A 1
