#!/usr/bin/env python3
"""Samples a running respool's `INFO respool` counters at an interval and
prints, per interval, what they moved by: requests per second, requests per
write to Redis (how well the lanes batch), writes per second, and the retry
counters (held, resent, failed) and refused clients when they move.

usage: benches/info_sampler.py [--addr 127.0.0.1:6380] [--interval 0.25]
           [--duration 10] [--password PASSWORD]

Run any load against respool meanwhile, e.g.

  redis-benchmark -p 6380 -c 50 -P 16 -n 20000000 -t get -q &
  python3 benches/info_sampler.py --duration 12

It only reads `INFO respool`, which respool answers itself: Redis never sees
these requests. Each sample is one short connection, so it shows in the
`requests` counter (one request per sample).
"""
import argparse
import socket
import sys
import time


def read_reply(f):
    """One reply: a simple string, or a bulk string's text; exits on an error."""
    line = f.readline()
    if not line:
        sys.exit("respool closed the connection")
    if line.startswith(b"-"):
        sys.exit(line.decode(errors="replace").strip())
    if line.startswith(b"$"):
        n = int(line[1:])
        return f.read(n + 2)[:n].decode()
    return line.decode(errors="replace").strip()


def read_info(host, port, password):
    with socket.create_connection((host, port), timeout=5) as s:
        out = b""
        if password is not None:
            secret = password.encode()
            out += b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(secret), secret)
        out += b"*2\r\n$4\r\nINFO\r\n$7\r\nrespool\r\n"
        s.sendall(out)
        f = s.makefile("rb")
        if password is not None:
            read_reply(f)
        text = read_reply(f)
    if not text.startswith("# Respool"):
        sys.exit(f"not respool's INFO (is {host}:{port} a respool?): {text[:60]!r}")
    fields = {}
    for line in text.split("\r\n"):
        if ":" in line and not line.startswith("#"):
            name, value = line.split(":", 1)
            fields[name] = value
    return fields


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--addr", default="127.0.0.1:6380")
    ap.add_argument("--interval", type=float, default=0.25)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--password", default=None)
    args = ap.parse_args()
    host, port = args.addr.rsplit(":", 1)
    port = int(port)

    def count(fields, name):
        return int(fields.get(name, 0))

    prev, prev_t = read_info(host, port, args.password), time.time()
    start = prev_t
    print(f"{'time':>7}  {'req/s':>10}  {'req/write':>9}  {'writes/s':>9}  other")
    while time.time() - start < args.duration:
        time.sleep(args.interval)
        cur, t = read_info(host, port, args.password), time.time()
        dt = t - prev_t
        delta = {k: count(cur, k) - count(prev, k) for k in (
            "requests", "lane_writes", "lane_requests_written", "requests_held",
            "requests_resent", "requests_failed", "rejected_clients")}
        per_write = delta["lane_requests_written"] / delta["lane_writes"] if delta["lane_writes"] else 0.0
        other = " ".join(f"{k}+{v}" for k, v in delta.items()
                         if v and k in ("requests_held", "requests_resent", "requests_failed", "rejected_clients"))
        print(f"{t - start:6.2f}s  {delta['requests'] / dt:10.0f}  {per_write:9.1f}  "
              f"{delta['lane_writes'] / dt:9.0f}  {other}", flush=True)
        prev, prev_t = cur, t


if __name__ == "__main__":
    main()
