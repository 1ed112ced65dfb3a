#!/usr/bin/env bash
# respool with TLS on either side, side by side with plain respool and with
# Redis direct (plain and TLS), all in front of one redis-server that has a
# plain and a TLS port. redis-benchmark -t get at 1 client and at 50 clients
# with pipeline 16; one line per round and load.
#
# usage: benches/tls.sh [RESPOOL_BIN] [ROUNDS]
#   RESPOOL_BIN default target/release/respool; ROUNDS default 3.
# Needs: redis-server and redis-benchmark built with TLS (Debian's are),
# openssl, python3 (for free ports).
set -eu
bin=$(realpath "${1:-target/release/respool}"); rounds=${2:-3}
dir=$(mktemp -d -t respool-tls.XXXX); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
cd "$dir"

# A CA and a certificate for 127.0.0.1 signed by it.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=bench-ca -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout key.pem -out leaf.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > ext.cnf
openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile ext.cnf -out cert.pem 2>/dev/null

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
plain=$(port); tls=$(port)
redis-server --port "$plain" --tls-port "$tls" --tls-cert-file cert.pem --tls-key-file key.pem \
  --tls-ca-cert-file ca.pem --tls-auth-clients no --save '' --appendonly no --dir "$dir" \
  --logfile "$dir/redis.log" & pids+=($!)
serve_tls=(--tls-cert cert.pem --tls-key key.pem)
up_plain=(--upstream "redis://127.0.0.1:$plain")
up_tls=(--upstream "rediss://127.0.0.1:$tls" --upstream-ca ca.pem)
declare -A at
for mode in plain tls-clients tls-upstream both; do
  at[$mode]=$(port)
  case $mode in
    plain) args=("${up_plain[@]}") ;;
    tls-clients) args=("${up_plain[@]}" "${serve_tls[@]}") ;;
    tls-upstream) args=("${up_tls[@]}") ;;
    both) args=("${up_tls[@]}" "${serve_tls[@]}") ;;
  esac
  "$bin" --listen "127.0.0.1:${at[$mode]}" --threads 1 "${args[@]}" > "$dir/$mode.log" 2>&1 & pids+=($!)
done
for p in "$plain" "${at[@]}"; do
  for _ in $(seq 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.05; done
done
for mode in tls-clients both; do
  for _ in $(seq 100); do redis-cli --tls --cacert ca.pem -p "${at[$mode]}" ping >/dev/null 2>&1 && break; sleep 0.05; done
done

rps() { redis-benchmark "$@" -t get -q | tr '\r' '\n' | grep -o '[0-9.]* requests per second' | cut -d' ' -f1; }
client_tls=(--tls --cacert ca.pem)
for r in $(seq "$rounds"); do
  for load in "-c 1 -n 20000" "-c 50 -P 16 -n 2000000"; do
    # shellcheck disable=SC2086 # $load is several flags
    echo "round $r | $load | plain $(rps -p "${at[plain]}" $load)" \
      "| tls-clients $(rps -p "${at[tls-clients]}" "${client_tls[@]}" $load)" \
      "| tls-upstream $(rps -p "${at[tls-upstream]}" $load)" \
      "| both $(rps -p "${at[both]}" "${client_tls[@]}" $load)" \
      "| direct $(rps -p "$plain" $load) | direct-tls $(rps -p "$tls" "${client_tls[@]}" $load)"
  done
done
