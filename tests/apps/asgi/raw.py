"""Raw ASGI 3 apps for forklift's tests: the conformance demo (the same endpoints as
builtin:demo), spec probes, lifespan state, and misbehaving apps."""
import asyncio
import json
import os
import time
import urllib.parse

import forklift

STATE_LOG = []


async def hello(scope, receive, send):
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"Hello world"})


async def read_body(receive):
    body = b""
    while True:
        m = await receive()
        if m["type"] == "http.disconnect":
            raise OSError("client went away")
        body += m.get("body", b"")
        if not m.get("more_body"):
            return body


def query(scope):
    return dict(urllib.parse.parse_qsl(scope["query_string"].decode()))


async def demo(scope, receive, send):
    """builtin:demo's endpoints: /echo, /wait, /file; anything else hello."""
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            if m["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    q = query(scope)
    if path == "/echo":
        body = await read_body(receive)
        ctype = dict(scope["headers"]).get(b"content-type", b"application/octet-stream")
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", ctype)]})
        await send({"type": "http.response.body", "body": body})
    elif path == "/wait":
        d = float(q.get("duration", "1"))
        await asyncio.sleep(d)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"waited %.3f s" % d})
    elif path == "/file":
        n = int(q.get("bytes", "0"))
        headers = [(b"content-type", b"application/octet-stream")]
        if q.get("chunked") != "1":
            headers.append((b"content-length", str(n).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        block = b"x" * 65536
        left = n
        while left > 0:
            piece = block[: min(left, len(block))]
            left -= len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": left > 0})
        if n == 0:
            await send({"type": "http.response.body", "body": b""})
    else:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"Hello world"})


async def probe(scope, receive, send):
    """Answers with the scope (JSON; bytes as latin-1 text) and what receive() gave."""
    if scope["type"] == "lifespan":
        m = await receive()
        scope["state"]["started_by"] = "lifespan"
        scope["state"]["pid"] = os.getpid()
        await send({"type": "lifespan.startup.complete"})
        m = await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    events = []
    while True:
        m = await receive()
        events.append({"type": m["type"], "len": len(m.get("body", b"")),
                       "more_body": m.get("more_body", False)})
        if not m.get("more_body"):
            break
    def enc(v):
        if isinstance(v, bytes):
            return v.decode("latin-1")
        if isinstance(v, (list, tuple)):
            return [enc(x) for x in v]
        if isinstance(v, dict):
            return {k: enc(x) for k, x in v.items()}
        return v
    out = {k: enc(v) for k, v in scope.items()}
    out["events"] = events
    out["types"] = {k: type(v).__name__ for k, v in scope.items()}
    body = json.dumps(out).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"x-dup", b"1"), (b"x-dup", b"2")]})
    await send({"type": "http.response.body", "body": body})


async def misbehave(scope, receive, send):
    if scope["type"] == "lifespan":
        return
    path = scope["path"]
    if path == "/no-start":
        return
    if path == "/raise-before":
        raise ValueError("boom before the response")
    if path == "/raise-after-start":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise ValueError("boom after start")
    if path == "/raise-mid-body":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise ValueError("boom mid body")
    if path == "/incomplete":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        return
    if path == "/block":
        time.sleep(float(query(scope).get("s", "2")))
    if path == "/stream-until-disconnect":
        # Streams until the client goes away; records what it saw.
        await send({"type": "http.response.start", "status": 200, "headers": []})
        seen = "none"
        try:
            for _ in range(2000):
                await send({"type": "http.response.body", "body": b"tick\n" * 100, "more_body": True})
                await asyncio.sleep(0.005)
        except OSError as e:
            seen = type(e).__name__
        STATE_LOG.append(seen)
        return
    if path == "/wait-disconnect":
        await read_body(receive)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
        m = await receive()
        STATE_LOG.append(m["type"])
        return
    if path == "/echo-as-it-comes":
        # Echoes each body event at once: the client sees its first bytes come back
        # before it sends the rest.
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            m = await receive()
            if m["type"] != "http.request":
                STATE_LOG.append("echo saw " + m["type"])
                return
            more = m.get("more_body", False)
            await send({"type": "http.response.body", "body": m.get("body", b""), "more_body": more})
            if not more:
                return
    if path == "/hold":
        # Takes one body event, leaves the rest for `s` seconds, then counts it all.
        m = await receive()
        total = len(m.get("body", b""))
        await asyncio.sleep(float(query(scope).get("s", "3")))
        while m.get("more_body"):
            m = await receive()
            total += len(m.get("body", b""))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"%d" % total})
        return
    if path == "/stream-and-listen":
        # Streams slowly while a task listens for http.disconnect (as Starlette does).
        await send({"type": "http.response.start", "status": 200, "headers": []})
        gone = asyncio.Event()

        async def listen():
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        task = asyncio.ensure_future(listen())
        try:
            for _ in range(400):
                if gone.is_set():
                    STATE_LOG.append("stream saw http.disconnect")
                    return
                await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
                await asyncio.sleep(0.05)
            STATE_LOG.append("stream never saw a disconnect")
        except OSError as e:
            STATE_LOG.append("stream send raised " + type(e).__name__)
        finally:
            task.cancel()
        return
    if path == "/trailers":
        # A body with trailer fields after it (two trailers messages).
        await send({"type": "http.response.start", "status": 200, "trailers": True,
                    "headers": [(b"content-type", b"text/plain"), (b"trailer", b"x-checksum, x-late")]})
        if query(scope).get("one") == "1":
            await send({"type": "http.response.body", "body": b"whole"})
        else:
            await send({"type": "http.response.body", "body": b"part1", "more_body": True})
            await send({"type": "http.response.body", "body": b"part2"})
        await send({"type": "http.response.trailers", "more_trailers": True,
                    "headers": [(b"x-checksum", b"abc"), (b"content-length", b"5")]})
        await send({"type": "http.response.trailers", "headers": [(b"x-late", b"1")]})
        return
    if path == "/log":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": ",".join(STATE_LOG).encode()})
        return
    if path == "/pathsend":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.pathsend", "path": os.path.abspath(__file__)})
        return
    if path == "/fetch":
        url = query(scope)["url"]
        r = await forklift.fetch(url, timeout=5)
        done = []
        forklift.offload(done.append, 1)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"fetched %d %s" % (r.status, r.body)})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def failing_startup(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
        return
    await hello(scope, receive, send)


def wsgi_app(environ, start_response):
    start_response("200 OK", [])
    return [b"wsgi"]


class Asgi2:
    def __init__(self, scope):
        self.scope = scope

    async def __call__(self, receive, send):
        pass


not_callable = 42
