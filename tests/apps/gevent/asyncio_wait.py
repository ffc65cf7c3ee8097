"""For `--asyncio N --greenlet`: a request waits for an asyncio future by switching to
the loop's greenlet; the future's callback switches back."""

import asyncio

import greenlet


def application(environ, start_response):
    me = greenlet.getcurrent()
    loop = asyncio.get_event_loop()
    fut = loop.create_future()
    loop.call_later(0.3, fut.set_result, "waited on the loop")
    fut.add_done_callback(lambda f: me.switch())
    me.parent.switch()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [fut.result().encode()]
