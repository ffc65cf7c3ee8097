#!/usr/bin/env python3
"""Memory of one forklift worker holding N idle keep-alive connections.

Usage: bench/idle_conns.py --pid PID --port PORT [--connections 10000]

Opens N connections to 127.0.0.1:PORT, sends one keep-alive request on each, reads the
response, keeps every connection open, and prints the server's RSS before and after.
"""
import argparse
import resource
import selectors
import socket
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--connections", type=int, default=10000)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, a.connections + 1000), hard))
    before = rss_kib(a.pid)
    socks = []
    req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    for i in range(a.connections):
        s = socket.create_connection(("127.0.0.1", a.port))
        s.sendall(req)
        socks.append(s)
        if len(socks) % 500 == 0:
            for t in socks[-500:]:
                t.recv(4096)
    for t in socks[len(socks) - len(socks) % 500:]:
        t.recv(4096)
    time.sleep(1.5)
    after = rss_kib(a.pid)
    print(f"connections={len(socks)} rss_before={before} KiB rss_after={after} KiB "
          f"extra={(after - before) / 1024:.1f} MiB per_conn={(after - before) * 1024 / len(socks):.0f} B")


if __name__ == "__main__":
    main()
