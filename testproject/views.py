"""Demo views: a simulated downstream service, and a page that calls it through each named client."""

import random
import time

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from django_aio_request import Priority, clients, get


def downstream(request: HttpRequest, name: str) -> HttpResponse:
    """A service to call: ``?delay=seconds`` waits, ``?fail=0.3`` answers 503 that often, ``?slow=0.1`` makes
    that share of requests take ``slow_delay`` (default 1 s): a latency tail for hedging to cut."""
    delay = float(request.GET.get("delay", "0"))
    if random.random() < float(request.GET.get("slow", "0")):
        delay += float(request.GET.get("slow_delay", "1"))
    time.sleep(min(delay, 10.0))
    if random.random() < float(request.GET.get("fail", "0")):
        return JsonResponse({"error": "simulated failure"}, status=503)
    return JsonResponse(
        {
            "name": name,
            "slept": delay,
            "received_timeout": request.headers.get("X-Request-Timeout"),
            "received_priority": request.headers.get("X-Request-Priority"),
            "caller": request.headers.get("X-Service-Name"),
        }
    )


def index(request: HttpRequest) -> HttpResponse:
    """Call the downstream through every configured client with the parameters given, and show the outcomes."""
    params = {key: request.GET[key] for key in ("delay", "fail", "slow", "slow_delay") if request.GET.get(key)}
    priority = Priority.parse(request.GET.get("priority")) or Priority.NORMAL
    results = []
    for alias in clients:
        started = time.monotonic()
        with clients[alias].request(get("things/{id}", path_parameters={"id": 42}, query_parameters=params),
                                    priority=priority) as response:  # fmt: skip
            body = response.json(content_type=None) if response.read() else None
            results.append(
                {
                    "client": alias,
                    "strategy": clients[alias].strategy,
                    "status": response.status,
                    "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
                    "circuit_breaker": "X-Circuit-Breaker" in response.headers,
                    "body": body,
                }
            )
    return render(request, "testproject/index.html", {"results": results, "params": params, "priority": priority})
