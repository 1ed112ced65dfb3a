#!/usr/bin/env python3
"""CPU time per request of each process — redis-benchmark, Redis and the proxy
— with Redis direct and through one or more proxies, in alternating rounds.

This is the accounting behind the README's "What stands in the way of the
unmet targets": where throughput is bound by two shared cores, a proxy can
only beat direct Redis if what it costs per request is less than what its
batching saves Redis.

usage: benches/cpu_per_request.py [--rounds N] [--clients N] [--pipeline N]
           [--test get] [--requests N] NAME=COMMAND ...

COMMAND is the proxy's command line, with {listen} and {upstream} (host:port)
filled in, or `twemproxy` for nutcracker (Debian: nutcracker) with one server
connection, e.g.

  python3 benches/cpu_per_request.py --clients 50 \\
    "respool=target/release/respool --listen {listen} --upstream redis://{upstream}" \\
    "relay=target/release/examples/relay_floor --listen {listen} --upstream redis://{upstream}" \\
    "twemproxy=twemproxy"

It starts its own redis-server on a free port in a temporary directory (and
stops it), so it never touches another Redis. Per process it reports user and
system CPU per request, in µs (from /proc/PID/stat, and wait4 for
redis-benchmark), and the machine's idle share during the run (/proc/stat).
A proxy's figures cover its whole process, with every thread.
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HZ = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what):
    deadline = time.time() + 15
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"*1\r\n$4\r\nPING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"{what} did not answer PING on port {port}")


def cpu_seconds(pid):
    """(user, system) CPU seconds of a process, all threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / HZ, int(fields[12]) / HZ


def machine_times():
    """(idle, total) CPU seconds of the whole machine."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    return fields[3] / HZ, sum(fields) / HZ


def run_once(args, redis_pid, port, proxy):
    n = args.requests

    def snapshot():
        return cpu_seconds(redis_pid), cpu_seconds(proxy.pid) if proxy else (0, 0), machine_times()

    before = snapshot()
    bench = subprocess.Popen(
        ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(args.clients),
         "-P", str(args.pipeline), "-n", str(n), "-t", args.test, "-r", "100000", "-q", "--csv"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = bench.stdout.read()
    _, _, usage = os.wait4(bench.pid, 0)
    after = snapshot()
    rps = float(out.strip().splitlines()[-1].split(",")[1].strip('"'))
    per = lambda a, b: (b - a) * 1e6 / n  # noqa: E731
    row = {
        "rps": rps,
        "bench": (usage.ru_utime * 1e6 / n, usage.ru_stime * 1e6 / n),
        "redis": (per(before[0][0], after[0][0]), per(before[0][1], after[0][1])),
        "proxy": (per(before[1][0], after[1][0]), per(before[1][1], after[1][1])),
    }
    idle = after[2][0] - before[2][0]
    total = after[2][1] - before[2][1]
    row["idle"] = 100 * idle / total if total else 0.0
    row["total"] = sum(sum(row[k]) for k in ("bench", "redis", "proxy"))
    return row


def twemproxy_argv(tmp, port, rport):
    """nutcracker listening on `port` in front of the Redis on `rport`, with one
    server connection (its default), its config in `tmp`."""
    config = os.path.join(tmp, f"nutcracker-{port}.yml")
    with open(config, "w") as f:
        f.write(f"pool:\n  listen: 127.0.0.1:{port}\n  redis: true\n"
                f"  servers:\n   - 127.0.0.1:{rport}:1\n")
    return ["nutcracker", "-c", config, "-s", str(free_port()), "-a", "127.0.0.1"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--pipeline", type=int, default=1)
    ap.add_argument("--test", default="get")
    ap.add_argument("--requests", type=int, default=300000)
    ap.add_argument("proxies", nargs="*", metavar="NAME=COMMAND")
    args = ap.parse_args()
    proxies = [p.split("=", 1) for p in args.proxies]

    with tempfile.TemporaryDirectory() as tmp:
        rport = free_port()
        redis = subprocess.Popen(
            ["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
        try:
            wait_port(rport, redis, "redis-server")
            results = {}
            print(f"{'target':<12}{'req/s':>9}  {'bench u+s':>12}  {'redis u+s':>12}  "
                  f"{'proxy u+s':>12}  {'total':>6}  {'idle':>5}   (µs per request)")
            for _ in range(args.rounds):
                for name, command in [("direct", None)] + proxies:
                    proxy, port = None, rport
                    if command:
                        port = free_port()
                        if command == "twemproxy":
                            argv = twemproxy_argv(tmp, port, rport)
                        else:
                            argv = command.format(listen=f"127.0.0.1:{port}", upstream=f"127.0.0.1:{rport}").split()
                        proxy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        wait_port(port, proxy, name)
                    try:
                        row = run_once(args, redis.pid, port, proxy)
                    finally:
                        if proxy:
                            proxy.kill()
                            proxy.wait()
                    results.setdefault(name, []).append(row)
                    f = lambda p: f"{p[0]:5.2f}+{p[1]:5.2f}"  # noqa: E731
                    print(f"{name:<12}{row['rps']:9.0f}  {f(row['bench'])}  {f(row['redis'])}  "
                          f"{f(row['proxy']) if command else '-':>12}  {row['total']:6.2f}  {row['idle']:4.1f}%",
                          flush=True)
            print("\nmedians:")
            direct = statistics.median(r["rps"] for r in results["direct"])
            for name, rows in results.items():
                rps = statistics.median(r["rps"] for r in rows)
                total = statistics.median(r["total"] for r in rows)
                print(f"{name:<12}{rps:9.0f} req/s  {rps / direct:5.2f} of direct  {total:6.2f} µs per request in all")
        finally:
            redis.terminate()
            redis.wait()


if __name__ == "__main__":
    main()
