#!/usr/bin/env bash
# respool in front of a Redis Cluster against respool in front of one Redis,
# with direct Redis for reference: one fresh redis-server, a cluster of
# three primaries (no replicas) formed with `redis-cli --cluster create`,
# and two respools (--threads 1), loaded side by side by `respool bench`
# in interleaved rounds (A: direct Redis, B: respool → Redis, C: respool →
# cluster), at pipeline 1 and 16. Then, for reference, what a cluster-aware
# client gets from the cluster directly (`redis-benchmark --cluster`) and
# from the single Redis.
#
# usage: benches/cluster.sh [RESPOOL_BIN] [DURATION] [ROUNDS] [WORKLOAD]
#   defaults: target/release/respool 5s 3 mixed (80 % GET, 20 % SET)
# Needs: redis-server, redis-cli, redis-benchmark, python3 (free ports).
set -eu
bin=$(realpath "${1:-target/release/respool}"); duration=${2:-5s}; rounds=${3:-3}; workload=${4:-mixed}
dir=$(mktemp -d -t respool-cluster-bench.XXXX); pids=()
# respools start in a command substitution's subshell: their pids go to a file.
cleanup() {
  for p in "${pids[@]}" $(cat "$dir/respool.pids" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] || rm -rf "$dir"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# A cluster node's bus listens on its port + 10000.
node_port() { local p; while :; do p=$(port); [ "$p" -le 55535 ] && { echo "$p"; return; }; done; }
wait_pong() { for _ in $(seq 200); do redis-cli -p "$1" ping 2>/dev/null | grep -q PONG && return 0; sleep 0.05; done; echo "nothing answers on $1"; exit 2; }
redis() { # port [flags...]
  local p=$1; shift; mkdir -p "$dir/$p"
  redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir/$p" \
    --logfile "$dir/$p/redis.log" "$@" & pids+=($!); pid_of[$p]=$!
  wait_pong "$p"
}
declare -A pid_of
# CPU time (clock ticks, user + system) of the processes on ports "$@", summed.
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/${pid_of[$p]}/stat"))); done; echo "$t"; }
single=$(port); redis "$single"
nodes=(); for _ in 1 2 3; do p=$(node_port); redis "$p" --cluster-enabled yes --cluster-config-file nodes.conf; nodes+=("$p"); done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${nodes[@]}") --cluster-yes > "$dir/create.log"
for _ in $(seq 400); do
  [ "$(redis-cli -p "${nodes[0]}" cluster info | grep -c 'cluster_state:ok')" = 1 ] && break; sleep 0.05
done

respool() { # name flags...
  local p; p=$(port); local name=$1; shift
  "$bin" --listen "127.0.0.1:$p" --threads 1 "$@" > "$dir/$name.log" 2>&1 & echo $! >> "$dir/respool.pids"
  for _ in $(seq 200); do grep -q "listen=" "$dir/$name.log" && break; sleep 0.05; done
  wait_pong "$p"; echo "$p"
}
# (respool runs in a command substitution's subshell: find its pid by port.)
pid_on() { ss -ltnpH "sport = :$1" | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1; }
to_single=$(respool single --upstream "redis://127.0.0.1:$single")
seeds=(); for p in "${nodes[@]}"; do seeds+=(--upstream "redis://127.0.0.1:$p"); done
to_cluster=$(respool cluster --cluster "${seeds[@]}")
pid_of[$to_single]=$(pid_on "$to_single"); pid_of[$to_cluster]=$(pid_on "$to_cluster")
for _ in $(seq 400); do
  [ "$(redis-cli -p "$to_cluster" cluster info | grep -c 'cluster_state:ok')" = 1 ] && break; sleep 0.05
done

for pipeline in 1 16; do
  echo "== 50 clients, pipeline $pipeline, $workload: A direct Redis, B respool → Redis, C respool → cluster of 3"
  "$bin" bench --target "127.0.0.1:$single" --compare "127.0.0.1:$to_single" --compare "127.0.0.1:$to_cluster" \
    --workload "$workload" --clients 50 --pipeline "$pipeline" --duration "$duration" --rounds "$rounds" \
    --key-prefix "p$pipeline:"
done
echo "== INFO respool of the cluster's respool"
redis-cli -p "$to_cluster" info respool | grep -E '^(cluster_|requests_per_lane_write)' || true
for pipeline in 1 16; do
  echo "== reference, redis-benchmark -c 50 -P $pipeline -r 100000 -t get,set: cluster-aware client on the cluster, then the single Redis"
  redis-benchmark --cluster -h 127.0.0.1 -p "${nodes[0]}" -c 50 -P "$pipeline" -r 100000 -n 400000 -t get,set -q 2>/dev/null | tr '\r' '\n' | grep 'requests per second' || true
  redis-benchmark -h 127.0.0.1 -p "$single" -c 50 -P "$pipeline" -r 100000 -n 400000 -t get,set -q | tr '\r' '\n' | grep 'requests per second' || true
done
# Where the CPU goes: one run per respool, the CPU time respool and the
# Redis servers behind it spent per request (µs, user + system).
for pipeline in 1 16; do
  for side in single cluster; do
    if [ "$side" = single ]; then port=$to_single; servers=("$single"); else port=$to_cluster; servers=("${nodes[@]}"); fi
    r0=$(ticks "$port"); s0=$(ticks "${servers[@]}")
    "$bin" bench --target "127.0.0.1:$port" --workload "$workload" --clients 50 --pipeline "$pipeline" \
      --duration "$duration" --key-prefix "cpu$pipeline:" --json > "$dir/cpu.json"
    r1=$(ticks "$port"); s1=$(ticks "${servers[@]}")
    python3 - "$dir/cpu.json" "$side" "$pipeline" "$((r1 - r0))" "$((s1 - s0))" <<'PY'
import json, os, sys
report = json.load(open(sys.argv[1]))
requests = report["requests"]
hz = os.sysconf("SC_CLK_TCK")
us = lambda ticks: int(ticks) / hz * 1e6 / requests
print(f"respool -> {sys.argv[2]}, pipeline {sys.argv[3]}: {report['ops_per_sec']:.0f} ops/s; "
      f"CPU per request: respool {us(sys.argv[4]):.2f} us, Redis {us(sys.argv[5]):.2f} us")
PY
  done
done
