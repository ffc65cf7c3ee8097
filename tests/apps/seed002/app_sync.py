"""Seed 002's synchronous app: four backend calls one after another.

The backend (`forklift serve builtin:wait --http 127.0.0.1:7001`) port comes from
$FORKLIFT_TEST_BACKEND_PORT or ?backend=PORT, default 7001. Uses requests when
installed, else urllib."""

import os
import time

try:
    import requests
except ImportError:  # the base interpreter has no requests
    requests = None
    import urllib.request


def application(env, start_response):
    port = _backend_port(env)
    start_response("200 OK", [("Content-Type", "text/html")])
    start_time = time.time()
    calls = [long_network_call(port, i / 8) for i in range(1, 5)]
    end_time = time.time()

    return [
        b"This call lasted %0.3f seconds with synchronous calls.\n"
        % (end_time - start_time)
    ]


def _backend_port(env):
    for part in env.get("QUERY_STRING", "").split("&"):
        if part.startswith("backend="):
            return int(part[len("backend="):])
    return int(os.environ.get("FORKLIFT_TEST_BACKEND_PORT", "7001"))


def long_network_call(port, duration):
    url = 'http://localhost:{}/?duration={}'.format(port, duration)
    if requests is not None:
        return requests.get(url).content
    with urllib.request.urlopen(url) as r:
        return r.read()
