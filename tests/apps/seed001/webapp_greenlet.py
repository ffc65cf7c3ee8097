"""Seed 001's non-blocking app, as the seed runs it under uWSGI's asyncio loop engine
(`--asyncio 2 --greenlet`): the request schedules the file read 5 s later on the
running event loop and answers at once; the loop runs the read, whose lines reach the
log. Python 3.11 removed `asyncio.coroutine`; the decorator falls back to none."""

import asyncio

coroutine = getattr(asyncio, "coroutine", lambda f: f)


@coroutine
def my_generator(name):
    with open(name) as lines:
        yield from lines

def read():
    g = my_generator("numbers.txt")
    for k, v in enumerate(g):
        print("%s:%s" % (k, v), end="")


def application(environ, start_response):
    asyncio.get_event_loop().call_later(5, read)
    start_response('200 OK', [('Content-Type','text/html')])
    return [b"Hello World"]
