"""A WSGI app whose requests wait for the test: GET /hold?file=PATH answers only once
PATH exists (at most 30 s); any other path answers at once."""

import os
import time


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    body = b"fast"
    if path == "/hold":
        query = environ.get("QUERY_STRING", "")
        wanted = query[len("file="):] if query.startswith("file=") else ""
        deadline = time.monotonic() + 30
        while wanted and not os.path.exists(wanted) and time.monotonic() < deadline:
            time.sleep(0.01)
        body = b"held"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
