"""Seed 001's non-blocking variant: schedules the file read 5 s later on the thread's
asyncio event loop (forklift gives every serving thread one), then answers at once.
The read itself only runs if something runs the loop; with forklift, use
forklift.call_later (see /later) or forklift.offload (see /offload)."""

import asyncio

import forklift


def my_generator(name):
    with open(name) as lines:
        yield from lines


def read():
    g = my_generator("numbers.txt")
    for k, v in enumerate(g):
        print("%s:%s" % (k, v), end="")


def application(environ, start_response):
    if environ["PATH_INFO"] == "/offload":
        forklift.offload(read)
    elif environ["PATH_INFO"] == "/later":
        # The seed's call_later, run by forklift (no event loop needed).
        forklift.call_later(float(environ["QUERY_STRING"] or 5), read)
    else:
        asyncio.get_event_loop().call_later(5, read)
    start_response('200 OK', [('Content-Type', 'text/html')])
    return [b"Hello World"]
