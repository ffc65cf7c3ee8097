"""Says how many objects are frozen out of the garbage collector (gc.freeze()), as a
WSGI app (`application`) and as an ASGI app (`asgi_app`)."""
import gc


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(gc.get_freeze_count()).encode()]


async def asgi_app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": str(gc.get_freeze_count()).encode()})
