"""An app with Python threads: a busy thread started at import (so the master holds a
running thread when it forks) and a ticking thread started per process on demand."""

import os
import threading
import time

import forklift

state = {"ticks": 0, "ticker_pid": None, "spins": 0}


def _spin():
    # Pure Python, never sleeps: competes for the GIL all the time.
    while True:
        state["spins"] += 1


threading.Thread(target=_spin, name="spinner", daemon=True).start()

# Offload machinery used in the master before fork: workers must get their own.
forklift.offload(lambda: None)
forklift.call_later(0.01, lambda: None)


def _later_done(pid):
    state.setdefault("later", []).append(pid)


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
    elif path == "/later":
        forklift.call_later(0.01, _later_done, os.getpid())
        body = "scheduled"
    elif path == "/later-done":
        body = "yes" if os.getpid() in state.get("later", []) else "no"
    elif path == "/threads":
        body = ",".join(sorted(t.name for t in threading.enumerate()))
    else:
        body = "ok"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body.encode()]
