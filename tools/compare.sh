#!/usr/bin/env bash
# Ocean Liner against Redis on this machine, in one run, every system driven by the same
# client: `ocean-liner bench` (UDP for Ocean Liner's own port, `--protocol resp` for
# Ocean Liner's RESP door and for Redis), the same key space, value size, concurrency
# model and HDR histograms. Systems, one at a time:
#   - Ocean Liner, single node, durable (defaults, --cores 2): UDP (a request per
#     datagram, and BATCH datagrams of 16), and RESP at pipeline 1 and 16;
#   - Ocean Liner with --batch-window-ms 2: the same;
#   - a 3-node Ocean Liner cluster on this machine (tools/cluster.sh): UDP SETs, alone and
#     in BATCH datagrams of 16;
#   - Redis with appendfsync always, and with no persistence: RESP at pipeline 1 and 16;
#   - the UDP request/response ceiling (`ocean-liner udp-ceiling`, which answers at once
#     doing no work), for GETs at GET_CONCURRENCY and 4096 outstanding.
# Each: SET then GET (100-byte values over 1M prefilled keys), 50 connections for RESP,
# SET_CONCURRENCY / GET_CONCURRENCY requests outstanding for UDP; then sweeps: UDP SETs at
# 2048-8192 outstanding, UDP GETs at 64 and 4096, the same with batches of 16, RESP at
# pipeline 16 with 10 and 200 connections.
#
# Writes bench-results/<date>-<time>/: one JSON report per run, results.csv, results.md
# (the machine, the command, a table with each figure as a ratio of the best Redis figure
# for the same op) and SVG charts drawn by `ocean-liner plot` (throughput, latency
# distributions, operations per second over each run). Installs redis-server from
# Debian's packages if missing.
#
#   tools/compare.sh   (env: DURATION=10 KEYS=1000000 SET_CONCURRENCY=16384
#                       GET_CONCURRENCY=512 CLIENTS=50 OCEAN_LINER=path/to/binary)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${OCEAN_LINER:-$here/target/release/ocean-liner}
duration=${DURATION:-10}
keys=${KEYS:-1000000}
set_c=${SET_CONCURRENCY:-16384}
get_c=${GET_CONCURRENCY:-512}
clients=${CLIENTS:-50}
[ -n "${OCEAN_LINER:-}" ] || (cd "$here" && cargo build --release --quiet)
if ! command -v redis-server >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
stamp=$(date -u +%Y-%m-%d-%H%M%S)
out=$here/bench-results/$stamp
mkdir -p "$out"
work=$(mktemp -d /var/tmp/ol-compare.XXXXXX)
udp=9300
resp=6391
server=
stop_server() {
    if [ -n "$server" ]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
        server=
    fi
}
trap stop_server EXIT

wait_resp() {
    for _ in $(seq 200); do
        if redis-cli -p "$resp" SET __up 1 2>/dev/null | grep -q OK; then return 0; fi
        sleep 0.05
    done
    echo "nothing answers on $resp" >&2
    exit 1
}

# run SYSTEM LABEL ARGS...: one `ocean-liner bench` run, its JSON kept.
run() {
    local system=$1 label=$2
    shift 2
    "$bin" bench --keys "$keys" --value-size 100 --duration "$duration" --warmup 2 --json "$@" \
        >"$out/$system.$label.json" 2>"$work/$system.$label.log"
}

resp_runs() {
    local system=$1
    run "$system" set-p1 --protocol resp --server "127.0.0.1:$resp" --workload set --prefill \
        --pipeline 1 --concurrency "$clients"
    run "$system" get-p1 --protocol resp --server "127.0.0.1:$resp" --workload get \
        --pipeline 1 --concurrency "$clients"
    run "$system" set-p16 --protocol resp --server "127.0.0.1:$resp" --workload set \
        --pipeline 16 --concurrency $((clients * 16))
    run "$system" get-p16 --protocol resp --server "127.0.0.1:$resp" --workload get \
        --pipeline 16 --concurrency $((clients * 16))
    # A connection sweep at pipeline 16: each system at its peak, whichever count that is.
    run "$system" set-p16-c200 --protocol resp --server "127.0.0.1:$resp" --workload set \
        --pipeline 16 --concurrency $((200 * 16))
    run "$system" get-p16-c10 --protocol resp --server "127.0.0.1:$resp" --workload get \
        --pipeline 16 --concurrency $((10 * 16))
    run "$system" get-p16-c200 --protocol resp --server "127.0.0.1:$resp" --workload get \
        --pipeline 16 --concurrency $((200 * 16))
}

