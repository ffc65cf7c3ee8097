"""A WSGI app for gevent mode's tests: requests that sleep cooperatively, count how
many run at once, stream, read bodies in pieces, send files, fail, or block the hub."""

import os
import time
import zlib

import gevent
from gevent.event import Event

STATE = {"now": 0, "peak": 0, "closed": 0, "served": 0, "arrived": 0}
GATE = Event()


def query(environ):
    out = {}
    for part in environ.get("QUERY_STRING", "").split("&"):
        k, _, v = part.partition("=")
        if k:
            out[k] = v
    return out


def barrier(environ, start_response):
    """Waits (cooperatively) until n requests have arrived, then sleeps s seconds:
    answers "met" when all n were in flight at once, "timeout" otherwise."""
    q = query(environ)
    n, s, t = int(q.get("n", "1")), float(q.get("s", "0")), float(q.get("t", "60"))
    STATE["now"] += 1
    STATE["peak"] = max(STATE["peak"], STATE["now"])
    STATE["arrived"] += 1
    try:
        if STATE["arrived"] >= n:
            GATE.set()
        met = GATE.wait(t)
        gevent.sleep(s)
    finally:
        STATE["now"] -= 1
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"met" if met else b"timeout"]


def counting(environ, start_response, seconds):
    STATE["now"] += 1
    STATE["peak"] = max(STATE["peak"], STATE["now"])
    try:
        gevent.sleep(seconds)
    finally:
        STATE["now"] -= 1
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"slept"]


class Endless:
    """A streamed body that never ends by itself; counts its close() calls."""

    def __init__(self):
        self.n = 0

    def __iter__(self):
        return self

    def __next__(self):
        self.n += 1
        gevent.sleep(0.01)
        return b"tick %d\n" % self.n

    def close(self):
        STATE["closed"] += 1


def application(environ, start_response):
    path = environ["PATH_INFO"]
    query = environ.get("QUERY_STRING", "")
    STATE["served"] += 1
    if path == "/barrier":
        return barrier(environ, start_response)
    if path == "/sleep":
        return counting(environ, start_response, float(query or 1))
    if path == "/stats":
        start_response("200 OK", [("Content-Type", "text/plain")])
        body = "now=%(now)d peak=%(peak)d closed=%(closed)d" % STATE
        return [body.encode()]
    if path == "/reset":
        STATE.update(now=0, peak=0, closed=0)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])

        def chunks():
            for i in range(5):
                gevent.sleep(0.05)
                yield b"chunk %d\n" % i

        return chunks()
    if path == "/endless":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Endless()
    if path == "/body":
        reader = environ["wsgi.input"]
        digest = 1
        total = pieces = 0
        while True:
            piece = reader.read(65536)
            if not piece:
                break
            gevent.sleep(0)
            digest = zlib.adler32(piece, digest)
            total += len(piece)
            pieces += 1
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%d %d %d" % (total, pieces, digest)]
    if path == "/file":
        f = open(os.path.join(os.path.dirname(__file__), "app.py"), "rb")
        start_response("200 OK", [("Content-Type", "text/x-python")])
        return environ["wsgi.file_wrapper"](f, 4096)
    if path == "/boom":
        raise RuntimeError("boom in a greenlet")
    if path == "/block":
        # Not monkey-patched: holds the whole hub.
        time.sleep(float(query or 1.5))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"blocked"]
    if path == "/env":
        start_response("200 OK", [("Content-Type", "text/plain")])
        keys = ("wsgi.multithread", "wsgi.multiprocess")
        return [" ".join("%s=%s" % (k, environ[k]) for k in keys).encode()]
    if path == "/patched":
        from gevent import monkey

        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"socket=%s" % str(monkey.is_module_patched("socket")).encode()]
    if path == "/pid":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(os.getpid()).encode()]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Hello World"]
