#!/usr/bin/env bash
# GETs as data grows, on one node: a node with SMALL keys and one with LARGE keys (100-byte
# values, prefilled in key order, so key:0..99999 are the oldest), each then read over all
# its keys and over its oldest 100k. Prints ops/s and p50/p99/p99.9 per case, with the
# server's RSS and index bytes per key (from STATS) after the prefill.
#
#   tools/scale.sh          (env: SMALL=100000 LARGE=10000000 DURATION=20 CONCURRENCY=512
#                            PORT=9600 DATA=/var/tmp/ol-scale SERVER_FLAGS="..."
#                            OCEAN_LINER=path/to/binary, not rebuilt)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${OCEAN_LINER:-$here/target/release/ocean-liner}
small=${SMALL:-100000}
large=${LARGE:-10000000}
duration=${DURATION:-20}
conc=${CONCURRENCY:-512}
port=${PORT:-9600}
data=${DATA:-/var/tmp/ol-scale}
[ -n "${OCEAN_LINER:-}" ] || (cd "$here" && cargo build --release --quiet)
printf '| keys | read over | GET ops/s | p50 ms | p99 ms | p99.9 ms | value cache hits | RSS MiB | RSS B/key | index B/key | disk MiB |\n'
printf '|---|---|---|---|---|---|---|---|---|---|---|\n'
for keys in "$small" "$large"; do
    rm -rf "$data"
    mkdir -p "$data"
    # shellcheck disable=SC2086
    "$bin" --data-dir "$data/node" --client-port "$port" --cores 2 ${SERVER_FLAGS:-} 2>"$data/server.log" &
    server=$!
    sleep 1
    common=(--server "127.0.0.1:$port" --value-size 100 --sockets 16 --json)
    "$bin" bench "${common[@]}" --keys "$keys" --workload set --prefill --concurrency 16384 \
        --duration 1 --warmup 0 >/dev/null 2>"$data/prefill.log"
    rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$server/status")
    stats=$("$bin" stats --server "127.0.0.1:$port")
    per_key=$(sed -n 's/^index_bytes_per_key=//p' <<<"$stats")
    disk=$(sed -n 's/^disk_bytes=//p' <<<"$stats")
    overs=("$keys")
    [ "$keys" -gt 100000 ] && overs+=(100000)
    cache_counts() {
        "$bin" stats --server "127.0.0.1:$port" |
            awk -F= '/^value_cache_hits=/ {h=$2} /^value_cache_misses=/ {m=$2} END {print h+0, m+0}'
    }
    for over in "${overs[@]}"; do
        read -r hits0 misses0 < <(cache_counts)
        "$bin" bench "${common[@]}" --keys "$over" --workload get --concurrency "$conc" \
            --duration "$duration" --warmup 2 >"$data/get-$over.json" 2>/dev/null
        read -r hits1 misses1 < <(cache_counts)
        python3 - "$data/get-$over.json" "$keys" "$over" "$rss_kib" "$per_key" "$disk" \
            $((hits1 - hits0)) $((misses1 - misses0)) <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
keys, over, rss, per_key, disk, hits, misses = sys.argv[2:]
lookups = int(hits) + int(misses)
hit = f"{100 * int(hits) / lookups:.1f}%" if lookups else "n/a"

label = "all" if over == keys else f"oldest {int(over):,}"
print(f"| {int(keys):,} | {label} | {r['ops_per_sec']:.0f} | {r['p50_us']/1000:.2f} | "
      f"{r['p99_us']/1000:.2f} | {r['p999_us']/1000:.2f} | {hit} | {int(rss)/1024:.0f} | "
      f"{int(rss)*1024/int(keys):.0f} | {per_key} | {int(disk)/2**20:.0f} |", flush=True)
PY
    done
    kill "$server"
    wait "$server" 2>/dev/null || true
done
rm -rf "$data"
