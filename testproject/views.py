"""Demo views. Every service: ``demo/hop`` (one hop of the chain), ``demo/stats`` (what it received)
and ``demo/downstream/...`` (a simulated service). The frontend also serves the pages."""

import contextlib
import functools
import gc
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from django_aio_request import clients, get, set_context, timeout
from testproject import chain, describe, gc_pauses, hedging, shedding, svg
from testproject.arrivals import ARRIVALS
from testproject.forms import ChainForm, ClientsForm, HedgingForm

INDEX_CLIENTS = ("single", "sequential", "hedged")
TIMEOUT_SHOWN = 2.0  # the TIMEOUT of the Clients page's clients (settings.demo_frontend), named by its links
HEDGING_BUDGET_SECONDS = 20.0
SHEDDING_SECONDS = 3.0
View = Callable[[HttpRequest], HttpResponse]


class _OneRun:
    """The hedging and load-shedding experiments, one at a time in the frontend's process.

    Their figures are what billing and orders counted over the run: a run abandoned in the browser
    (a double click on Run, a reload) goes on here to its end, and a run started meanwhile counted
    its requests too (single attempts "load 1.993" for 300 calls, orders' 503s twice the page's).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started: tuple[str, float] | None = None  # (the page, time.monotonic()) of the run going on

    @contextlib.contextmanager
    def slot(self, page: str) -> Iterator[str | None]:
        """None while this run of ``page`` holds the slot; else why it may not run now."""
        if not self._lock.acquire(blocking=False):
            yield self._busy_message()
            return
        self.started = (page, time.monotonic())
        try:
            yield None
        finally:
            self.started = None
            self._lock.release()

    def _busy_message(self) -> str:
        started = self.started
        if started is None:  # it ended meanwhile
            return "Another run was just ending: run again."
        page, at = started
        return (
            f"A {page} run started {time.monotonic() - at:.0f} s ago is still going (a page left or reloaded "
            "runs to its end here): its requests would be counted in this run's figures. Run again when it ends."
        )


_ONE_RUN = _OneRun()


def frontend_page(view: View) -> View:
    """A page of the frontend; the other services answer 404."""

    @functools.wraps(view)
    def page(request: HttpRequest) -> HttpResponse:
        if not getattr(settings, "DEMO_PAGES", False):
            raise Http404(f"this is the {chain.service_name()} service; the pages are on the frontend")
        return view(request)

    return require_GET(page)


@require_GET
def hop(request: HttpRequest) -> JsonResponse:
    report = chain.hop(request, request.GET.dict())
    return JsonResponse(report, status=503 if report["failed"] else 200)


@require_GET
def stats(request: HttpRequest) -> JsonResponse:
    """The service's request count, its latest full garbage collections (testproject/gc_pauses.py) and
    whether it froze its startup objects (``serve.py --freeze-gc``); with ``?run=tag``, also the
    arrivals of requests tagged ``run=tag``."""
    data: dict[str, object] = {
        "service": chain.service_name(),
        "pid": os.getpid(),
        "requests": ARRIVALS.count(),
        "gc_pauses": gc_pauses.latest(),
        "gc_frozen": gc.get_freeze_count(),
    }
    if run := request.GET.get("run"):
        data["arrivals"] = [asdict(arrival) for arrival in ARRIVALS.tagged(run)]
    return JsonResponse(data)


@require_GET
def downstream(request: HttpRequest, name: str) -> HttpResponse:
    """A service to call: ``?delay=seconds`` waits, ``?fail=0.3`` answers 503 that often, ``?slow=0.1`` makes
    that share of requests take ``slow_delay`` (default 1 s) more: a latency tail for hedging to cut."""
    slept, failed = chain.misbehave(request.GET.dict())
    if failed:
        return JsonResponse({"error": "simulated failure"}, status=503)
    return JsonResponse({"name": name, "slept": slept, "received": chain.received(request)})


def no_favicon(request: HttpRequest) -> HttpResponse:
    return HttpResponse(status=204)


@frontend_page
def index(request: HttpRequest) -> HttpResponse:
    """Call billing through each strategy's client with the parameters given, and show the outcomes."""
    form = ClientsForm(request.GET)
    shown = {key: request.GET[key] for key in ClientsForm.BILLING if request.GET.get(key)}  # as typed
    if not form.is_valid():
        context = {"form": form, "results": [], "params": shown, "priority": request.GET.get("priority")}
        return render(request, "testproject/index.html", {**context, "timeout": TIMEOUT_SHOWN}, status=400)
    params = form.billing_parameters()
    priority = form.call_priority()
    configured = clients.settings.clients
    results = []
    for alias in INDEX_CLIENTS:
        spec = configured[alias]
        started = time.monotonic()
        call = get("downstream/things/{id}", path_parameters={"id": 42}, query_parameters=params)
        # The call's deadline: the client's TIMEOUT, or what is left of this page's own if that is less.
        with clients[alias].request(call, priority=priority) as response:
            body = response.json(content_type=None) if response.read() else None
        from_breaker = "X-Circuit-Breaker" in response.headers
        breaker = clients[alias].circuit_breaker
        state = "none" if breaker is None else str(breaker.state.get(spec.endpoint, "closed")).replace("_", " ")
        results.append(
            {
                "client": alias,
                "safe_strategy": describe.strategy(spec.safe_method_strategy, safe=True),
                "unsafe_strategy": describe.strategy(spec.unsafe_method_strategy, safe=False),
                "settings": describe.settings(spec),
                "status": response.status,
                "elapsed_ms": round((time.monotonic() - started) * 1000),
                "breaker": state,
                "received": describe.received(body, response.status, from_breaker, state),
            }
        )
    context = {"form": form, "results": results, "params": shown, "priority": priority, "timeout": TIMEOUT_SHOWN}
    return render(request, "testproject/index.html", context)


