# The Python side of forklift's ASGI support: choosing the event loop, checking that an
# object is an ASGI 3 app, running one request's coroutine, the lifespan protocol, and
# draining a loop when the worker stops. Request scopes and the receive/send callables
# are built in Rust (src/python/asgi/); this module only holds what is not per-byte.
import asyncio
import inspect
import sys
import traceback


def log(msg):
    print("forklift: " + msg, file=sys.stderr, flush=True)


def _eager(base):
    """`base` (a loop class) with `start_task(coro)`: a real asyncio Task whose first
    step runs at once, inside the call (what Python 3.12 calls an eager task), so a
    request that completes without waiting costs no extra loop turn. The Task asks its
    loop to schedule its first step with `call_soon`; that one call runs the step."""

    class EagerLoop(base):
        _forklift_eager = False

        def call_soon(self, callback, *args, context=None):
            if self._forklift_eager:
                self._forklift_eager = False
                if context is None:
                    callback(*args)
                else:
                    context.run(callback, *args)
                return None
            return super().call_soon(callback, *args, context=context)

        def start_task(self, coro):
            self._forklift_eager = True
            try:
                return asyncio.Task(coro, loop=self)
            finally:
                self._forklift_eager = False

    EagerLoop.__name__ = EagerLoop.__qualname__ = "Forklift" + base.__name__
    return EagerLoop


def new_loop(kind):
    """A new event loop: uvloop's when `kind` allows it and it is installed."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise RuntimeError("--loop uvloop: uvloop is not installed (pip install uvloop)")
        else:
            return _eager(uvloop.Loop)()
    return _eager(asyncio.SelectorEventLoop)()


def _positional(fn):
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = [p for p in sig.parameters.values() if p.kind in kinds]
    if any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in sig.parameters.values()):
        return None
    return params


def describe(app):
    """None when `app` looks like an ASGI 3 app; otherwise what it looks like."""
    if inspect.isclass(app):
        if hasattr(app, "__await__"):
            return None  # app(scope, receive, send) makes an awaitable: ASGI 3
        return ("it is a class taking the scope whose instances are called with "
                "(receive, send): an ASGI 2 app (wrap it with "
                "asgiref.compatibility.guarantee_single_callable)")
    if asyncio.iscoroutinefunction(app) or asyncio.iscoroutinefunction(getattr(app, "__call__", None)):
        return None
    params = _positional(app)
    if params is None:
        return None
    names = [p.name for p in params]
    if len(params) == 2 or names[:2] == ["environ", "start_response"]:
        return "it takes (%s): a WSGI app (serve it without --asgi, or with --interface wsgi)" % ", ".join(names)
    if len(params) == 1:
        return "it takes one argument (%s): an ASGI 2 app (wrap it with asgiref.compatibility.guarantee_single_callable)" % names[0]
    if len(params) == 3:
        return None  # a plain function returning an awaitable
    return "it takes %d arguments, not (scope, receive, send)" % len(params)


def looks_asgi(app):
    """True when a callable given as a WSGI app is clearly an ASGI one."""
    return asyncio.iscoroutinefunction(app) or asyncio.iscoroutinefunction(getattr(app, "__call__", None))


async def run(app, scope, cycle):
    """One request: the app's coroutine; the cycle learns how it ended."""
    try:
        await app(scope, cycle.receive, cycle.send)
    except BaseException as e:
        cycle.failed(e)
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
    else:
        cycle.returned()


def beat(loop, tick, interval):
    """Calls tick() every `interval` seconds on `loop` (the blocked-loop watchdog's pulse)."""
    def again():
        tick()
        loop.call_later(interval, again)
    loop.call_soon(again)


