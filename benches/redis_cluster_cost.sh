#!/usr/bin/env bash
# What cluster mode costs Redis itself, without respool: one plain
# redis-server and one cluster-enabled redis-server owning all 16 384 slots
# (so no redirection ever happens), each loaded in turn by the same
# redis-benchmark run; the server's CPU time (user + system) per request,
# and the requests per second the benchmark saw.
#
# usage: benches/redis_cluster_cost.sh [PIPELINES] [REQUESTS]
#   defaults: "1 16 64" 400000 (per test; GET and SET, 50 clients, 100 000 keys)
# Needs: redis-server, redis-cli, redis-benchmark, python3 (free ports).
set -eu
pipelines=${1:-1 16 64}; requests=${2:-400000}
dir=$(mktemp -d -t respool-redis-cluster-cost.XXXX); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# A cluster node's bus listens on its port + 10000.
node_port() { local p; while :; do p=$(port); [ "$p" -le 55535 ] && { echo "$p"; return; }; done; }
declare -A pid_of
redis() { # port [flags...]
  local p=$1; shift; mkdir -p "$dir/$p"
  redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir/$p" \
    --logfile "$dir/$p/redis.log" "$@" & pids+=($!); pid_of[$p]=$!
  for _ in $(seq 200); do redis-cli -p "$p" ping 2>/dev/null | grep -q PONG && return 0; sleep 0.05; done
  echo "nothing answers on $p"; exit 2
}
ticks() { awk '{print $14 + $15}' "/proc/${pid_of[$1]}/stat"; }

plain=$(port); redis "$plain"
clustered=$(node_port); redis "$clustered" --cluster-enabled yes --cluster-config-file nodes.conf
redis-cli -p "$clustered" cluster addslotsrange 0 16383 > /dev/null
for _ in $(seq 400); do
  redis-cli -p "$clustered" cluster info | grep -q 'cluster_state:ok' && break; sleep 0.05
done

for pipeline in $pipelines; do
  for p in "$plain" "$clustered"; do
    t0=$(ticks "$p")
    rates=$(redis-benchmark -p "$p" -c 50 -P "$pipeline" -r 100000 -n "$requests" -t set,get -q 2>/dev/null \
      | tr '\r' '\n' | grep 'requests per second' | sed 's/ requests per second.*//' | tr '\n' ' ')
    t1=$(ticks "$p")
    kind=plain; [ "$p" = "$clustered" ] && kind=cluster
    python3 - "$pipeline" "$kind" "$((t1 - t0))" "$((2 * requests))" "$rates" <<'PY'
import os, sys
pipeline, kind, ticks, requests, rates = sys.argv[1:6]
us = int(ticks) / os.sysconf("SC_CLK_TCK") * 1e6 / int(requests)
print(f"pipeline {pipeline:>2} {kind:<7} CPU per request {us:.3f} us   {rates.strip()}")
PY
  done
done
