#!/usr/bin/env bash
# Read scaling with replicas: one primary and two replicas (redis-server
# --replicaof, no Sentinel needed), and three respools in front of them —
# --read-from primary, --read-from replica, and --read-from replica with
# --read-your-writes off — each loaded by `respool bench` with a read-heavy
# mix, side by side with the first in alternating rounds.
#
# usage: benches/replica_reads.sh [RESPOOL_BIN] [DURATION] [ROUNDS] [READ_RATIO]
#   defaults: target/release/respool 5s 3 0.9
# Needs: redis-server, python3 (for free ports).
set -eu
bin=$(realpath "${1:-target/release/respool}"); duration=${2:-5s}; rounds=${3:-3}; ratio=${4:-0.9}
dir=$(mktemp -d -t respool-replicas.XXXX); pids=()
# respools start in a command substitution's subshell: their pids go to a file.
cleanup() {
  for p in "${pids[@]}" $(cat "$dir/respool.pids" 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_pong() { for _ in $(seq 200); do redis-cli -p "$1" ping 2>/dev/null | grep -q PONG && return 0; sleep 0.05; done; echo "nothing answers on $1"; exit 2; }
redis_pids=()
redis() { # port [replicaof-port]
  mkdir -p "$dir/$1"
  redis-server --port "$1" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir/$1" \
    --logfile "$dir/$1/redis.log" ${2:+--replicaof 127.0.0.1 $2} & pids+=($!); redis_pids+=($!)
  wait_pong "$1"
}
primary=$(port); redis "$primary"
for _ in 1 2; do replica=$(port); redis "$replica" "$primary"; done
# CPU time (clock ticks, user + system) of each redis-server: primary first.
ticks() { for p in "${redis_pids[@]}"; do awk '{printf "%d ", $14 + $15}' "/proc/$p/stat"; done; }
for _ in $(seq 200); do
  [ "$(redis-cli -p "$primary" info replication | grep -c 'state=online')" = 2 ] && break; sleep 0.05
done

respool() { # name flags...
  local p; p=$(port); local name=$1; shift
  "$bin" --listen "127.0.0.1:$p" --upstream "redis://127.0.0.1:$primary" --threads 1 "$@" \
    > "$dir/$name.log" 2>&1 & echo $! >> "$dir/respool.pids"
  wait_pong "$p"; echo "$p"
}
on_primary=$(respool primary --read-from primary)
on_replicas=$(respool replicas --read-from replica)
no_ryw=$(respool no-ryw --read-from replica --read-your-writes off)
# Replicas must be checked and usable before the load starts.
for p in "$on_replicas" "$no_ryw"; do
  for _ in $(seq 200); do
    [ "$(redis-cli -p "$p" info respool | grep -c 'state=ok')" = 2 ] && break; sleep 0.05
  done
done

load=(--workload mixed --read-ratio "$ratio" --clients 50 --duration "$duration" --rounds "$rounds")
echo "== --read-from primary (target) vs --read-from replica (compare)"
"$bin" bench --target "127.0.0.1:$on_primary" --compare "127.0.0.1:$on_replicas" --key-prefix "b1:" "${load[@]}"
echo "== --read-from primary (target) vs --read-from replica --read-your-writes off (compare)"
"$bin" bench --target "127.0.0.1:$on_primary" --compare "127.0.0.1:$no_ryw" --key-prefix "b2:" "${load[@]}"
for p in "$on_replicas" "$no_ryw"; do
  echo "== INFO respool of 127.0.0.1:$p"; redis-cli -p "$p" info respool | grep -E '^(replica|reads_on_primary)'
done
# Where the Redis CPU time goes: one run per respool, the servers' CPU
# ticks (1/100 s) during it.
for name in on_primary on_replicas no_ryw; do
  before=($(ticks)); "$bin" bench --target "127.0.0.1:${!name}" --key-prefix "c:" --workload mixed \
    --read-ratio "$ratio" --clients 50 --duration "$duration" --json > "$dir/$name.json"
  after=($(ticks))
  ops=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["ops_per_sec"]))' "$dir/$name.json" 2>/dev/null || echo "?")
  echo "$name: $ops ops/s; CPU ticks primary $((after[0]-before[0])), replicas $((after[1]-before[1])) + $((after[2]-before[2]))"
done
