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
#   - memcached (no persistence) over its UDP protocol (`--protocol memcache`), a command
#     per datagram and 16 per datagram;
#   - the UDP request/response ceiling (`ocean-liner udp-ceiling`, which answers at once
#     doing no work), for GETs at GET_CONCURRENCY and 4096 outstanding;
#   - etcd (Debian's etcd-server), one member and three, through its own client:
#     `etcdctl check perf --load l` (a 60-second write load etcdctl paces itself; Debian
#     ships no other etcd load tool);
#   - the disk, with fio: O_DIRECT sequential writes, 4 KiB writes each followed by
#     fdatasync, O_DIRECT random 4 KiB reads; and the bytes each durable system wrote to
#     the disk during its peak SET run (/proc/diskstats), as a fraction of the first.
# Workload matrix (workloads/): 90/10 and 50/50 GET/SET mixes, 16- and 960-byte values
# and a zipfian key popularity, for Ocean Liner, Redis and memcached at their batched
# settings. Scale (scale/): GETs and SETs over 10M keys (SCALE_KEYS), Ocean Liner and
# Redis without persistence.
# Each: SET then GET (100-byte values over 1M prefilled keys), 50 connections for RESP,
# SET_CONCURRENCY / GET_CONCURRENCY requests outstanding for UDP; then sweeps: UDP SETs at
# 2048-8192 outstanding, UDP GETs at 64 and 4096, the same with batches of 16, RESP at
# pipeline 16 with 10 and 200 connections. For Ocean Liner, SETs offered open loop
# (`bench --rate`) at 80% and 10% of its SET peak: the latency of a steady load.
#
# Writes bench-results/<date>-<time>/: one JSON report per run, results.csv, results.md
# (the machine, the command, a table with each figure as a ratio of the best Redis figure
# for the same op) and SVG charts drawn by `ocean-liner plot` (throughput, latency
# distributions, operations per second over each run). Installs redis-server from
# Debian's packages if missing: redis-server, memcached, etcd-server, etcd-client, fio.
#
#   tools/compare.sh   (env: DURATION=10 KEYS=1000000 SET_CONCURRENCY=16384
#                       GET_CONCURRENCY=512 CLIENTS=50 SCALE_KEYS=10000000
#                       SECTIONS="ceiling ocean-liner cluster redis memcached workloads
#                       scale etcd fio" OCEAN_LINER=path/to/binary)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${OCEAN_LINER:-$here/target/release/ocean-liner}
duration=${DURATION:-10}
keys=${KEYS:-1000000}
set_c=${SET_CONCURRENCY:-16384}
get_c=${GET_CONCURRENCY:-512}
clients=${CLIENTS:-50}
scale_keys=${SCALE_KEYS:-10000000}
sections=${SECTIONS:-ceiling ocean-liner cluster redis memcached workloads scale etcd fio}
[ -n "${OCEAN_LINER:-}" ] || (cd "$here" && cargo build --release --quiet)
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-cli >/dev/null || missing+=(redis-tools)
command -v memcached >/dev/null || missing+=(memcached)
command -v etcd >/dev/null || missing+=(etcd-server)
command -v etcdctl >/dev/null || missing+=(etcd-client)
command -v fio >/dev/null || missing+=(fio)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
want() { [[ " $sections " == *" $1 "* ]]; }
stamp=$(date -u +%Y-%m-%d-%H%M%S)
out=$here/bench-results/$stamp
mkdir -p "$out" "$out/workloads" "$out/scale" "$out/etcd" "$out/fio" "$out/disk"
work=$(mktemp -d /var/tmp/ol-compare.XXXXXX)
udp=9300
resp=6391
mc=11311
server=
# Where runs write their JSON (a subdirectory for the workload matrix and the scale runs).
dest=$out
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
        >"$dest/$system.$label.json" 2>"$work/$system.$label.log"
}

# The block device under the work directory, as /proc/diskstats names it.
disk=$(basename "$(df --output=source "$work" | tail -1)")
sectors_written() { awk -v d="$disk" '$3 == d {print $10}' /proc/diskstats; }

