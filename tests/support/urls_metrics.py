"""URLs for the metrics tests: a few views and django-prometheus's ``/metrics``."""

import os
import time

from django.http import HttpRequest, HttpResponse
from django.urls import include, path


def ping(request: HttpRequest) -> HttpResponse:
    time.sleep(float(request.GET.get("sleep", "0")))
    return HttpResponse(str(os.getpid()).encode())


def thing(request: HttpRequest, pk: int) -> HttpResponse:
    return HttpResponse(str(pk).encode())


def fails(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"no", status=503)


urlpatterns = [
    path("metrics-test/ping", ping),
    path("metrics-test/things/<int:pk>", thing),
    path("metrics-test/fails", fails),
    path("", include("django_prometheus.urls")),
]
