"""builtin:demo's endpoints as a WSGI app for gevent mode (the wire-conformance suite
runs against it): /echo, /wait?duration=S (gevent.sleep), /file?bytes=N[&chunked=1],
anything else "Hello world"."""

import gevent

BLOCK = b"x" * 65536


def query(environ):
    out = {}
    for part in environ.get("QUERY_STRING", "").split("&"):
        k, _, v = part.partition("=")
        if k:
            out[k] = v
    return out


def demo(environ, start_response):
    path = environ["PATH_INFO"]
    q = query(environ)
    if path == "/echo":
        body = environ["wsgi.input"].read()
        ctype = environ.get("CONTENT_TYPE") or "application/octet-stream"
        start_response("200 OK", [("Content-Type", ctype)])
        return [body]
    if path == "/wait":
        d = float(q.get("duration", "1"))
        gevent.sleep(d)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"waited %.3f s" % d]
    if path == "/file":
        n = int(q.get("bytes", "0"))
        headers = [("Content-Type", "application/octet-stream")]
        if q.get("chunked") != "1":
            headers.append(("Content-Length", str(n)))
        start_response("200 OK", headers)

        def pieces():
            left = n
            while left > 0:
                piece = BLOCK[: min(left, len(BLOCK))]
                left -= len(piece)
                yield piece

        return pieces()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"Hello world"]
