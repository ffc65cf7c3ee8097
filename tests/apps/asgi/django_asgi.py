"""A one-file Django project served over ASGI (needs a virtualenv with django): an async
view, a sync view (Django runs it in a thread), and an async JSON view."""
import asyncio
import json

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

from django.http import HttpResponse, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402


async def async_view(request):
    await asyncio.sleep(0.01)
    return HttpResponse("django async view at %s" % request.path)


def sync_view(request):
    return HttpResponse("django sync view")


@csrf_exempt
async def echo_json(request):
    data = json.loads(request.body)
    return JsonResponse({"got": data, "method": request.method})


urlpatterns = [
    path("async", async_view),
    path("sync", sync_view),
    path("json", echo_json),
]

from django.core.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()
