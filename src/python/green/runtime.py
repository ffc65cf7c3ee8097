"""The Python half of forklift's greenlet loops (`--gevent N`, `--asyncio N --greenlet`).

One thread per worker process runs a cooperative loop: gevent's hub, or an asyncio event
loop. Requests arrive in batches through an eventfd the loop watches; each runs in a
greenlet (a "core"), at most `size` at once, the rest waiting in order. A core that
finishes its request takes the next waiting one, or parks until it is given one, so a
request that never yields costs no greenlet creation and no extra switch.
"""

import sys
import traceback
from collections import deque

try:
    from greenlet import GreenletExit, getcurrent, greenlet
except ImportError:  # check_gevent / check_greenlet say what to install
    GreenletExit = getcurrent = greenlet = None


class Cores:
    """Runs jobs (forklift's request objects, `job.serve(cores)`) in greenlets whose
    parent is `hub`, the greenlet that runs the loop."""

    def __init__(self, hub, size, pause):
        self.hub = hub
        self.size = size
        # Yields the current core to the others still ready to run (after a chunk of a
        # streamed body, so one generator cannot hold the loop).
        self.pause = pause
        self.busy = 0
        self.idle = []
        self.waiting = deque()
        # Cores parked until their request's connection takes body chunks, by id.
        self.waiters = {}

    # Called on the hub.
    def start(self, job):
        if self.busy >= self.size:
            self.waiting.append(job)
            return
        self.busy += 1
        if self.idle:
            self.idle.pop().switch(job)
        else:
            # The job goes in a box the core empties: the arguments of a greenlet's
            # first switch live as long as its run function, which never returns.
            greenlet(self._run, self.hub).switch([job])

    def poke(self, ident):
        core = self.waiters.pop(ident, None)
        if core is not None:
            core.switch()

    def inflight(self):
        return self.busy + len(self.waiting)

    # Called in a core.
    def wait(self, ident):
        """Parks this core until `poke(ident)`."""
        self.waiters[ident] = getcurrent()
        try:
            self.hub.switch()
        finally:
            self.waiters.pop(ident, None)

    def _run(self, box):
        job = box.pop()
        waiting = self.waiting
        idle = self.idle
        me = getcurrent()
        while True:
            try:
                job.serve(self)
            except GreenletExit:
                self.busy -= 1
                return
            except BaseException:
                traceback.print_exc()
            job = None
            if waiting:
                job = waiting.popleft()
                continue
            self.busy -= 1
            idle.append(me)
            try:
                job = self.hub.switch()
            except GreenletExit:
                return


def current_request(frame):
    """What the core running `frame` serves (for the blocked-loop report), or None."""
    code = Cores._run.__code__
    while frame is not None:
        if frame.f_code is code:
            job = frame.f_locals.get("job")
            return None if job is None else job.describe()
        frame = frame.f_back
    return None


def blocked_at(ident):
    """(the request the loop thread `ident` is stuck in, its Python stack)."""
    frame = sys._current_frames().get(ident)
    if frame is None:
        return None, "  (no Python frame)\n"
    return current_request(frame), "".join(traceback.format_stack(frame))


def check_gevent():
    import gevent  # noqa: F401  (ImportError names what is missing)
    import greenlet as _g  # noqa: F401


def check_greenlet():
    import greenlet as _g  # noqa: F401


def monkey_patch():
    from gevent import monkey

    monkey.patch_all()


def after_fork():
    """In a forked worker: gevent's hub and loop of this thread, if the master made one,
    start afresh (the loop's descriptors are shared with the master otherwise)."""
    gevent = sys.modules.get("gevent")
    if gevent is not None:
        gevent.reinit()


def serve_gevent(fd, intake, tick, beat, size, ready, drained, shutdown_timeout):
    """Runs gevent's hub on this thread until `stop()` (given to `ready`) is called and
    the cores have drained (or `shutdown_timeout` passed)."""
    import gevent
    from gevent.event import Event

    hub = gevent.get_hub()
    done = Event()
    cores = Cores(hub, size, lambda: gevent.sleep(0))
    watcher = hub.loop.io(fd, 1)
    timer = hub.loop.timer(beat, beat)

    def stop():
        def drain():
            deadline = hub.loop.now() + shutdown_timeout
            while cores.inflight() and hub.loop.now() < deadline:
                gevent.sleep(0.02)
            done.set()

        watcher.stop()
        gevent.spawn(drain)

    watcher.start(intake, cores, stop)
    timer.start(tick)
    ready(cores)
    try:
        done.wait()
    finally:
        watcher.stop()
        timer.stop()
        drained(cores.inflight())


def serve_asyncio(fd, intake, tick, beat, size, ready, drained, shutdown_timeout):
    """Runs an asyncio event loop on this thread, requests in greenlets, until `stop()`
    and the cores have drained (or `shutdown_timeout` passed)."""
    import asyncio

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main = getcurrent()

    def pause():
        loop.call_soon(getcurrent().switch)
        main.switch()

    cores = Cores(main, size, pause)

    def beating():
        tick()
        loop.call_later(beat, beating)

    def stop():
        loop.remove_reader(fd)
        deadline = loop.time() + shutdown_timeout

        def drain():
            if cores.inflight() and loop.time() < deadline:
                loop.call_later(0.02, drain)
            else:
                loop.stop()

        drain()

    loop.add_reader(fd, intake, cores, stop)
    loop.call_later(beat, beating)
    ready(cores)
    try:
        loop.run_forever()
    finally:
        loop.remove_reader(fd)
        drained(cores.inflight())
        loop.close()
