#!/usr/bin/env bash
# GETs when no value is in memory: one node with the value cache off and a 16 MiB log
# cache, KEYS keys of 100-byte values prefilled, then GETs over all of them at each
# outstanding count in CONCURRENCIES (every GET is an O_DIRECT read of the log); then fio's
# 4 KiB O_DIRECT random reads (io_uring, at each queue depth in FIO_DEPTHS) on a 2 GiB file
# in the same directory, the disk's own rate to hold them against.
#
#   tools/disk_gets.sh      (env: KEYS=10000000 CONCURRENCIES="32 128 512"
#                            FIO_DEPTHS="1 32 128" SECONDS_RUN=10 PORT=9750
#                            DATA=/var/tmp/ol-disk-gets OCEAN_LINER=binary)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${OCEAN_LINER:-$here/target/release/ocean-liner}
[ -n "${OCEAN_LINER:-}" ] || (cd "$here" && cargo build --release --quiet)
command -v fio >/dev/null || apt-get install -y fio >/dev/null
keys=${KEYS:-10000000}
seconds=${SECONDS_RUN:-10}
port=${PORT:-9750}
data=${DATA:-/var/tmp/ol-disk-gets}
rm -rf "$data"
mkdir -p "$data"
"$bin" --data-dir "$data/node" --client-port "$port" --cores 2 --value-cache-mib 0 \
    --log-cache-mib 16 2>"$data/server.log" &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$data"' EXIT
sleep 1
common=(--server "127.0.0.1:$port" --value-size 100 --sockets 16 --json)
"$bin" bench "${common[@]}" --keys "$keys" --workload set --prefill --concurrency 16384 \
    --duration 1 --warmup 0 >/dev/null 2>"$data/prefill.log"
for conc in ${CONCURRENCIES:-32 128 512}; do
    "$bin" bench "${common[@]}" --keys "$keys" --workload get --concurrency "$conc" \
        --duration "$seconds" --warmup 2 >"$data/get.json" 2>/dev/null
    python3 - "$data/get.json" "$conc" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"GET at {sys.argv[2]} outstanding: {r['ops_per_sec']:.0f}/s, p50 {r['p50_us']/1000:.2f} ms, "
      f"p99 {r['p99_us']/1000:.2f} ms")
PY
done
"$bin" stats --server "127.0.0.1:$port" | grep -E '^value_cache_(hits|misses)='
kill "$server"
wait "$server" 2>/dev/null || true
file=$data/fio-2g
fio --name=fill --filename="$file" --size=2g --rw=write --bs=1m --direct=1 \
    --ioengine=io_uring --iodepth=8 --output=/dev/null
for qd in ${FIO_DEPTHS:-1 32 128}; do
    fio --name=randread --filename="$file" --size=2g --rw=randread --bs=4k --direct=1 \
        --ioengine=io_uring --iodepth="$qd" --runtime="$seconds" --time_based --ramp_time=1 \
        --output-format=json --output="$data/fio.json"
    python3 - "$data/fio.json" "$qd" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]["read"]
p = j["clat_ns"]["percentile"]
print(f"fio 4 KiB random reads at queue depth {sys.argv[2]}: {j['iops']:.0f}/s, "
      f"p50 {p['50.000000']/1e6:.2f} ms, p99 {p['99.000000']/1e6:.2f} ms")
PY
done