class Root:
    """The loop's main task, as `asyncio.run(main())` would have one: it serves until
    `finish()`. Libraries look for this task: anyio keeps the worker threads of
    `to_thread.run_sync` (FastAPI's and Starlette's plain `def` routes) for as long as
    the root task lives; without one, each request's task would be taken for the root
    and its worker thread would stop when that request ends (a new thread per request)."""

    def __init__(self, loop):
        self.loop = loop
        self.done = loop.create_future()

    def finish(self):
        if not self.done.done():
            self.done.set_result(None)

    async def main(self):
        await self.done

    def run(self):
        self.loop.run_until_complete(self.main())


def drain(loop, inflight, timeout):
    """Runs `loop` until no request is in progress (background tasks included) or
    `timeout` seconds have passed."""
    async def wait():
        end = loop.time() + timeout
        while inflight() and loop.time() < end:
            await asyncio.sleep(0.01)
        if inflight():
            log("%d ASGI request(s) still running after %.0f s; stopping anyway" % (inflight(), timeout))
    loop.run_until_complete(wait())


def close(loop):
    """Cancels what is left on `loop` and closes it."""
    try:
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()


class Lifespan:
    """The ASGI lifespan protocol for one worker, as uvicorn runs it: `mode` is
    "auto" (an app that raises on the lifespan scope does not support it) or "on"
    (any failure stops the worker)."""

    def __init__(self, app, mode, state):
        self.app = app
        self.mode = mode
        self.state = state
        self.queue = asyncio.Queue()
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()
        self.startup_failed = None
        self.shutdown_failed = None
        self.error = None
        self.unsupported = False
        self.task = None

    async def main(self):
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"},
                 "state": self.state}
        try:
            await self.app(scope, self.receive, self.send)
        except BaseException as e:
            self.error = e
            if self.startup_failed is not None or self.shutdown_failed is not None:
                pass
            elif self.mode == "auto" and not self.started.is_set():
                self.unsupported = True
                log("ASGI 'lifespan' protocol appears unsupported by the app (%s); serving without it"
                    % traceback.format_exception_only(type(e), e)[-1].strip())
            else:
                log("exception in the ASGI lifespan protocol:")
                traceback.print_exception(type(e), e, e.__traceback__)
        finally:
            self.started.set()
            self.stopped.set()

    async def receive(self):
        return await self.queue.get()

    async def send(self, message):
        kind = message.get("type")
        if kind == "lifespan.startup.complete" and not self.started.is_set():
            self.started.set()
        elif kind == "lifespan.startup.failed" and not self.started.is_set():
            self.startup_failed = message.get("message") or "the app sent lifespan.startup.failed"
            self.started.set()
        elif kind == "lifespan.shutdown.complete" and self.started.is_set():
            self.stopped.set()
        elif kind == "lifespan.shutdown.failed" and self.started.is_set():
            self.shutdown_failed = message.get("message") or "the app sent lifespan.shutdown.failed"
            self.stopped.set()
        else:
            raise RuntimeError("unexpected ASGI lifespan message %r" % (kind,))

    async def startup(self):
        """None when the app started (or does not do lifespan), else why it failed."""
        self.task = asyncio.get_running_loop().create_task(self.main())
        await self.queue.put({"type": "lifespan.startup"})
        await self.started.wait()
        if self.startup_failed is not None:
            return self.startup_failed
        if self.error is not None and not self.unsupported:
            return traceback.format_exception_only(type(self.error), self.error)[-1].strip()
        return None

    async def shutdown(self):
        if self.unsupported or self.error is not None or self.task is None or self.task.done():
            return
        await self.queue.put({"type": "lifespan.shutdown"})
        await self.stopped.wait()
        if self.shutdown_failed is not None:
            log("ASGI lifespan shutdown failed: %s" % self.shutdown_failed)


def lifespan_startup(loop, app, mode, state):
    """Runs startup on `loop`; returns (lifespan, None) or (lifespan, error message)."""
    ls = Lifespan(app, mode, state)
    return ls, loop.run_until_complete(ls.startup())


def lifespan_shutdown(loop, ls):
    loop.run_until_complete(ls.shutdown())
