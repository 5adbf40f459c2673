#!/usr/bin/env bash
# GETs of two nodes measured side by side: both run at once (binaries A and B, or one
# binary with two key counts), each is prefilled, then GET runs of SECONDS each alternate
# between them ROUNDS times, so drift on a shared machine falls on both alike. Each round
# prints one line per read set: the GET ops/s of A, then of B.
#
#   tools/side_by_side.sh A B    (env: KEYS=10000000, or KEYS_A / KEYS_B apart;
#                                 OLDEST=100000 also reads each node's oldest keys;
#                                 SECONDS_RUN=6 ROUNDS=6 CONCURRENCY=512 VALUE=100
#                                 PORT_A=9730 PORT_B=9740 DATA=/var/tmp/ol-side)
#   KEYS_A=10000000 KEYS_B=100000 OLDEST=100000 tools/side_by_side.sh BIN BIN
#                                (one build: a 10M-key node against a 100k-key node)
set -euo pipefail
[ $# -eq 2 ] || { sed -n '2,12p' "$0"; exit 2; }
a=$1
b=$2
keys=${KEYS:-10000000}
keys_a=${KEYS_A:-$keys}
keys_b=${KEYS_B:-$keys}
seconds=${SECONDS_RUN:-6}
rounds=${ROUNDS:-6}
conc=${CONCURRENCY:-512}
value=${VALUE:-100}
port_a=${PORT_A:-9730}
port_b=${PORT_B:-9740}
data=${DATA:-/var/tmp/ol-side}
rm -rf "$data"
mkdir -p "$data"
"$a" --data-dir "$data/a" --client-port "$port_a" --cores 2 2>"$data/a.log" &
server_a=$!
"$b" --data-dir "$data/b" --client-port "$port_b" --cores 2 2>"$data/b.log" &
server_b=$!
trap 'kill $server_a $server_b 2>/dev/null || true' EXIT
sleep 1
common=(--value-size "$value" --sockets 16 --json)
for node in "$port_a:$keys_a" "$port_b:$keys_b"; do
    "$a" bench "${common[@]}" --server "127.0.0.1:${node%%:*}" --keys "${node##*:}" \
        --workload set --prefill --concurrency 16384 --duration 1 --warmup 0 >/dev/null
done
echo "A: $a, $keys_a keys; B: $b, $keys_b keys; GET ops/s, $seconds s a run"
for round in $(seq "$rounds"); do
    for over in all ${OLDEST:-}; do
        line="round $round, over $over:"
        for node in "$port_a:$keys_a" "$port_b:$keys_b"; do
            n=$over
            [ "$n" = all ] && n=${node##*:}
            "$a" bench "${common[@]}" --server "127.0.0.1:${node%%:*}" --keys "$n" \
                --workload get --concurrency "$conc" --duration "$seconds" --warmup 1 \
                >"$data/get.json" 2>"$data/get.log"
            line="$line $(python3 -c 'import json, sys; print(round(json.load(open(sys.argv[1]))["ops_per_sec"]))' "$data/get.json")"
        done
        echo "$line"
    done
done
