"""One hop of the demo chain frontend -> orders -> billing, the same code in every service.

A hop reports what it received (``X-Request-Timeout``, ``X-Request-Priority``, ``X-Service-Name``),
what the deadline middleware put into the context, and how long it took. It works ``?work=``
seconds, then either calls the next hop (``settings.DEMO_NEXT_HOP``, a client name) with the
deadline and priority of the context, or, at the end of the chain, behaves as the query asks
(slow, flaky). A hop whose downstream failed still answers 200 with its report, so only the hop
next to the failure retries.
"""

import json
import math
import random
import time
from collections.abc import Mapping
from typing import TypedDict

from django.conf import settings
from django.http import HttpRequest

from django_aio_request import Deadline, Priority, Response, clients, get, get_context

# Query parameters passed down the chain: the seconds each hop works before it calls on (or answers),
# billing's behaviour, and a tag to find a call's requests by.
FORWARDED = ("work", "delay", "fail", "slow", "slow_delay", "run")
CHAIN = ("frontend", "orders", "billing")
# The frontend's clients to read the other services' ``stats`` through (their endpoints are ``/demo/``).
STATS_CLIENTS = {"orders": "orders", "billing": "single"}
STATS_TRIES, STATS_BACKOFF = 3, 0.2  # a read of /demo/stats a busy service shed is tried again


class Received(TypedDict):
    timeout: str | None  # the headers as received
    priority: str | None
    caller: str | None
    context_timeout: float | None  # seconds left in the context when the view started
    context_priority: str | None


class Downstream(TypedDict):
    status: int
    elapsed_ms: float
    report: "HopReport | None"


class HopReport(TypedDict):
    service: str
    received: Received
    elapsed_ms: float
    slept: float | None  # at the end of the chain
    failed: bool
    downstream: Downstream | None


def service_name() -> str:
    return str(getattr(settings, "DEMO_SERVICE", "demo"))


def next_hop() -> str | None:
    value = getattr(settings, "DEMO_NEXT_HOP", None)
    return None if value is None else str(value)


def number(query: Mapping[str, str], key: str, default: float = 0.0, maximum: float = 10.0) -> float:
    """A query parameter as a number in [0, maximum]; anything else is ``default``."""
    try:
        value = float(query.get(key, default))
    except ValueError:
        return default
    return min(max(value, 0.0), maximum) if math.isfinite(value) else default


def misbehave(query: Mapping[str, str]) -> tuple[float, bool]:
    """Do what the query asks of the simulated service and return (seconds slept, failed).

    ``cpu`` seconds of CPU first (Python code holding the GIL); ``delay`` seconds always; a share
    ``slow`` of requests ``slow_delay`` (default 1 s) more; a share ``fail`` answers 503.
    """
    spin_until = time.perf_counter() + number(query, "cpu", maximum=1.0)
    while time.perf_counter() < spin_until:
        pass
    delay = number(query, "delay")
    if random.random() < number(query, "slow", maximum=1.0):
        delay += number(query, "slow_delay", default=1.0)
    time.sleep(delay)
    return delay, random.random() < number(query, "fail", maximum=1.0)


def received(request: HttpRequest) -> Received:
    context = get_context()
    return Received(
        timeout=request.headers.get("X-Request-Timeout"),
        priority=request.headers.get("X-Request-Priority"),
        caller=request.headers.get("X-Service-Name"),
        context_timeout=None if context.deadline is None else round(context.deadline.timeout, 3),
        context_priority=None if context.priority is None else str(context.priority),
    )


def hop(request: HttpRequest, query: Mapping[str, str]) -> HopReport:
    """Serve one hop of the chain (see the module docstring); ``query`` holds the parameters."""
    started = time.monotonic()
    report = HopReport(
        service=service_name(), received=received(request), elapsed_ms=0.0, slept=None, failed=False, downstream=None
    )
    time.sleep(number(query, "work", maximum=5.0))  # the hop's own work: the deadline left shrinks
    alias = next_hop()
    if alias is None:
        report["slept"], report["failed"] = misbehave(query)
    else:
        params = {key: query[key] for key in FORWARDED if query.get(key)}
        called = time.monotonic()
        with clients[alias].request(get("hop", query_parameters=params)) as response:
            report["downstream"] = Downstream(
                status=response.status, elapsed_ms=_ms_since(called), report=_report_in(response)
            )
    report["elapsed_ms"] = _ms_since(started)
    return report


def hops(report: HopReport | None) -> list[HopReport]:
    """The reports of a chain, outermost first."""
    chain = []
    while report is not None:
        chain.append(report)
        report = report["downstream"]["report"] if report["downstream"] else None
    return chain


class Row(TypedDict):
    service: str
    report: HopReport | None  # None: its answer did not reach the frontend in time, or it was not called
    received: int | None  # requests of this call it received (None: unknown)


def rows(report: HopReport, run: str) -> list[Row]:
    """A row per service of the chain for a call tagged ``run``, with what each reported and received."""
    reports = {hop["service"]: hop for hop in hops(report)}
    received = {CHAIN[0]: 1, **{service: requests_received(service, run) for service in STATS_CLIENTS}}
    return [Row(service=s, report=reports.get(s), received=received.get(s)) for s in CHAIN]


def requests_received(service: str, run: str) -> int | None:
    """How many requests tagged ``run`` ``service`` has received (asked with a deadline of its own:
    the chain's may be over), or None when it cannot tell.

    Orders sheds load, and right after a chain (its limit at 1, the chain's own request still there)
    it shed this read at normal priority: the page said orders was "not called". The read claims high
    priority and is tried again after a 503, as the shedding page's scrape is.
    """
    call = get("stats", query_parameters={"run": run})
    deadline = Deadline.from_timeout(2.0)
    for _ in range(STATS_TRIES):
        with clients[STATS_CLIENTS[service]].request(call, deadline=deadline, priority=Priority.HIGH) as response:
            if response.is_successful():
                return len(response.json()["arrivals"])
            if response.status != 503 or deadline.timeout < STATS_BACKOFF:
                return None
        time.sleep(STATS_BACKOFF)
    return None


def _report_in(response: Response) -> HopReport | None:
    body = response.read()
    if not body:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) and "service" in data else None  # type: ignore[return-value]


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)
