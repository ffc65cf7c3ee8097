"""A module app, loaded with --module mod_app:app and --pythonpath."""


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"from mod_app"]
