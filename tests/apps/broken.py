"""An app that fails at import time."""

1 / 0


def application(environ, start_response):
    start_response("200 OK", [])
    return [b""]
