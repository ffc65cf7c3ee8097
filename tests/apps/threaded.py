"""An app with Python threads: a busy thread started at import (so the master holds a
running thread when it forks) and a ticking thread started per process on demand."""

import os
import threading
import time

state = {"ticks": 0, "ticker_pid": None, "spins": 0}


def _spin():
    # Pure Python, never sleeps: competes for the GIL all the time.
    while True:
        state["spins"] += 1


threading.Thread(target=_spin, name="spinner", daemon=True).start()


def _tick():
    while True:
        state["ticks"] += 1
        time.sleep(0.001)


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/start":
        if state["ticker_pid"] != os.getpid():
            state["ticker_pid"] = os.getpid()
            threading.Thread(target=_tick, name="ticker", daemon=True).start()
        body = "started in %d" % os.getpid()
    elif path == "/ticks":
        body = str(state["ticks"])
    elif path == "/threads":
        body = ",".join(sorted(t.name for t in threading.enumerate()))
    else:
        body = "ok"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body.encode()]
