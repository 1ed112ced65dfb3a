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
           [--unix-clients] [--unix-upstream] [--keyspace N] [--cluster N]
           [--profile FILE]

The proxy is started as
  PATH --listen 127.0.0.1:PORT --upstream redis://127.0.0.1:PORT --threads 1 EXTRA
(any respool build, or examples/baseline_mux). `--unix-clients` also has it
listen on a Unix socket (`--listen unix:…`), which the load then uses;
`--unix-upstream` connects it to Redis's Unix socket (`unix://…`). With
`--cluster N`, the upstream is a Redis Cluster of N primaries (no replicas)
formed with `redis-cli --cluster create`, and the proxy gets `--cluster`
and every node as a seed; `--keyspace N` has redis-benchmark use random
keys out of N (`-r`), so that they spread over the primaries.
`--profile FILE` keeps callgrind's dump of the large load there (the
warm-up and small loads are not in it), for
`benches/callgrind_functions.py FILE REQUESTS`.
"""
import argparse
import glob
import os
import shutil
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


def load(port, clients, pipeline, test, requests, socket_path=None, keyspace=None):
    target = ["-s", socket_path] if socket_path else ["-p", str(port)]
    spread = ["-r", str(keyspace)] if keyspace else []
    subprocess.run(
        ["redis-benchmark", *target, "-c", str(clients), "-P", str(pipeline),
         "-n", str(requests), "-t", test, "-q", *spread],
        check=True, stdout=subprocess.DEVNULL)


def dump(pid, outdir, label, keep=None):
    """Dumps (and zeroes) the counters; returns the instructions since the
    last dump (and copies the dump to `keep`, if given)."""
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
                        if keep:
                            shutil.copyfile(path, keep)
                        return int(line.split()[1])
        time.sleep(0.1)
    sys.exit("callgrind did not write a dump")


def form_cluster(ports):
    """Joins the nodes on `ports` into a cluster of primaries, and waits
    until every node says cluster_state:ok. One node (redis-cli wants
    three) simply takes every slot: routing costs the same, and every
    request goes to one server, as without --cluster."""
    if len(ports) == 1:
        subprocess.run(["redis-cli", "-p", str(ports[0]), "cluster", "addslotsrange",
                        "0", "16383"], check=True, stdout=subprocess.DEVNULL)
    else:
        subprocess.run(["redis-cli", "--cluster", "create",
                        *[f"127.0.0.1:{p}" for p in ports],
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL)
    deadline = time.time() + 60
    for port in ports:
        while True:
            out = subprocess.run(["redis-cli", "-p", str(port), "cluster", "info"],
                                 capture_output=True, text=True).stdout
            if "cluster_state:ok" in out:
                break
            if time.time() > deadline:
                sys.exit(f"the cluster did not form: {out}")
            time.sleep(0.1)


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
    ap.add_argument("--keyspace", type=int, default=None,
                    help="random keys out of this many (redis-benchmark -r), else one key")
    ap.add_argument("--cluster", type=int, default=0,
                    help="front a Redis Cluster of this many primaries")
    ap.add_argument("--profile", default=None,
                    help="keep callgrind's dump of the large load in this file")
    args = ap.parse_args()
    small = args.small or (10_000 if args.pipeline == 1 else 50_000)
    large = args.large or 3 * small

    with tempfile.TemporaryDirectory() as tmp:
        proxy_port = free_port()
        ports = [free_port() for _ in range(max(args.cluster, 1))]
        servers = []
        for i, port in enumerate(ports):
            node_dir = os.path.join(tmp, f"node{i}")
            os.mkdir(node_dir)
            extra = (["--cluster-enabled", "yes", "--cluster-port", str(free_port())]
                     if args.cluster else ["--unixsocket", f"{tmp}/redis.sock"])
            servers.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", node_dir, *extra],
                stdout=subprocess.DEVNULL))
        proxy = None
        try:
            for port, server in zip(ports, servers):
                wait_pong(port, server)
            upstream = ["--upstream", f"unix://{tmp}/redis.sock" if args.unix_upstream
                        else f"redis://127.0.0.1:{ports[0]}"]
            if args.cluster:
                form_cluster(ports)
                upstream = ["--cluster", "--upstream",
                            ",".join(f"redis://127.0.0.1:{p}" for p in ports)]
            sock = f"{tmp}/respool.sock" if args.unix_clients else None
            unix_listen = ["--listen", f"unix:{sock}"] if sock else []
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/callgrind.out.%p",
                   args.proxy, "--listen", f"127.0.0.1:{proxy_port}", *unix_listen,
                   *upstream, "--threads", "1",
                   *args.extra.split()]
            proxy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_pong(proxy_port, proxy)
            # Warm up: lanes connected, buffers grown, clients' code paths hot.
            load(proxy_port, args.clients, args.pipeline, args.test, small, sock, args.keyspace)
            dump(proxy.pid, tmp, "warm-up")
            load(proxy_port, args.clients, args.pipeline, args.test, small, sock, args.keyspace)
            a = dump(proxy.pid, tmp, "small")
            load(proxy_port, args.clients, args.pipeline, args.test, large, sock, args.keyspace)
            b = dump(proxy.pid, tmp, "large", args.profile)
            per = (b - a) / (large - small)
            print(f"{args.test} clients={args.clients} pipeline={args.pipeline}: "
                  f"{per:.0f} instructions per request "
                  f"({small} requests: {a}, {large}: {b})")
        finally:
            for p in (proxy, *servers):
                if p is not None:
                    p.terminate()
                    try:
                        p.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        p.kill()


if __name__ == "__main__":
    main()
