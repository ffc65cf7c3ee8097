"""Seed 002's gevent app: four backend calls at once in greenlets, the app patching
the standard library itself (`monkey.patch_all(thread=False, select=False)`).

The backend's port comes from ?backend=PORT or $FORKLIFT_TEST_BACKEND_PORT, default
7001 (the seed's)."""

import os
import time
from functools import partial
from threading import current_thread

import gevent
import requests
from gevent import monkey


# Monkey-patch.
monkey.patch_all(thread=False, select=False)


def application(env, start_response):
    port = _backend_port(env)
    start_response("200 OK", [("Content-Type", "text/html")])
    start_time = time.time()

    jobs = [
        gevent.spawn(partial(long_network_call, port, i / 8))
        for i in range(1, 5)
    ]
    gevent.joinall(jobs)

    end_time = time.time()

    return [
        b"This lasted %0.3f seconds with async calls using gevent\n" % (end_time - start_time)
    ]


def _backend_port(env):
    for part in env.get("QUERY_STRING", "").split("&"):
        if part.startswith("backend="):
            return int(part[len("backend="):])
    return int(os.environ.get("FORKLIFT_TEST_BACKEND_PORT", "7001"))


def long_network_call(port, duration):
    thread_name = current_thread().name
    pid = os.getpid()
    print("pid: {} : thread_id: {} : start network call with duration {}".format(pid, thread_name, duration))
    requests.get('http://localhost:{}/?duration={}'.format(port, duration))
    print("pid: {} : thread_id: {} : end network call with duration {}".format(pid, thread_name, duration))
