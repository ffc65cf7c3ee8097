"""A monkey-patched app calling a slow backend with `requests`: four calls at once per
request (greenlets), the backend's port from ?backend=PORT, its path from ?path=."""

from gevent import monkey

monkey.patch_all(thread=False, select=False)

import gevent  # noqa: E402
import requests  # noqa: E402


def application(environ, start_response):
    q = dict(p.partition("=")[::2] for p in environ["QUERY_STRING"].split("&") if p)
    url = "http://127.0.0.1:%s%s" % (q["backend"], q.get("path", "/sleep").replace("%26", "&"))
    jobs = [gevent.spawn(requests.get, url, timeout=60) for _ in range(4)]
    gevent.joinall(jobs)
    texts = [j.value.text if j.value is not None else "failed" for j in jobs]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [" ".join(texts).encode()]
