"""The load-shedding page's run (testproject/shedding.py) when orders fails a read of its /metrics."""

import html
import itertools
import re
import time
from collections.abc import Callable

import pytest
from django.test import Client
from pytest_django.fixtures import Settings

from django_aio_request import Priority
from django_aio_request.testing import fake_client, reply
from testproject import shedding, views
from tests.support.loopback import Handler, LoopbackServer, free_port, wait_for_disconnect


def test_a_limit_sample_orders_resets_is_counted_missing_and_the_run_samples_on(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    """An overloaded orders reset a read of its /metrics: the sampling thread died with the traceback
    and the rest of the run had no samples, with nothing on the page saying so (1 of ~20 runs in a review)."""
    settings.AIO_REQUEST = {"CLIENTS": {"orders_single": {"ENDPOINT": "http://127.0.0.1:9/"}}}
    reads = itertools.count()

    def every_other_read_reset(seconds: float) -> shedding.Sample:
        if next(reads) % 2:
            raise ConnectionResetError(104, "Connection reset by peer")
        return shedding.Sample(round(seconds, 2), 2.0, 0.0)

    monkeypatch.setattr(shedding, "orders_gauges", every_other_read_reset)
    monkeypatch.setattr(shedding, "orders_shed", lambda: {p.value: 0.0 for p in Priority})
    monkeypatch.setattr(shedding, "SAMPLE_EVERY", 0.05)
    with fake_client("orders_single") as orders:
        orders.route("*", reply(200, delay=0.01))
        results, samples, missed = shedding.run(0.5)
    assert {r.priority for r in results} == set(shedding.CALLERS)
    # Reads alternate, a sample and a reset: a sample after a reset shows the sampler lived on. How
    # many reads fit in the run is the scheduler's (2 samples in 0.5 s once, under CI's load).
    assert len(samples) >= 2
    assert missed >= 1
    assert abs(len(samples) - missed) <= 1


def _metrics_hang(handler: Handler) -> None:
    wait_for_disconnect(handler, timeout=5.0)  # no answer: the read gives up first


def _metrics_once_then_500() -> Callable[[Handler], None]:
    """An orders whose /metrics answers the read before the run (nothing shed yet), then 500."""
    reads = itertools.count()

    def handle(handler: Handler) -> None:
        if next(reads):
            handler.reply(500, b"Internal Server Error")
        else:
            handler.reply(200, b"# HELP aio_request_server_shed_total requests shed\n", {"Content-Type": "text/plain"})

    return handle


def _metrics_answers(status: int, body: bytes, content_type: str = "text/plain") -> Callable[[Handler], None]:
    return lambda handler: handler.reply(status, body, {"Content-Type": content_type})


# How orders' /metrics fails (a route; None: nothing listens on orders' port), and what the page says.
ORDERS_FAILING_METRICS: dict[str, tuple[Callable[[], Callable[[Handler], None]] | None, str]] = {
    "answers 500": (
        lambda: _metrics_answers(500, b"Internal Server Error"),
        "orders answered its /metrics with 500 before the run",
    ),
    "answers 404": (
        lambda: _metrics_answers(404, b"Not Found"),
        "orders answered its /metrics with 404 before the run",
    ),
    "answers a page that is no metrics": (
        lambda: _metrics_answers(200, b"<html><body>Welcome</body></html>", "text/html"),
        "orders answered its /metrics with what is not a metrics page before the run",
    ),
    "hangs": (lambda: _metrics_hang, "orders did not answer its /metrics within 0.3 s before the run"),
    "refuses": (None, "orders refused the connection to its /metrics (is it running?) before the run"),
    "answers before the run only": (_metrics_once_then_500, "orders answered its /metrics with 500 after the run"),
}


@pytest.mark.parametrize(("metrics", "said"), list(ORDERS_FAILING_METRICS.values()), ids=list(ORDERS_FAILING_METRICS))
def test_the_page_says_what_it_could_not_read_from_orders_and_never_answers_500(
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    metrics: Callable[[], Callable[[Handler], None]] | None,
    said: str,
) -> None:
    """README: "a sample orders could not answer is counted as missing on the page". The reads of
    orders' /metrics before and after the run were not guarded: an orders that hung (SIGSTOP), refused
    the connection or answered /metrics with anything but 200 made the page answer 500 (Django's
    debug page, TimeoutError or HTTPError) instead of the run's figures (a review)."""
    orders = LoopbackServer()
    try:
        orders.route("/demo/downstream/*", lambda h: h.reply_json({"name": "busy"}))
        if metrics is not None:
            orders.route("/metrics", metrics())
            endpoint = orders.url + "demo/"
        else:
            endpoint = f"http://127.0.0.1:{free_port()}/demo/"  # nothing listens there
        settings.DEMO_PAGES = True
        settings.AIO_REQUEST = {
            "CLIENTS": {
                "orders_single": {"ENDPOINT": endpoint, "TIMEOUT": 2.0, "SAFE_METHOD_STRATEGY": {"NAME": "single"}}
            }
        }
        monkeypatch.setattr(views, "SHEDDING_SECONDS", 0.3)
        monkeypatch.setattr(shedding, "SCRAPE_TIMEOUT", 0.3)
        started = time.monotonic()
        response = client.get("/shedding/?start=1")
        elapsed = time.monotonic() - started
    finally:
        orders.close()
    page = response.content.decode()
    assert response.status_code == 200, page[:2000]
    rows = re.findall(r'<tr data-priority="(\w+)" data-calls="(\d+)"[^>]*data-counted="([^"]*)"', page)
    assert [priority for priority, _, _ in rows] == ["high", "normal", "low"], page
    for _, calls, counted in rows:
        assert int(calls) > 0  # the run went on: its callers' figures are there
        assert html.unescape(counted) == f"unknown: {said}"  # what orders counted: in words, and why
    # Not asserted here: that the limit's samples read during the run are counted missing. Within a
    # 0.3 s run the sampler may get no turn on a loaded machine (a CI run: no sample, nothing missed);
    # test_a_limit_sample_orders_resets_is_counted_missing_and_the_run_samples_on holds it.
    assert elapsed < 5.0
