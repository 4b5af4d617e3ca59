"""URLs for tests that run a server's worker processes each with a client whose breaker they open.

The client is made at import, as a module's client is: in gunicorn's master with ``--preload``, in
each worker otherwise. It calls ``TEST_DEAD_PORT``, where nothing listens, so ``/open`` opens the
serving worker's breaker (3 failed calls) and answers its pid and the breaker's 502.
"""

import json
import os
import time

from django.http import HttpRequest, HttpResponse
from django.urls import include, path

import django_aio_request as dar

client = dar.setup(
    endpoint=f"http://127.0.0.1:{os.environ['TEST_DEAD_PORT']}/",
    safe_method_strategy=dar.single_attempt_strategy(),
    circuit_breaker=dar.DefaultCircuitBreaker(
        break_duration=600, sampling_duration=10, minimum_throughput=2, failure_threshold=0.5
    ),
)


def open_breaker(request: HttpRequest) -> HttpResponse:
    time.sleep(float(request.GET.get("sleep", "0")))
    status = 0
    for _ in range(3):
        with client.request(dar.get("x")) as response:
            status = response.status
    return HttpResponse(json.dumps({"pid": os.getpid(), "status": status}))


def pid(request: HttpRequest) -> HttpResponse:
    time.sleep(float(request.GET.get("sleep", "0")))
    return HttpResponse(str(os.getpid()))


urlpatterns = [path("open", open_breaker), path("pid", pid), path("", include("django_prometheus.urls"))]