ocean_liner() {
    local system=$1
    shift
    rm -rf "$work/data"
    "$bin" --data-dir "$work/data" --client-port "$udp" --resp-port "$resp" --cores 2 "$@" \
        2>"$work/$system.server.log" &
    server=$!
    wait_resp
    run "$system" set-udp --server "127.0.0.1:$udp" --workload set --prefill --sockets 16 \
        --concurrency "$set_c"
    run "$system" get-udp --server "127.0.0.1:$udp" --workload get --sockets 16 \
        --concurrency "$get_c"
    run "$system" get-udp4096 --server "127.0.0.1:$udp" --workload get --sockets 16 \
        --concurrency 4096
    # Sweeps of the outstanding count (the SET p99 at ~80% of the peak comes from these).
    for c in 2048 4096 8192; do
        run "$system" "set-udp$c" --server "127.0.0.1:$udp" --workload set --sockets 16 \
            --concurrency "$c"
    done
    run "$system" get-udp64 --server "127.0.0.1:$udp" --workload get --sockets 16 \
        --concurrency 64
    # BATCH datagrams of up to 16 requests (`--pipeline 16` over UDP).
    for c in 2048 4096 8192 "$set_c"; do
        run "$system" "set-udp$c-b16" --server "127.0.0.1:$udp" --workload set --sockets 16 \
            --concurrency "$c" --pipeline 16
    done
    for c in 64 "$get_c" 4096; do
        run "$system" "get-udp$c-b16" --server "127.0.0.1:$udp" --workload get --sockets 16 \
            --concurrency "$c" --pipeline 16
    done
    resp_runs "$system"
    stop_server
}

# The machine's UDP request/response ceiling for this client: a responder that answers
# every request at once (`ocean-liner udp-ceiling`, one receiving thread as one shard).
udp_ceiling() {
    "$bin" udp-ceiling --listen "127.0.0.1:$udp" 2>"$work/udp-ceiling.server.log" &
    server=$!
    sleep 0.5
    run udp-ceiling get-udp --server "127.0.0.1:$udp" --workload get --sockets 16 \
        --concurrency "$get_c"
    run udp-ceiling get-udp4096 --server "127.0.0.1:$udp" --workload get --sockets 16 \
        --concurrency 4096
    run udp-ceiling get-udp64 --server "127.0.0.1:$udp" --workload get --sockets 16 \
        --concurrency 64
    stop_server
}

cluster3() {
    local system=ocean-liner-3node
    export PEER_PORT_BASE=8300 CLIENT_PORT_BASE=$udp OCEAN_LINER=$bin
    "$here/tools/cluster.sh" start 3 "$work/cluster" >"$work/$system.server.log" 2>&1
    local all="127.0.0.1:$udp,127.0.0.1:$((udp + 1)),127.0.0.1:$((udp + 2))"
    # Wait for a leader: a SET through the list succeeds once one is elected.
    for _ in $(seq 100); do
        "$bin" set __up 1 --server "$all" --timeout 1 >/dev/null 2>&1 && break
        sleep 0.1
    done
    run "$system" set-udp --server "$all" --workload set --prefill --sockets 16 \
        --concurrency "$set_c"
    run "$system" "set-udp$set_c-b16" --server "$all" --workload set --sockets 16 \
        --concurrency "$set_c" --pipeline 16
    "$here/tools/cluster.sh" stop "$work/cluster" >>"$work/$system.server.log" 2>&1 || true
    unset PEER_PORT_BASE CLIENT_PORT_BASE
}

redis() {
    local system=$1
    shift
    rm -rf "$work/redis" && mkdir -p "$work/redis"
    redis-server --port "$resp" --dir "$work/redis" --save '' --daemonize no "$@" \
        >"$work/$system.server.log" 2>&1 &
    server=$!
    wait_resp
    resp_runs "$system"
    stop_server
}

udp_ceiling
ocean_liner ocean-liner
ocean_liner ocean-liner-2ms --batch-window-ms 2
cluster3
redis redis-always --appendonly yes --appendfsync always
redis redis-none --appendonly no

machine="$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'))"
machine="$machine, $(free -g | awk '/Mem:/ {print $2}') GiB, Linux $(uname -r)"
machine="$machine, Redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/')"
"$bin" plot "$out" >/dev/null
python3 "$here/tools/compare_report.py" "$out" "$machine" \
    "tools/compare.sh (DURATION=$duration KEYS=$keys SET_CONCURRENCY=$set_c GET_CONCURRENCY=$get_c CLIENTS=$clients)"
echo "results: $out (logs in $work)"
