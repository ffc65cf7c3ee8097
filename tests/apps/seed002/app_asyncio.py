"""Seed 002's asyncio app: four backend calls at once on the thread's event loop,
with `asyncio.get_event_loop()` exactly as in the seed (forklift gives every serving
thread a loop, so there is no "no current event loop in thread" error).

Backend port: $FORKLIFT_TEST_BACKEND_PORT or ?backend=PORT, default 7001. Uses aiohttp
when installed, else a minimal HTTP/1.0 client on asyncio streams."""

import asyncio
import os
import time

try:
    from aiohttp import ClientSession
except ImportError:  # the base interpreter has no aiohttp
    ClientSession = None


def application(env, start_response):
    port = _backend_port(env)
    start_time = time.time()
    loop = asyncio.get_event_loop()
    futures = [
        asyncio.ensure_future(long_network_call(port, i / 8), loop=loop)
        for i in range(1, 5)
    ]
    loop.run_until_complete(asyncio.wait(futures))
    end_time = time.time()
    start_response("200 OK", [("Content-Type", "text/html")])
    return [
        b"This lasted %0.3f seconds with async calls using asyncio\n"
        % (end_time - start_time)
    ]


def _backend_port(env):
    for part in env.get("QUERY_STRING", "").split("&"):
        if part.startswith("backend="):
            return int(part[len("backend="):])
    return int(os.environ.get("FORKLIFT_TEST_BACKEND_PORT", "7001"))


async def long_network_call(port, duration):
    url = 'http://localhost:{}/?duration={}'.format(port, duration)
    if ClientSession is not None:
        async with ClientSession() as session:
            async with session.get(url) as response:
                return await response.read()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(("GET /?duration={} HTTP/1.0\r\nHost: localhost\r\n\r\n".format(duration)).encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data
