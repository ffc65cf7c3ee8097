"""Hello world as a raw ASGI 3 callable, and as a FastAPI route (when FastAPI is
installed): the apps of bench/asgi.sh.

    forklift serve --asgi asgi_hello:app --pythonpath examples --http :8080
"""


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"Hello, world!"})


try:
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse
except ImportError:  # the raw callable needs nothing
    pass
else:
    fastapi_app = FastAPI()

    @fastapi_app.get("/", response_class=PlainTextResponse)
    def hello():
        return "Hello, world!"

    fastapi_async = FastAPI()

    @fastapi_async.get("/", response_class=PlainTextResponse)
    async def hello_async():
        return "Hello, world!"
