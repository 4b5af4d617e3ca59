"""URLs of ``benchmarks/load.py``'s caller service: the demo's, and ``/load/hedge-delay``, what this
worker's client ``billing`` has learned as its hedge delay for ``/demo/hop`` (``null`` without
percentile delays), and whether it holds hedges back because the delay says billing is saturated."""

import os

from django.http import HttpRequest, JsonResponse
from django.urls import path

from django_aio_request import clients, get
from django_aio_request.strategies.percentile_delays import PercentileDelaysProvider
from testproject.urls import urlpatterns as demo_urlpatterns

_HOP = get("hop")  # the provider keys its latencies by method and URL template, as chain.hop sends it


def hedge_delay(request: HttpRequest) -> JsonResponse:
    client = clients["billing"]
    safe = getattr(client.strategy, "safe", client.strategy)
    delays = getattr(safe, "delays", None)
    if not isinstance(delays, PercentileDelaysProvider):
        return JsonResponse({"pid": os.getpid(), "delay_ms": None, "saturated": None})
    delay = delays.delay(_HOP)
    saturated = delays.saturated(_HOP)
    return JsonResponse({"pid": os.getpid(), "delay_ms": delay * 1000, "saturated": saturated})


urlpatterns = [path("load/hedge-delay", hedge_delay), *demo_urlpatterns]
