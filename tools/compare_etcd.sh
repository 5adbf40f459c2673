#!/usr/bin/env bash
# Side-by-side replicated-write benchmark on this machine, in one run: a 3-node Ocean
# Liner cluster (tools/cluster.sh, durable replicated SETs of 100-byte values driven by
# `ocean-liner bench`) and a 3-member etcd cluster (`etcdctl check perf --load=l`, 8000
# writes/s offered by 500 clients, 1 KiB values, through ../shared/peers/etcd_bench.sh).
#
#   tools/compare_etcd.sh          (env: DURATION=10, CONCURRENCY=8192)
#
# Needs etcd-server and etcd-client (apt-get install etcd-server etcd-client).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
peers=${PEERS_DIR:-$here/../shared/peers}
bin=$here/target/release/ocean-liner
duration=${DURATION:-10}
concurrency=${CONCURRENCY:-8192}
out=$(mktemp -d /var/tmp/ol-compare-etcd.XXXXXX)
(cd "$here" && cargo build --release --quiet)

"$here/tools/cluster.sh" start 3 "$out/cluster" >/dev/null
trap '"$here/tools/cluster.sh" stop "$out/cluster" >/dev/null 2>&1 || true' EXIT
"$bin" bench --server 127.0.0.1:9000,127.0.0.1:9001,127.0.0.1:9002 --workload set \
    --keys 1000000 --value-size 100 --sockets 16 --concurrency "$concurrency" \
    --duration "$duration" --warmup 2 --json >"$out/ol_set.json" 2>/dev/null
"$here/tools/cluster.sh" stop "$out/cluster" >/dev/null

REPS=1 LOADS=l CLUSTERS=3 OUT="$out/etcd" bash "$peers/etcd_bench.sh" >"$out/etcd.log" 2>&1 || true

python3 - "$out" "$concurrency" <<'PY'
import csv, json, sys
out, conc = sys.argv[1], sys.argv[2]
o = json.load(open(f"{out}/ol_set.json"))
print("| system | writes | ops/s | p50 ms | p99 ms | p99.9 ms | Ocean Liner / this |")
print("|---|---|---|---|---|---|---|")
print(f"| Ocean Liner, 3 nodes | {conc} outstanding SETs, 100 B | {o['ops_per_sec']:.0f} | "
      f"{o['p50_us']/1000:.1f} | {o['p99_us']/1000:.1f} | {o['p999_us']/1000:.1f} | 1.00 |")
for row in csv.DictReader(open(f"{out}/etcd/etcd_runs.csv")):
    thr = float(row["throughput_wps"] or 0)
    ratio = o["ops_per_sec"] / thr if thr else float("nan")
    print(f"| etcd 3.4, 3 members | check perf l ({row['result']}), 500 clients, 1 KiB | {thr:.0f} | - | "
          f"slowest {float(row['slowest_s'] or 0)*1000:.0f} | - | {ratio:.1f} |")
PY
echo "raw results: $out"
