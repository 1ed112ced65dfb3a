#!/usr/bin/env bash
# respool over Unix sockets, side by side with respool over TCP and with
# Redis direct over TCP and over its Unix socket, all in front of one
# redis-server with a TCP port and a unixsocket. For a sidecar the line
# that matters is "app -> respool over a Unix socket" against "app -> Redis
# over TCP". redis-benchmark -t get at 1 client and at 50 clients with
# pipeline 16; one line per round and load: requests per second, then in
# brackets the CPU time (user + system, from /proc/PID/stat) per request of
# respool and of redis-server in µs. CPU time includes the kernel's socket
# work, which is where a Unix socket saves, and varies far less than
# throughput on a machine shared with other work.
#
# usage: benches/unix.sh [RESPOOL_BIN] [ROUNDS]
#   RESPOOL_BIN default target/release/respool; ROUNDS default 3.
# Needs: redis-server, redis-benchmark, redis-cli, python3 (for free ports).
set -eu
bin=$(realpath "${1:-target/release/respool}"); rounds=${2:-3}
dir=$(mktemp -d -t respool-unix.XXXX); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
redis_port=$(port); redis_sock="$dir/redis.sock"
redis-server --port "$redis_port" --unixsocket "$redis_sock" --unixsocketperm 700 --save '' \
  --appendonly no --dir "$dir" --logfile "$dir/redis.log" & pids+=($!); redis_pid=$!
declare -A pid_of
# Four respools: client side TCP or Unix socket x upstream TCP or Unix socket.
declare -A listen target
for mode in tcp-tcp unix-tcp tcp-unix unix-unix; do
  case $mode in
    tcp-*) p=$(port); listen[$mode]="127.0.0.1:$p"; target[$mode]="-p $p" ;;
    unix-*) listen[$mode]="unix:$dir/$mode.sock"; target[$mode]="-s $dir/$mode.sock" ;;
  esac
  case $mode in
    *-tcp) up="redis://127.0.0.1:$redis_port" ;;
    *-unix) up="unix://$redis_sock" ;;
  esac
  "$bin" --listen "${listen[$mode]}" --upstream "$up" --threads 1 > "$dir/$mode.log" 2>&1 & pids+=($!)
  pid_of[$mode]=$!
done
target[direct-tcp]="-p $redis_port"; target[direct-unix]="-s $redis_sock"
for t in "${target[@]}"; do
  # shellcheck disable=SC2086 # $t is two flags
  for _ in $(seq 100); do redis-cli $t ping >/dev/null 2>&1 && break; sleep 0.05; done
done

rps() { redis-benchmark "$@" -t get -q | tr '\r' '\n' | grep -o '[0-9.]* requests per second' | cut -d' ' -f1; }
ticks() { [ -n "$1" ] && awk '{print $14 + $15}' "/proc/$1/stat" || echo 0; }
hz=$(getconf CLK_TCK)
for r in $(seq "$rounds"); do
  for load in "-c 1 -n 50000" "-c 50 -P 16 -n 2000000"; do
    n=$(echo "$load" | grep -o -- '-n [0-9]*' | cut -d' ' -f2)
    line="round $r | $load"
    for t in direct-tcp direct-unix tcp-tcp unix-tcp tcp-unix unix-unix; do
      p=${pid_of[$t]:-}; p0=$(ticks "$p"); r0=$(ticks "$redis_pid")
      # shellcheck disable=SC2086 # $load and the target are several flags
      got=$(rps ${target[$t]} $load)
      p1=$(ticks "$p"); r1=$(ticks "$redis_pid")
      cpu=$(awk -v p=$((p1 - p0)) -v r=$((r1 - r0)) -v n="$n" -v hz="$hz" \
        'BEGIN { printf "%.2f/%.2f", p * 1e6 / hz / n, r * 1e6 / hz / n }')
      line="$line | $t $got ($cpu)"
    done
    echo "$line"
  done
done
