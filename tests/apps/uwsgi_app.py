"""The app behind nginx in the uwsgi protocol tests: reports what it was given."""

import json
import os
import zlib


def application(environ, start_response):
    qs = environ.get("QUERY_STRING", "")
    params = dict(p.split("=", 1) for p in qs.split("&") if "=" in p)
    kind = params.get("kind", "environ")
    if kind == "big":
        n = int(params.get("bytes", "65536"))
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [bytes(i % 251 for i in range(n))]
    if kind == "stream":
        n = int(params.get("n", "5"))

        def gen():
            for i in range(n):
                yield b"chunk %d\n" % i

        start_response("200 OK", [("Content-Type", "text/plain")])
        return gen()
    body = environ["wsgi.input"].read()
    out = {k: v for k, v in environ.items() if isinstance(v, str)}
    out["os.environ GREETING"] = os.environ.get("GREETING", "")
    out["body_len"] = len(body)
    out["body_adler32"] = zlib.adler32(body)
    data = json.dumps(out, sort_keys=True).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]
