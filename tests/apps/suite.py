"""WSGI test app for tests/python.rs: one route per behaviour under test.

`application` is the raw app; `validated` is the same app wrapped in
wsgiref.validate.validator (which raises on any PEP 3333 violation by either side).
"""

import asyncio
import json
import os
import sys
import threading
import time
from wsgiref.validate import validator

import forklift

CLOSED = {"count": 0}


def _at_exit():
    sys.stderr.write("suite.py: atexit ran in %d\n" % os.getpid())


if os.environ.get("FORKLIFT_TEST_ATEXIT"):
    import atexit
    atexit.register(_at_exit)
OFFLOADED = []
_lock = threading.Lock()


def _text(start_response, body, status="200 OK", ctype="text/plain"):
    if isinstance(body, str):
        body = body.encode("utf-8")
    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]


class Closing:
    """An iterable that records close()."""

    def __init__(self, chunks):
        self.chunks = chunks

    def __iter__(self):
        for c in self.chunks:
            yield c

    def close(self):
        with _lock:
            CLOSED["count"] += 1


def _endless():
    chunk = b"x" * 65536
    while True:
        yield chunk


def _environ_json(environ):
    out = {}
    for k, v in environ.items():
        if isinstance(v, str):
            out[k] = v
        elif isinstance(v, (bool, int, tuple)):
            out[k] = v
    out["wsgi.input.type"] = type(environ["wsgi.input"]).__name__
    return json.dumps(out, sort_keys=True)


def _input(environ, mode):
    inp = environ["wsgi.input"]
    if mode == "read":
        parts = [inp.read()]
    elif mode == "read-1":
        parts = [inp.read(-1)]
    elif mode == "readn":
        parts = []
        while True:
            b = inp.read(3)
            if not b:
                break
            parts.append(b)
    elif mode == "readline":
        parts = []
        while True:
            b = inp.readline()
            if not b:
                break
            parts.append(b)
    elif mode == "readline2":
        parts = []
        while True:
            b = inp.readline(2)
            if not b:
                break
            parts.append(b)
    elif mode == "readlines":
        parts = inp.readlines()
    elif mode == "readlines-hint":
        parts = inp.readlines(4)
    elif mode == "iter":
        parts = list(inp)
    else:
        raise ValueError(mode)
    return json.dumps([p.decode("latin-1") for p in parts])


