"""A small Django service for load-shedding tests and ``benchmarks/shedding.py``: settings, URLs and views.

Run it under a real server, configured by the environment variable ``SHEDDING_SERVICE`` (JSON:
``{"shedding": <AIO_REQUEST["SHEDDING"]>, "known_services": [...], "sync_middleware_above": true}``,
shedding null for off):

    DJANGO_SETTINGS_MODULE=benchmarks._shedding_service gunicorn -k gthread --threads 4 \\
        'benchmarks._shedding_service:wsgi()'
    DJANGO_SETTINGS_MODULE=benchmarks._shedding_service uvicorn --factory benchmarks._shedding_service:asgi

Views: ``/cpu?ms=N`` spends N ms of its thread's CPU time (holding the GIL, as Python code does), ``/sleep?ms=N``
waits N ms, ``/acpu`` and ``/asleep`` the same as async views (``/asleep-in-thread``: waiting in
``sync_to_async``); ``/tail?ms=N&slow=F&slow_ms=M`` spends N ms
of CPU and then, for a share F of requests drawn at random, sleeps M ms (a slow tail, for
``benchmarks/hedge_safety.py``); ``/timeout`` answers the ``X-Request-Timeout`` the application got
(and the one received, when the server took its queueing time off); ``/metrics`` is Prometheus's text.
"""

import asyncio
import json
import os
import random
import time
from typing import Any

_config: dict[str, Any] = json.loads(os.environ.get("SHEDDING_SERVICE", "{}"))

# Django settings.
DEBUG = False
SECRET_KEY = "shedding-service-not-a-secret"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = __name__
INSTALLED_APPS = ["django_aio_request"]
MIDDLEWARE = ["django_aio_request.middleware.AioRequestMiddleware"]
DATABASES: dict[str, Any] = {}
USE_TZ = True
LOGGING_CONFIG = None
AIO_REQUEST: dict[str, Any] = {"SERVICE_NAME": "shedding-service", "MAX_TIMEOUT": 60.0}
if _config.get("shedding") is not None:
    AIO_REQUEST["SHEDDING"] = _config["shedding"]
if _config.get("known_services"):
    AIO_REQUEST["KNOWN_SERVICES"] = _config["known_services"]
if _config.get("sync_middleware_above"):  # a sync-only middleware above AioRequestMiddleware (as WhiteNoise is)
    MIDDLEWARE.insert(0, f"{__name__}.SyncOnlyMiddleware")


class SyncOnlyMiddleware:
    """Does nothing, and only synchronously: under ASGI Django then runs it in a thread, and the
    middleware below (AioRequestMiddleware, async) through ``async_to_sync`` from that thread."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        return self.get_response(request)


def _spin(seconds: float) -> None:
    # This thread's CPU time, not the wall clock: a real view's work is a fixed amount of CPU, so it
    # takes longer while other threads hold the GIL (a loop to a wall-clock end would not).
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def _ms(request: Any) -> float:
    return float(request.GET.get("ms", "10")) / 1000


def cpu(request: Any) -> Any:
    from django.http import HttpResponse

    _spin(_ms(request))
    return HttpResponse(b"done")


def sleep(request: Any) -> Any:
    from django.http import HttpResponse

    time.sleep(_ms(request))
    return HttpResponse(b"done")


def tail(request: Any) -> Any:
    from django.http import HttpResponse

    _spin(_ms(request))
    if random.random() < float(request.GET.get("slow", "0")):
        time.sleep(float(request.GET.get("slow_ms", "0")) / 1000)
    return HttpResponse(b"done")


async def acpu(request: Any) -> Any:
    from django.http import HttpResponse

    _spin(_ms(request))
    return HttpResponse(b"done")


async def asleep(request: Any) -> Any:
    from django.http import HttpResponse

    await asyncio.sleep(_ms(request))
    return HttpResponse(b"done")


async def asleep_in_thread(request: Any) -> Any:
    """An async view whose wait is sync code in the request's thread (``sync_to_async``'s default)."""
    from asgiref.sync import sync_to_async
    from django.http import HttpResponse

    await sync_to_async(time.sleep)(_ms(request))
    return HttpResponse(b"done")


def timeout(request: Any) -> Any:
    """The ``X-Request-Timeout`` the application was given, and the one received when a server took
    time off it (``PriorityThreadWorker``: the time the request queued)."""
    from django.http import JsonResponse

    meta = request.META
    return JsonResponse({"timeout": meta.get("HTTP_X_REQUEST_TIMEOUT"),
                         "received": meta.get("django_aio_request.received_timeout")})  # fmt: skip


def metrics(request: Any) -> Any:
    from django.http import HttpResponse
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)


def _urls() -> list[Any]:
    from django.urls import path

    return [
        path("cpu", cpu),
        path("sleep", sleep),
        path("tail", tail),
        path("acpu", acpu),
        path("asleep", asleep),
        path("asleep-in-thread", asleep_in_thread),
        path("timeout", timeout),
        path("metrics", metrics),
    ]


def __getattr__(name: str) -> Any:
    if name == "urlpatterns":  # built when Django resolves the first URL, after setup
        return _urls()
    raise AttributeError(name)


def wsgi() -> Any:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", __name__)
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()


def asgi() -> Any:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", __name__)
    from django.core.asgi import get_asgi_application

    return get_asgi_application()
