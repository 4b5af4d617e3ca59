"""URLs for the metrics tests: a few views and django-prometheus's ``/metrics``."""

import os
import time
from collections.abc import Iterator

from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.urls import include, path


def ping(request: HttpRequest) -> HttpResponse:
    time.sleep(float(request.GET.get("sleep", "0")))
    return HttpResponse(str(os.getpid()).encode())


def thing(request: HttpRequest, pk: int) -> HttpResponse:
    if pk == 0:
        raise Http404("no thing 0")  # the view's own 404: its route matched
    return HttpResponse(str(pk).encode())


def fails(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"no", status=503)


def stream(request: HttpRequest) -> StreamingHttpResponse:
    """Returns at once; its body takes ``sleep`` seconds to make."""

    def body() -> Iterator[bytes]:
        yield b"first "
        time.sleep(float(request.GET["sleep"]))
        yield b"last"

    return StreamingHttpResponse(body())


urlpatterns = [
    path("metrics-test/ping", ping),
    path("metrics-test/things/<int:pk>", thing),
    path("metrics-test/fails", fails),
    path("metrics-test/stream", stream),
    path("", include("django_prometheus.urls")),
]