@frontend_page
def chain_page(request: HttpRequest) -> HttpResponse:
    """Call down the chain with the deadline and priority of the form (blank: those the frontend received)."""
    form = ChainForm(request.GET or ChainForm.INITIAL)
    rows: list[chain.Row] = []
    if form.is_valid():
        run = uuid.uuid4().hex  # tags this call's requests, to count what each service received
        with set_context(**form.context_arguments()):
            report = chain.hop(request, {**form.forwarded(), "run": run})
        rows = chain.rows(report, run)
    return render(request, "testproject/chain.html", {"form": form, "rows": rows})


@frontend_page
@timeout(60)  # the page's own deadline: the experiment takes up to HEDGING_BUDGET_SECONDS and then some
def hedging_page(request: HttpRequest) -> HttpResponse:
    """With ``?start=1``: the hedging experiment, drawn as two latency histograms side by side."""
    form = HedgingForm(request.GET or None)
    results: list[hedging.VariantResult] = []
    picture = None
    busy = None
    if "start" in request.GET and form.is_valid():
        with _ONE_RUN.slot("hedging") as busy:
            if busy is None:
                results = hedging.run(form.cleaned_data["calls"] or 300, HEDGING_BUDGET_SECONDS)
        picture = (
            None
            if busy
            else svg.histograms(
                [
                    svg.Histogram(
                        title=f"{r.label} ({r.calls} calls)",
                        latencies_ms=r.latencies_ms,
                        marks=[("p50", r.p50), ("p99", r.p99)],
                        colour=colour,
                    )
                    for r, colour in zip(results, ("#c0504d", "#4f81bd"), strict=True)
                ]
            )
        )
    context = {
        "form": form,
        "results": results,
        "picture": picture,
        "tail": hedging.TAIL,
        "rate": hedging.RATE,
        "budget": HEDGING_BUDGET_SECONDS / len(hedging.VARIANTS),
        "busy": busy,
    }
    return render(request, "testproject/hedging.html", context, status=409 if busy else 200)


@frontend_page
@timeout(30)
def shedding_page(request: HttpRequest) -> HttpResponse:
    """With ``?start=1``: orders overloaded by callers of each priority, and what it shed."""
    results: list[shedding.PriorityResult] = []
    samples: list[shedding.Sample] = []
    missed = 0
    busy = None
    if "start" in request.GET:
        with _ONE_RUN.slot("load shedding") as busy:
            if busy is None:
                results, samples, missed = shedding.run(SHEDDING_SECONDS)
    context = {
        "busy": busy,
        "results": results,
        "samples": samples,
        "missed": missed,
        "timeline": shedding.timeline_svg(samples),
        "seconds": SHEDDING_SECONDS,
        "callers": shedding.CALLERS,
        "service_ms": shedding.SERVICE_CPU * 1000,
        "backoff_ms": shedding.BACKOFF * 1000,
    }
    return render(request, "testproject/shedding.html", context, status=409 if busy else 200)