def application(environ, start_response):
    path = environ["PATH_INFO"]
    qs = environ.get("QUERY_STRING", "")
    params = dict(p.split("=", 1) for p in qs.split("&") if "=" in p)

    if path == "/hello":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"Hello world"]
    if path == "/environ":
        return _text(start_response, _environ_json(environ), ctype="application/json")
    if path == "/input":
        return _text(start_response, _input(environ, params.get("mode", "read")))
    if path == "/stream":
        n = int(params.get("n", "5"))

        def gen():
            start_response("200 OK", [("Content-Type", "text/plain")])
            for i in range(n):
                yield b"chunk %d\n" % i

        return gen()
    if path == "/stream-empty-first":
        def gen():
            yield b""
            start_response("201 Created", [("Content-Type", "text/plain")])
            yield b""
            yield b"late"
        return gen()
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        write(b"then ")
        return [b"returned"]
    if path == "/write-only":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"all written")
        return []
    if path == "/sys-exit":
        sys.exit(3)
    if path == "/raise-before":
        raise RuntimeError("raised before start_response")
    if path == "/raise-after":
        start_response("200 OK", [("Content-Type", "text/plain")])
        raise RuntimeError("raised after start_response")
    if path == "/raise-in-iter":
        def gen():
            start_response("200 OK", [("Content-Type", "text/plain")])
            yield b"first part\n"
            raise RuntimeError("raised while streaming")
        return gen()
    if path == "/exc-info-replace":
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("something broke")
        except ValueError:
            start_response("500 Custom Error", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"replaced"]
    if path == "/exc-info-after-sent":
        def gen():
            start_response("200 OK", [("Content-Type", "text/plain")])
            yield b"sent already\n"
            try:
                raise ValueError("late failure")
            except ValueError:
                # Must re-raise: the headers are out.
                start_response("500 Oops", [("Content-Type", "text/plain")], sys.exc_info())
            yield b"never\n"
        return gen()
    if path == "/twice":
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            start_response("200 OK", [("Content-Type", "text/plain")])
        except Exception as e:
            return [type(e).__name__.encode()]
        return [b"no error"]
    if path == "/big":
        n = int(params.get("bytes", str(16 << 20)))
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))])
        return [b"a" * n]
    if path == "/big-stream":
        n = int(params.get("bytes", str(16 << 20)))

        def gen():
            left = n
            while left:
                k = min(left, 100000)
                left -= k
                yield b"b" * k

        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return gen()
    if path == "/many":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"a", b"b", b"", b"c")
    if path == "/file":
        f = open(__file__, "rb")
        start_response("200 OK", [("Content-Type", "text/x-python")])
        return environ["wsgi.file_wrapper"](f, 4096)
    if path == "/file-offset":
        f = open(__file__, "rb")
        f.seek(10)
        start_response("200 OK", [("Content-Type", "text/x-python")])
        return environ["wsgi.file_wrapper"](f)
    if path == "/file-like":
        import io
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"from a BytesIO"), 4)
    if path == "/closing":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Closing([b"one ", b"two"])
    if path == "/endless":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return Closing(_endless())
    if path == "/closed":
        with _lock:
            n = CLOSED["count"]
        return _text(start_response, str(n))
    if path == "/content-length-short":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "10")])
        return [b"short"]
    if path == "/content-length-long":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        return [b"longer than four"]
    if path == "/asyncio":
        async def work(d):
            await asyncio.sleep(d)
            return d

        loop = asyncio.get_event_loop()
        res = loop.run_until_complete(asyncio.gather(work(0.01), work(0.02)))
        return _text(start_response, "asyncio ok %s %s" % (len(res), threading.current_thread().name))
    if path == "/offload":
        def job(tag, delay=0):
            time.sleep(delay)
            with _lock:
                OFFLOADED.append(tag)

        ok = forklift.offload(job, params.get("tag", "x"), delay=0.01)
        return _text(start_response, "queued %s" % ok)
    if path == "/later":
        def job(tag):
            with _lock:
                OFFLOADED.append(tag)

        ok = forklift.call_later(float(params.get("d", "0.05")), job, params.get("tag", "later"))
        return _text(start_response, "scheduled %s" % ok)
    if path == "/flood":
        accepted = 0
        full = "no"
        for _ in range(10000):
            try:
                forklift.offload(time.sleep, 0.05)
                accepted += 1
            except forklift.QueueFull:
                full = "QueueFull"
                break
        return _text(start_response, "%d %s" % (accepted, full))
    if path == "/offloaded":
        with _lock:
            return _text(start_response, ",".join(OFFLOADED))
    if path == "/spool":
        try:
            ident = send_mail.spool(to="a@example.com")
            return _text(start_response, "spooled " + ident)
        except RuntimeError as e:
            return _text(start_response, "error: %s" % e)
    if path == "/forklift":
        return _text(start_response, "version %s task %s" % (forklift.version, send_mail.name))
    if path == "/errors":
        environ["wsgi.errors"].write("a line for the error log\n")
        environ["wsgi.errors"].flush()
        return _text(start_response, "logged")
    if path == "/pid":
        return _text(start_response, str(os.getpid()))
    if path == "/thread":
        return _text(start_response, threading.current_thread().name)
    if path == "/headers":
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Multi", "1"), ("X-Multi", "2"),
                                  ("X-Latin", "caf\u00e9")])
        return [b"ok"]
    if path == "/bad-header":
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Evil", "a\r\nInjected: yes")])
        return [b"should not be sent"]
    if path == "/status":
        start_response(params.get("s", "200 OK").replace("+", " "), [("Content-Type", "text/plain")])
        return [b"status"]
    if path == "/not-bytes":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return ["a str, not bytes"]
    if path == "/no-start-response":
        return [b"forgot"]
    return _text(start_response, "not found: " + path, status="404 Not Found")


@forklift.task
def send_mail(to):
    OFFLOADED.append("mail:" + to)


validated = validator(application)