# run_disk SYSTEM LABEL ARGS...: `run`, recording the bytes written to the disk meanwhile
# (the whole run: prefill-free, warm-up included) in disk/SYSTEM.LABEL.json.
run_disk() {
    local before after t0 t1
    before=$(sectors_written)
    t0=$(date +%s.%N)
    run "$@"
    t1=$(date +%s.%N)
    after=$(sectors_written)
    if [ -n "$before" ] && [ -n "$after" ]; then
        echo "{\"bytes\":$(((after - before) * 512)),\"seconds\":$(python3 -c "print(round($t1 - $t0, 3))")}" \
            >"$out/disk/$1.$2.json"
    fi
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
    run_disk "$system" set-p16-c200 --protocol resp --server "127.0.0.1:$resp" --workload set \
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
        run_disk "$system" "set-udp$c-b16" --server "127.0.0.1:$udp" --workload set --sockets 16 \
            --concurrency "$c" --pipeline 16
    done
    # The SET p99 at a steady 80% of the peak just measured (and at 10%, the floor): an
    # open loop (`--rate`), each SET timed from when it was due, with room for every
    # SET the rate keeps in flight (a closed loop at 80% would show its own queue).
    local peak
    peak=$(python3 - "$dest" "$system" <<'PY'
import glob, json, sys
runs = [json.load(open(p)) for p in glob.glob(f"{sys.argv[1]}/{sys.argv[2]}.set-udp*.json")]
print(max(r["ops_per_sec"] for r in runs))
PY
)
    for pct in 80 10; do
        run "$system" "set-open$pct" --server "127.0.0.1:$udp" --workload set --sockets 4 \
            --concurrency 65536 --pipeline 16 \
            --rate "$(python3 -c "print(round($peak * $pct / 100))")"
    done
    # Batched GETs peak with fewer sockets: 4 against 16 at 4096 outstanding ran
    # 740-840k against 550-565k GET/s (the load generator's receive calls).
    for c in 64 "$get_c" 4096; do
        run "$system" "get-udp$c-b16" --server "127.0.0.1:$udp" --workload get --sockets 4 \
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

# memcached with its UDP port only. Its sockets take the kernel's default receive buffer
# (memcached sets none), too small for thousands of datagrams in flight: when root, the
# default is raised while it starts (and put back), its best setting here.
start_memcached() {
    local rmem
    rmem=$(sysctl -n net.core.rmem_default)
    [ "$(id -u)" = 0 ] && sysctl -qw net.core.rmem_default=$((16 << 20))
    memcached -u "$(id -un)" -l 127.0.0.1 -p 0 -U "$mc" -m 4096 -t 2 \
        >"$work/memcached.server.log" 2>&1 &
    server=$!
    sleep 0.5
    [ "$(id -u)" = 0 ] && sysctl -qw net.core.rmem_default="$rmem"
    return 0
}

memcached_runs() {
    local system=memcached
    start_memcached
    local to=(--protocol memcache --server "127.0.0.1:$mc" --sockets 16)
    run "$system" set-udp "${to[@]}" --workload set --prefill --concurrency "$get_c"
    run "$system" get-udp "${to[@]}" --workload get --concurrency "$get_c"
    run "$system" get-udp4096 "${to[@]}" --workload get --concurrency 4096
    for c in 2048 4096 8192 "$set_c"; do
        run "$system" "set-udp$c-b16" "${to[@]}" --workload set --concurrency "$c" --pipeline 16
    done
    for c in 64 "$get_c" 4096; do
        run "$system" "get-udp$c-b16" "${to[@]}" --workload get --concurrency "$c" --pipeline 16
    done
    stop_server
}

# One system's workload matrix at its batched setting: READ_C outstanding for GETs, WRITE_C
# for SETs and mixes (its peak counts), then how to reach it and batch.
matrix() {
    local system=$1 read_c=$2 write_c=$3
    shift 3
    dest=$out/workloads
    run "$system" mixed90 "$@" --workload mixed --read-ratio 0.9 --concurrency "$write_c"
    run "$system" mixed50 "$@" --workload mixed --read-ratio 0.5 --concurrency "$write_c"
    run "$system" get-zipf "$@" --workload get --key-dist zipfian --concurrency "$read_c"
    run "$system" set-zipf "$@" --workload set --key-dist zipfian --concurrency "$write_c"
    # 960 bytes: the largest value one Ocean Liner request datagram carries (1000 does not
    # fit its 1024-byte datagrams); every system runs the same sizes.
    for size in 16 960; do
        run "$system" "set-v$size" "$@" --workload set --value-size "$size" --prefill \
            --concurrency "$write_c"
        run "$system" "get-v$size" "$@" --workload get --value-size "$size" \
            --concurrency "$read_c"
    done
    dest=$out
}

workloads() {
    local ol=(--server "127.0.0.1:$udp" --sockets 16 --pipeline 16)
    rm -rf "$work/data"
    "$bin" --data-dir "$work/data" --client-port "$udp" --resp-port "$resp" --cores 2 \
        2>"$work/workloads.server.log" &
    server=$!
    wait_resp
    dest=$out/workloads run ocean-liner prefill "${ol[@]}" --workload set --prefill \
        --concurrency "$set_c" --duration 1
    matrix ocean-liner 4096 "$set_c" "${ol[@]}"
    stop_server
    for mode in always none; do
        rm -rf "$work/redis" && mkdir -p "$work/redis"
        if [ $mode = always ]; then persist=(--appendonly yes --appendfsync always)
        else persist=(--appendonly no); fi
        redis-server --port "$resp" --dir "$work/redis" --save '' --daemonize no "${persist[@]}" \
            >"$work/workloads.redis.log" 2>&1 &
        server=$!
        wait_resp
        local rd=(--protocol resp --server "127.0.0.1:$resp" --pipeline 16)
        dest=$out/workloads run "redis-$mode" prefill "${rd[@]}" --workload set --prefill \
            --concurrency $((clients * 16)) --duration 1
        matrix "redis-$mode" $((clients * 16)) $((clients * 16)) "${rd[@]}"
        stop_server
    done
    start_memcached
    local mcd=(--protocol memcache --server "127.0.0.1:$mc" --sockets 16 --pipeline 16)
    dest=$out/workloads run memcached prefill "${mcd[@]}" --workload set --prefill \
        --concurrency 4096 --duration 1
    matrix memcached 4096 4096 "${mcd[@]}"
    stop_server
}

# GETs and SETs over SCALE_KEYS keys (prefilled), Ocean Liner and Redis without
# persistence at their batched settings.
scale() {
    local k=$scale_keys
    dest=$out/scale
    rm -rf "$work/data"
    "$bin" --data-dir "$work/data" --client-port "$udp" --resp-port "$resp" --cores 2 \
        2>"$work/scale.server.log" &
    server=$!
    wait_resp
    local ol=(--server "127.0.0.1:$udp" --sockets 16 --pipeline 16 --keys "$k")
    run ocean-liner set-b16 "${ol[@]}" --workload set --prefill --concurrency "$set_c"
    run ocean-liner get-b16 "${ol[@]}" --workload get --concurrency 4096
    stop_server
    rm -rf "$work/redis" && mkdir -p "$work/redis"
    redis-server --port "$resp" --dir "$work/redis" --save '' --daemonize no --appendonly no \
        >"$work/scale.redis.log" 2>&1 &
    server=$!
    wait_resp
    local rd=(--protocol resp --server "127.0.0.1:$resp" --pipeline 16 --keys "$k")
    run redis-none set-p16 "${rd[@]}" --workload set --prefill --concurrency $((clients * 16))
    run redis-none get-p16 "${rd[@]}" --workload get --concurrency $((clients * 16))
    stop_server
    dest=$out
}

# etcd through its own client: `etcdctl check perf --load l` against one member and
# against three, each on loopback with its data directory under the work directory.
etcd_runs() {
    local n i members endpoints cluster
    for n in 1 3; do
        members=()
        endpoints=
        cluster=
        for i in $(seq "$n"); do
            cluster+="${cluster:+,}e$i=http://127.0.0.1:$((23800 + i))"
            endpoints+="${endpoints:+,}127.0.0.1:$((23700 + i))"
        done
        rm -rf "$work/etcd"
        for i in $(seq "$n"); do
            etcd --name "e$i" --data-dir "$work/etcd/e$i" \
                --listen-client-urls "http://127.0.0.1:$((23700 + i))" \
                --advertise-client-urls "http://127.0.0.1:$((23700 + i))" \
                --listen-peer-urls "http://127.0.0.1:$((23800 + i))" \
                --initial-advertise-peer-urls "http://127.0.0.1:$((23800 + i))" \
                --initial-cluster "$cluster" --initial-cluster-state new \
                >"$work/etcd-$n-$i.log" 2>&1 &
            members+=($!)
        done
        for _ in $(seq 100); do
            etcdctl --endpoints="$endpoints" endpoint health >/dev/null 2>&1 && break
            sleep 0.2
        done
        etcdctl --endpoints="$endpoints" check perf --load l 2>&1 | tr '\r' '\n' \
            >"$out/etcd/check-perf-l.members$n.txt" || true
        kill "${members[@]}" 2>/dev/null || true
        wait "${members[@]}" 2>/dev/null || true
    done
    rm -rf "$work/etcd"
}

# The disk under the work directory, with fio (JSON in fio/).
fio_runs() {
    local f=$work/fio.data common=(--output-format=json --runtime=10 --time_based --ramp_time=1)
    fio --name=prepare --filename="$f" --size=2g --rw=write --bs=1m --direct=1 \
        --ioengine=io_uring --iodepth=8 --output=/dev/null
    fio --name=seq-write-1m-qd8 --filename="$f" --size=2g --rw=write --bs=1m --direct=1 \
        --ioengine=io_uring --iodepth=8 "${common[@]}" --output="$out/fio/seq-write.json"
    fio --name=write-4k-fdatasync --filename="$f" --size=256m --rw=write --bs=4k \
        --ioengine=sync --fdatasync=1 "${common[@]}" --output="$out/fio/fdatasync.json"
    fio --name=rand-read-4k-qd32 --filename="$f" --size=2g --rw=randread --bs=4k --direct=1 \
        --ioengine=io_uring --iodepth=32 "${common[@]}" --output="$out/fio/rand-read.json"
    rm -f "$f"
}

if want ceiling; then udp_ceiling; fi
if want ocean-liner; then
    ocean_liner ocean-liner
    ocean_liner ocean-liner-2ms --batch-window-ms 2
fi
if want cluster; then cluster3; fi
if want redis; then
    redis redis-always --appendonly yes --appendfsync always
    redis redis-none --appendonly no
fi
if want memcached; then memcached_runs; fi
if want workloads; then workloads; fi
if want scale; then scale; fi
if want etcd; then etcd_runs; fi
if want fio; then fio_runs; fi

machine="$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'))"
machine="$machine, $(free -g | awk '/Mem:/ {print $2}') GiB, Linux $(uname -r)"
machine="$machine, Redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/')"
machine="$machine, memcached $(memcached --version | cut -d' ' -f2)"
machine="$machine, etcd $(etcd --version | sed -n 's/^etcd Version: //p'), $(fio --version)"
for sub in . workloads scale; do
    if ls "$out/$sub"/*.json >/dev/null 2>&1; then "$bin" plot "$out/$sub" >/dev/null; fi
done
python3 "$here/tools/compare_report.py" "$out" "$machine" \
    "tools/compare.sh (DURATION=$duration KEYS=$keys SET_CONCURRENCY=$set_c GET_CONCURRENCY=$get_c CLIENTS=$clients SCALE_KEYS=$scale_keys)"
echo "results: $out (logs in $work)"
