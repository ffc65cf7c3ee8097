"""A one-file Django app (needs a virtualenv with django): views, a form post, a JSON
body, a streaming response and a FileResponse (served through wsgi.file_wrapper)."""

import json
import os

from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="forklift-test",
    ROOT_URLCONF=__name__,
    ALLOWED_HOSTS=["*"],
    MIDDLEWARE=[],
)

import django  # noqa: E402

django.setup()

from django.http import FileResponse, HttpResponse, JsonResponse, StreamingHttpResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402


def index(request):
    return HttpResponse("django index")


@csrf_exempt
def form(request):
    return HttpResponse("form name=%s" % request.POST.get("name"))


@csrf_exempt
def echo_json(request):
    data = json.loads(request.body)
    return JsonResponse({"got": data})


def stream(request):
    return StreamingHttpResponse(("part %d\n" % i for i in range(3)), content_type="text/plain")


def file(request):
    return FileResponse(open(__file__, "rb"), content_type="text/x-python")


urlpatterns = [
    path("", index),
    path("form", form),
    path("json", echo_json),
    path("stream", stream),
    path("file", file),
]

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
