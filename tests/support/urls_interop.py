"""Django views an aio-request client calls in the interoperability tests
(``tests.end_to_end.test_interop_aio_request``).

Both run behind ``django_aio_request.middleware.AioRequestMiddleware``, which puts the deadline
and priority of the incoming request into the context:

- ``GET /context/``: what the request found (see :func:`seen`), as JSON;
- ``GET /onward/?sleep=S``: the same, then sleeps ``S`` seconds and calls ``GET context`` of the
  aiohttp service named by the ``ONWARD_CLIENT`` client of ``settings.AIO_REQUEST``, which takes
  its deadline and priority from the context; answers ``{"seen": ..., "downstream_status": ...,
  "downstream": ...}``.
"""

import time
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.urls import path

from django_aio_request import clients, get, get_context

ONWARD_CLIENT = "interop-aiohttp"
SYSTEM_HEADERS = ("X-Request-Timeout", "X-Request-Priority", "X-Service-Name")


def seen(request: HttpRequest) -> dict[str, Any]:
    """The context's deadline (seconds left) and priority, and the propagation headers as received."""
    context = get_context()
    return {
        "path": request.path,
        "timeout": context.deadline.timeout if context.deadline is not None else None,
        "priority": str(context.priority) if context.priority is not None else None,
        "headers": {name: request.headers.get(name) for name in SYSTEM_HEADERS},
    }


def context_view(request: HttpRequest) -> JsonResponse:
    return JsonResponse(seen(request))


def onward_view(request: HttpRequest) -> JsonResponse:
    found = seen(request)
    time.sleep(float(request.GET.get("sleep", "0")))
    with clients[ONWARD_CLIENT].request(get("context")) as response:
        body = response.json() if response.is_successful() else None
    return JsonResponse({"seen": found, "downstream_status": response.status, "downstream": body})


urlpatterns = [
    path("context/", context_view),
    path("onward/", onward_view),
]
