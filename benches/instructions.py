#!/usr/bin/env python3
"""Instructions per request of a proxy, counted by valgrind's callgrind.

callgrind counts instructions, not seconds, so the figure does not depend on
what else the machine is doing. The proxy runs under callgrind in front of a
fresh redis-server (on a free port, in a temporary directory, stopped at the
end); redis-benchmark drives two loads of different sizes through it, and the
counters are dumped (and zeroed) around each, so the difference divided by
the difference in requests cancels start-up and idle costs.

usage: benches/instructions.py [--proxy PATH] [--clients 50] [--test get]
           [--pipeline 1 --small 10000 --large 30000] [--extra "FLAGS"]
           [--unix-clients] [--unix-upstream]

The proxy is started as
  PATH --listen 127.0.0.1:PORT --upstream redis://127.0.0.1:PORT --threads 1 EXTRA
(any respool build, or examples/baseline_mux). `--unix-clients` also has it
listen on a Unix socket (`--listen unix:…`), which the load then uses;
`--unix-upstream` connects it to Redis's Unix socket (`unix://…`).
"""
import argparse
import glob
import os
import socket
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_pong(port, proc, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"process on port {port} exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"*1\r\n$4\r\nPING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"nothing answered PING on port {port} within {timeout}s")


def load(port, clients, pipeline, test, requests, socket_path=None):
    target = ["-s", socket_path] if socket_path else ["-p", str(port)]
    subprocess.run(
        ["redis-benchmark", *target, "-c", str(clients), "-P", str(pipeline),
         "-n", str(requests), "-t", test, "-q"],
        check=True, stdout=subprocess.DEVNULL)


def dump(pid, outdir, label):
    """Dumps (and zeroes) the counters; returns the instructions since the last dump."""
    before = set(glob.glob(f"{outdir}/callgrind.out.{pid}*"))
    subprocess.run(["callgrind_control", "-d", label, str(pid)], check=True,
                   stdout=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        new = set(glob.glob(f"{outdir}/callgrind.out.{pid}*")) - before
        for path in new:
            with open(path) as f:
                for line in f:
                    if line.startswith("summary:") or line.startswith("totals:"):
                        return int(line.split()[1])
        time.sleep(0.1)
    sys.exit("callgrind did not write a dump")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--proxy", default="target/release/respool")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--pipeline", type=int, default=1)
    ap.add_argument("--test", default="get")
    ap.add_argument("--small", type=int, default=None)
    ap.add_argument("--large", type=int, default=None)
    ap.add_argument("--extra", default="")
    ap.add_argument("--unix-clients", action="store_true")
    ap.add_argument("--unix-upstream", action="store_true")
    args = ap.parse_args()
    small = args.small or (10_000 if args.pipeline == 1 else 50_000)
    large = args.large or 3 * small

    with tempfile.TemporaryDirectory() as tmp:
        redis_port, proxy_port = free_port(), free_port()
        redis = subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
             "--unixsocket", f"{tmp}/redis.sock",
             "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL)
        proxy = None
        try:
            wait_pong(redis_port, redis)
            upstream = (f"unix://{tmp}/redis.sock" if args.unix_upstream
                        else f"redis://127.0.0.1:{redis_port}")
            sock = f"{tmp}/respool.sock" if args.unix_clients else None
            unix_listen = ["--listen", f"unix:{sock}"] if sock else []
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/callgrind.out.%p",
                   args.proxy, "--listen", f"127.0.0.1:{proxy_port}", *unix_listen,
                   "--upstream", upstream, "--threads", "1",
                   *args.extra.split()]
            proxy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_pong(proxy_port, proxy)
            # Warm up: lanes connected, buffers grown, clients' code paths hot.
            load(proxy_port, args.clients, args.pipeline, args.test, small, sock)
            dump(proxy.pid, tmp, "warm-up")
            load(proxy_port, args.clients, args.pipeline, args.test, small, sock)
            a = dump(proxy.pid, tmp, "small")
            load(proxy_port, args.clients, args.pipeline, args.test, large, sock)
            b = dump(proxy.pid, tmp, "large")
            per = (b - a) / (large - small)
            print(f"{args.test} clients={args.clients} pipeline={args.pipeline}: "
                  f"{per:.0f} instructions per request "
                  f"({small} requests: {a}, {large}: {b})")
        finally:
            for p in (proxy, redis):
                if p is not None:
                    p.terminate()
                    try:
                        p.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        p.kill()


if __name__ == "__main__":
    main()
