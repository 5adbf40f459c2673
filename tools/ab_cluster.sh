#!/usr/bin/env bash
# Two builds of the server side by side on the same machine, in one run: a 3-node
# cluster of each (tools/cluster.sh) takes durable replicated SETs of 100-byte values
# from the same load tool (`ocean-liner bench` of build B), in alternating order
# A B B A ... so that drift in the machine's load falls on both.
#
#   tools/ab_cluster.sh OLD_BINARY NEW_BINARY   (env: REPS=2, DURATION=8, CONCURRENCY=8192)
#
# Prints one line per run and the median ops/s, p50 and p99 of each build.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
a=$1 b=$2
reps=${REPS:-2}
duration=${DURATION:-8}
concurrency=${CONCURRENCY:-8192}
out=$(mktemp -d /var/tmp/ol-ab.XXXXXX)

run() { # label binary index
    local dir="$out/$1-$3"
    OCEAN_LINER=$2 "$here/tools/cluster.sh" start 3 "$dir" >/dev/null
    "$b" bench --server 127.0.0.1:9000,127.0.0.1:9001,127.0.0.1:9002 --workload set \
        --keys 1000000 --value-size 100 --sockets 16 --concurrency "$concurrency" \
        --duration "$duration" --warmup 2 --json >"$out/$1-$3.json" 2>/dev/null
    OCEAN_LINER=$2 "$here/tools/cluster.sh" stop "$dir" >/dev/null
    rm -rf "$dir"
}

for ((i = 0; i < reps; i++)); do
    if ((i % 2 == 0)); then run A "$a" "$i"; run B "$b" "$i"; else run B "$b" "$i"; run A "$a" "$i"; fi
done

python3 - "$out" <<'PY'
import glob, json, statistics, sys
out = sys.argv[1]
rows = {}
for f in sorted(glob.glob(f"{out}/*.json")):
    label = f.split("/")[-1].split("-")[0]
    o = json.load(open(f))
    rows.setdefault(label, []).append(o)
    print(f"{label}: {o['ops_per_sec']:.0f} ops/s, p50 {o['p50_us']/1000:.1f} ms, "
          f"p99 {o['p99_us']/1000:.1f} ms, p99.9 {o['p999_us']/1000:.1f} ms, errors {o.get('errors', 0)}")
for label, rs in rows.items():
    med = lambda k: statistics.median(r[k] for r in rs)
    print(f"median {label}: {med('ops_per_sec'):.0f} ops/s, p50 {med('p50_us')/1000:.1f} ms, "
          f"p99 {med('p99_us')/1000:.1f} ms ({len(rs)} runs)")
PY
echo "raw results: $out"
