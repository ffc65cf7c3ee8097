"""A Starlette app for forklift's ASGI tests: a StreamingResponse and a request body
read as a stream."""
import asyncio
import hashlib

from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route


async def homepage(request):
    return PlainTextResponse("starlette home")


async def numbers(request):
    n = int(request.query_params.get("n", "10"))

    async def gen():
        for i in range(n):
            yield "%d\n" % i
            await asyncio.sleep(0)

    return StreamingResponse(gen(), media_type="text/plain")


async def upload(request):
    chunks = 0
    size = 0
    digest = hashlib.sha256()
    async for chunk in request.stream():
        if chunk:
            chunks += 1
            size += len(chunk)
            digest.update(chunk)
    return JSONResponse({"chunks": chunks, "size": size, "sha256": digest.hexdigest()})


app = Starlette(routes=[
    Route("/", homepage),
    Route("/numbers", numbers),
    Route("/upload", upload, methods=["POST"]),
])
