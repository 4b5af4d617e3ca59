"""``PriorityThreadWorker`` (``server/priority_worker.py``): gunicorn's gthread worker with its queue
ordered by the claimed priority, under real gunicorn with 1 thread (where the whole queue is
gunicorn's), plus what it reads from settings and how it hands the queueing time to Django."""

import collections
import http.client
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gunicorn
import pytest
from gunicorn.workers.gthread import ThreadWorker
from prometheus_client import REGISTRY
from pytest_django.fixtures import Settings

from benchmarks._shedding_load import BIN, ROOT, Callers, Outcome, closed_loop, server
from django_aio_request import Priority
from django_aio_request.metrics import deferred as metrics
from django_aio_request.server import priority_worker
from django_aio_request.server.priority_worker import (
    RECEIVED_TIMEOUT,
    PriorityThreadWorker,
    QueueWaitApp,
    queue_priority,
    queue_timeout,
)
from django_aio_request.server.shedding.priority_pool import PriorityThreadPool
from django_aio_request.server.shedding.request_head import Claims
from tests.support.loopback import free_port, wait_until_listening

HIGH, NORMAL, LOW = Priority.HIGH, Priority.NORMAL, Priority.LOW
WORKER = "gunicorn-priority"


def policy_trusting_nobody(request: Any, claimed: Priority) -> Priority:
    return LOW


# What the queue reads from settings.


def test_the_queue_takes_the_claim_or_the_default_priority(settings: Settings) -> None:
    settings.AIO_REQUEST = {"PRIORITY": "low"}
    assert queue_priority(Claims(HIGH)) is HIGH
    assert queue_priority(Claims()) is LOW  # nothing claimed: AIO_REQUEST["PRIORITY"]


def test_the_queue_caps_claims_as_the_known_services_policy_does(settings: Settings) -> None:
    settings.AIO_REQUEST = {"KNOWN_SERVICES": ["billing"], "SHEDDING": {"PRIORITY_POLICY": "known_services"}}
    assert queue_priority(Claims(HIGH, "Billing")) is HIGH
    assert queue_priority(Claims(HIGH, "impostor")) is NORMAL
    assert queue_priority(Claims(HIGH)) is NORMAL
    assert queue_priority(Claims(LOW, "impostor")) is LOW


def test_under_a_callable_policy_every_claim_queues_as_an_untrusted_callers(settings: Settings) -> None:
    settings.AIO_REQUEST = {
        "SHEDDING": {"PRIORITY_POLICY": f"{__name__}.policy_trusting_nobody", "UNTRUSTED_PRIORITY": "normal"}
    }
    assert queue_priority(Claims(HIGH, "billing")) is NORMAL  # the callable needs the parsed request
    assert queue_priority(Claims(LOW)) is LOW  # lowering a claim is always allowed


def test_the_queue_counts_the_timeout_the_middleware_will_count(settings: Settings) -> None:
    settings.AIO_REQUEST = {"TIMEOUT": 7, "MAX_TIMEOUT": 30}
    assert queue_timeout(Claims(timeout="4.987")) == 4.987
    assert queue_timeout(Claims(timeout="900")) == 30  # capped as the middleware caps it
    # No deadline, as load shedding judges such a request: TIMEOUT (7) is a default nobody waits for.
    assert queue_timeout(Claims(timeout="junk")) == math.inf  # ignored as the middleware ignores it
    assert queue_timeout(Claims()) == math.inf


Answers = list[tuple[str, dict[str, str]]]


def recording_app() -> tuple[QueueWaitApp, list[dict[str, Any]], Answers, Callable[..., None]]:
    """A QueueWaitApp around an application recording the environs it ran, and a start_response
    recording the answers the worker made itself."""
    ran: list[dict[str, Any]] = []
    answers: Answers = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        ran.append(dict(environ))
        return []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        answers.append((status, dict(headers)))

    return QueueWaitApp(app), ran, answers, start_response


def low_shed_for_queue_timeout() -> float:
    labels = {"priority": "low", "reason": "queue_timeout"}
    return REGISTRY.get_sample_value("aio_request_server_shed_total", labels) or 0.0


def refused_latency() -> float:
    """How many requests ``aio_request_server_latency`` holds as refused before any route (the
    environs of these tests name no method nor caller)."""
    labels = {"request_client": "unknown", "request_method": "other", "request_path": "<unmatched>"}
    return REGISTRY.get_sample_value("aio_request_server_latency_count", {**labels, "response_status": "503"}) or 0.0


def test_a_request_without_a_deadline_is_refused_once_it_waited_queue_timeout_and_may_try_again(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    wrapped, ran, answers, start_response = recording_app()
    metrics.flush_all()
    before, latency_before = low_shed_for_queue_timeout(), refused_latency()
    settings.AIO_REQUEST = {"TIMEOUT": 0.2, "SHEDDING": {"QUEUE_TIMEOUT": 0.5, "RETRY_AFTER": 3}}
    monkeypatch.setattr(priority_worker, "take_queued_for", lambda: 0.48)
    for environ in [{}, {"HTTP_X_REQUEST_TIMEOUT": "junk"}]:  # waited past TIMEOUT, short of QUEUE_TIMEOUT: served
        wrapped({**environ, "HTTP_X_REQUEST_PRIORITY": "low"}, start_response)
        assert ran.pop() == {**environ, "HTTP_X_REQUEST_PRIORITY": "low"}  # as received
    monkeypatch.setattr(priority_worker, "take_queued_for", lambda: 0.5)
    for environ in [{}, {"HTTP_X_REQUEST_TIMEOUT": "junk"}]:
        body = wrapped({**environ, "HTTP_X_REQUEST_PRIORITY": "low"}, start_response)
        assert list(body) == [b""]
    assert ran == []  # Django never saw them
    assert answers == [("503 Service Unavailable", {"Retry-After": "3", "Content-Length": "0"})] * 2
    assert low_shed_for_queue_timeout() - before == 2
    metrics.flush_all()
    assert refused_latency() - latency_before == 2  # in the server's latency too, timed by the wait
    # QUEUE_TIMEOUT 0 bounds nothing here (every request queues for a moment), nor does no SHEDDING.
    for conf in [{"SHEDDING": {"QUEUE_TIMEOUT": 0}}, {}]:
        settings.AIO_REQUEST = conf
        wrapped({}, start_response)
        assert ran.pop() == {}
    monkeypatch.setattr(priority_worker, "take_queued_for", lambda: 1e-5)
    settings.AIO_REQUEST = {"SHEDDING": {"QUEUE_TIMEOUT": 0}}
    wrapped({}, start_response)
    assert ran.pop() == {}
    assert len(answers) == 2


def test_a_request_with_a_deadline_is_refused_once_it_waited_queue_timeout_and_told_whether_to_try_again(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    """QUEUE_TIMEOUT bounds a request with a deadline too: under a flood of better priority, one sent
    with 5 s waited for a thread all 5 s and was then refused (503, X-Do-Not-Retry) in a review."""
    wrapped, ran, answers, start_response = recording_app()
    before = low_shed_for_queue_timeout()
    settings.AIO_REQUEST = {"SHEDDING": {"QUEUE_TIMEOUT": 0.5, "RETRY_AFTER": 3}}
    monkeypatch.setattr(priority_worker, "take_queued_for", lambda: 0.48)
    wrapped({"HTTP_X_REQUEST_TIMEOUT": "5", "HTTP_X_REQUEST_PRIORITY": "low"}, start_response)
    assert ran.pop()["HTTP_X_REQUEST_TIMEOUT"] == "4.520"  # short of QUEUE_TIMEOUT: served, with the time left
    monkeypatch.setattr(priority_worker, "take_queued_for", lambda: 0.5)
    for sent in ["5", "2"]:
        body = wrapped({"HTTP_X_REQUEST_TIMEOUT": sent, "HTTP_X_REQUEST_PRIORITY": "low"}, start_response)
        assert list(body) == [b""]
    assert ran == []  # Django never saw them
    assert answers == [
        ("503 Service Unavailable", {"Retry-After": "3", "Content-Length": "0"}),  # 4.5 s left: may try again
        ("503 Service Unavailable", {"Retry-After": "3", "X-Do-Not-Retry": "1", "Content-Length": "0"}),  # 1.5 s
    ]
    assert low_shed_for_queue_timeout() - before == 2
    # Without SHEDDING (or with QUEUE_TIMEOUT 0) only the deadline bounds the wait.
    for conf in [{"SHEDDING": {"QUEUE_TIMEOUT": 0}}, {}]:
        settings.AIO_REQUEST = conf
        wrapped({"HTTP_X_REQUEST_TIMEOUT": "5"}, start_response)
        assert ran.pop()["HTTP_X_REQUEST_TIMEOUT"] == "4.500"


def test_a_queue_timeout_below_the_slack_refuses_only_requests_that_waited_it(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    """QUEUE_TIMEOUT 5 ms, under the 10 ms the queue allows for its own timing: every request, which
    queues for a moment even on an idle server, was refused (100 of 100 in a review)."""
    wrapped, ran, answers, start_response = recording_app()
    settings.AIO_REQUEST = {"SHEDDING": {"QUEUE_TIMEOUT": 0.005}}
    requests = [{"HTTP_X_REQUEST_TIMEOUT": "5", "HTTP_X_REQUEST_PRIORITY": "high"}, {}]
    monkeypatch.setattr(priority_worker, "take_queued_for", lambda: 0.0005)
    for environ in requests:
        wrapped(dict(environ), start_response)
    assert len(ran) == 2  # served
    assert answers == []
    monkeypatch.setattr(priority_worker, "take_queued_for", lambda: 0.006)
    for environ in requests:
        wrapped(dict(environ), start_response)
    assert len(ran) == 2
    assert [status for status, _ in answers] == ["503 Service Unavailable"] * 2


@pytest.mark.parametrize("queue_timeout", [0.000001, 0.001])
def test_a_queue_timeout_below_a_hand_off_counts_as_one(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, queue_timeout: float
) -> None:
    """QUEUE_TIMEOUT 1 µs: a request handed to an idle thread takes 50 µs to a few ms to start, and
    was refused for it (100 of 100 one at a time on an idle worker; 1-5 % at 1 ms). Under
    MIN_QUEUE_BOUND (5 ms) the queue allows that; a request that waited longer is refused."""
    wrapped, ran, answers, start_response = recording_app()
    settings.AIO_REQUEST = {"SHEDDING": {"QUEUE_TIMEOUT": queue_timeout}}
    requests = [{"HTTP_X_REQUEST_TIMEOUT": "5", "HTTP_X_REQUEST_PRIORITY": "high"}, {}]
    monkeypatch.setattr(priority_worker, "take_queued_for", lambda: 0.003)
    for environ in requests:
        wrapped(dict(environ), start_response)
    assert (len(ran), answers) == (2, [])
    monkeypatch.setattr(priority_worker, "take_queued_for", lambda: 0.006)
    for environ in requests:
        wrapped(dict(environ), start_response)
    assert len(ran) == 2
    assert [status for status, _ in answers] == ["503 Service Unavailable"] * 2


def test_the_application_gets_the_timeout_less_the_time_queued_and_keeps_the_one_received(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[dict[str, Any]] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        seen.append(dict(environ))
        return []

    wrapped = QueueWaitApp(app)
    monkeypatch.setattr(priority_worker, "take_queued_for", lambda: 0.25)
    for sent, given in [("5", "4.750"), (" 1.5 ", "1.250"), ("0.26", "0.010")]:
        wrapped({"HTTP_X_REQUEST_TIMEOUT": sent}, lambda *a: None)
        assert seen[-1]["HTTP_X_REQUEST_TIMEOUT"] == given
        assert seen[-1].get(RECEIVED_TIMEOUT) == sent
    # Junk, 0 and values below LOW_TIMEOUT_THRESHOLD (5 ms) go on as received: the middleware
    # counts them under their own reason (a rewritten "0.001" read "0", counted as "expired").
    for sent in ["junk", "0", "0.001", "5.2e-05", "1e-400"]:
        wrapped({"HTTP_X_REQUEST_TIMEOUT": sent}, lambda *a: None)
        assert seen[-1]["HTTP_X_REQUEST_TIMEOUT"] == sent
        assert RECEIVED_TIMEOUT not in seen[-1]
    wrapped({}, lambda *a: None)
    assert "HTTP_X_REQUEST_TIMEOUT" not in seen[-1]  # no header is made up
    monkeypatch.setattr(priority_worker, "take_queued_for", lambda: 0.0)
    wrapped({"HTTP_X_REQUEST_TIMEOUT": "5"}, lambda *a: None)
    assert seen[-1]["HTTP_X_REQUEST_TIMEOUT"] == "5"
    assert RECEIVED_TIMEOUT not in seen[-1]
    # Rounded down to whole milliseconds, below 10 ms to whole microseconds: the time left never grows
    # (0.0051 must not read 0.006).
    monkeypatch.setattr(priority_worker, "take_queued_for", lambda: 0.00001)
    for sent, given in [("0.0061", "0.006090"), ("5", "4.999"), ("0.0049", "0.0049"), ("4.9e-03", "4.9e-03")]:
        wrapped({"HTTP_X_REQUEST_TIMEOUT": sent}, lambda *a: None)
        assert seen[-1]["HTTP_X_REQUEST_TIMEOUT"] == given  # the last two: below the threshold already


def test_with_no_low_timeout_threshold_under_a_millisecond_left_is_served_in_microseconds(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    """LOW_TIMEOUT_THRESHOLD 0 lets any time left through, as gthread serves it; the time left was
    counted in whole milliseconds, so 0.0009 s less 10 µs queued read 0 and was refused (503)."""
    settings.AIO_REQUEST = {"LOW_TIMEOUT_THRESHOLD": 0}
    seen: list[str] = []
    answers: list[str] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        seen.append(environ["HTTP_X_REQUEST_TIMEOUT"])
        return []

    wrapped = QueueWaitApp(app)
    monkeypatch.setattr(priority_worker, "take_queued_for", lambda: 0.00001)
    for sent, given in [("0.0009", "0.000890"), ("5.2e-05", "0.000042"), ("0.0019", "0.001890"), ("0.011", "0.010")]:
        wrapped({"HTTP_X_REQUEST_TIMEOUT": sent}, lambda status, headers: answers.append(status))
        assert seen[-1] == given
    assert answers == []
    monkeypatch.setattr(priority_worker, "take_queued_for", lambda: 0.001)
    body = wrapped({"HTTP_X_REQUEST_TIMEOUT": "0.0009"}, lambda status, headers: answers.append(status))
    assert list(body) == [b""]
    assert answers == ["503 Service Unavailable"]  # the queue used it up
    # 5.9 ms left where the threshold is 5.5 ms: served with 0.005900, not refused as 0.005 (a review).
    settings.AIO_REQUEST = {"LOW_TIMEOUT_THRESHOLD": 0.0055}
    monkeypatch.setattr(priority_worker, "take_queued_for", lambda: 0.0061)
    wrapped({"HTTP_X_REQUEST_TIMEOUT": "0.012000"}, lambda status, headers: answers.append(status))
    assert seen[-1] == "0.005900"
    assert answers == ["503 Service Unavailable"]  # nothing more refused


def test_a_timeout_above_max_timeout_loses_the_time_queued_from_max_timeout(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    # The queue counts "100" as MAX_TIMEOUT (1 s) and takes it before any other once that is gone
    # (as a quick refusal): taken off the value as sent, it ran its view with a fresh MAX_TIMEOUT.
    settings.AIO_REQUEST = {"TIMEOUT": 1.0, "MAX_TIMEOUT": 1.0}
    ran: list[dict[str, Any]] = []
    answers: list[str] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        ran.append(dict(environ))
        return []

    wrapped = QueueWaitApp(app)
    monkeypatch.setattr(priority_worker, "take_queued_for", lambda: 0.25)
    wrapped({"HTTP_X_REQUEST_TIMEOUT": "100"}, lambda *a: None)
    assert (ran[-1]["HTTP_X_REQUEST_TIMEOUT"], ran[-1][RECEIVED_TIMEOUT]) == ("0.750", "100")
    monkeypatch.setattr(priority_worker, "take_queued_for", lambda: 1.2)
    body = wrapped({"HTTP_X_REQUEST_TIMEOUT": "100"}, lambda status, headers: answers.append(status))
    assert list(body) == [b""]
    assert answers == ["503 Service Unavailable"]
    assert len(ran) == 1  # Django never saw it


def test_a_request_whose_time_the_queue_used_up_is_shed_without_django(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    settings.AIO_REQUEST = {"KNOWN_SERVICES": ["billing"], "SHEDDING": {"PRIORITY_POLICY": "known_services"}}
    ran: list[str] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        ran.append(environ["HTTP_X_REQUEST_TIMEOUT"])
        return []

    wrapped = QueueWaitApp(app)
    monkeypatch.setattr(priority_worker, "take_queued_for", lambda: 0.25)
    answers: list[tuple[str, dict[str, str]]] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        answers.append((status, dict(headers)))

    def shed(priority: str) -> float:
        labels = {"priority": priority, "reason": "deadline"}
        return REGISTRY.get_sample_value("aio_request_server_shed_total", labels) or 0.0

    before = {p: shed(p) for p in ("high", "normal")}
    for sent in ["0.25", "0.254", "0.1"]:  # nothing left; less than the 5 ms threshold; nothing left
        body = wrapped({"HTTP_X_REQUEST_TIMEOUT": sent, "HTTP_X_REQUEST_PRIORITY": "high"}, start_response)
        assert list(body) == [b""]
    refusal = ("503 Service Unavailable", {"Retry-After": "1", "X-Do-Not-Retry": "1", "Content-Length": "0"})
    assert answers == [refusal] * 3
    assert ran == []  # Django never saw them
    assert shed("normal") - before["normal"] == 3  # an unknown caller's high claim, capped as in the queue
    headers = {"HTTP_X_REQUEST_PRIORITY": "high", "HTTP_X_SERVICE_NAME": "billing"}
    wrapped({**headers, "HTTP_X_REQUEST_TIMEOUT": "0.3"}, start_response)
    assert ran == ["0.050"]  # enough left: served with it
    wrapped({**headers, "HTTP_X_REQUEST_TIMEOUT": "0.004"}, start_response)
    assert ran[-1] == "0.004"  # below the threshold already: the middleware's 408 (low_timeout), as without queueing
    assert shed("high") == before["high"]


def test_only_the_first_request_of_a_queued_item_loses_the_queueing_time() -> None:
    # An HTTP/2 connection is one item of the queue serving many requests: the later ones did not queue.
    seen: list[str] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        seen.append(environ["HTTP_X_REQUEST_TIMEOUT"])
        return []

    wrapped = QueueWaitApp(app)
    pool = PriorityThreadPool(1, lambda args: (1, math.inf))
    try:
        gate = threading.Event()
        pool.submit(lambda: gate.wait(5))
        item = pool.submit(lambda: [wrapped({"HTTP_X_REQUEST_TIMEOUT": "5"}, lambda *a: None) for _ in range(2)])
        time.sleep(0.2)
        gate.set()
        item.result(5)
    finally:
        pool.shutdown()
    assert float(seen[0]) <= 4.8
    assert seen[1] == "5"


# Under gunicorn, one thread: every waiting request is in the worker's queue.


def latencies(outcomes: list[Outcome], priority: str) -> list[float]:
    return sorted(o.elapsed for o in outcomes if o.priority == priority and o.status == 200)


def flood(kind: str, path: str, config: dict[str, Any] | None = None, **kwargs: Any) -> list[Outcome]:
    """One gunicorn worker of one thread; three callers sending low priority and one sending high."""
    with server(kind, 1, config or {"shedding": None}) as url:
        groups = [Callers(1, priorities=("high",)), Callers(3, priorities=("low",))]
        return closed_loop(url, groups, path=path, seconds=2.0, deadline=5.0, backoff=0.01, **kwargs)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("shedding", [None, True], ids=["without shedding", "with shedding"])
def test_on_one_thread_high_priority_waits_for_the_request_in_hand_not_for_the_queued_low(shedding: Any) -> None:
    # 50 ms views: in gthread's first-come queue each high request waits for the one in hand and the
    # three low ones queued before it (about 200 ms), as long as the low ones wait; here for the one in
    # hand only (up to 100 ms), while the low ones wait behind each other. Judged against the low ones
    # of the same run, not a fixed bound: a slower machine stretches both (a 0.14 s bound failed on a
    # VM where Django took 4 times as long, at p90 0.157-0.167 s). Three in four high requests, not nine
    # in ten: of the ~16 a run sends, the p90 is the second slowest, and two requests held up by a
    # machine busy elsewhere (0.72 s beside a low median of 0.32 s, CI beside three other sessions)
    # decided it; in the first-come queue the high ones wait as the low ones do, and this fails too.
    # The medians' ratio is 0.26-0.33 on a quiet machine (0.502 in a CI run, where 0.5 was the bound,
    # and 0.654 in another, where it was 0.65: the low ones' median fell to 0.16 s) and 0.999-1.002 in
    # the first-come queue (plain gthread, with shedding and without, three runs each): 0.8 tells the
    # two apart without sitting on the one it expects.
    outcomes = flood(WORKER, "/sleep?ms=50", {"shedding": shedding})
    high, low = latencies(outcomes, "high"), latencies(outcomes, "low")
    assert len(high) >= 10
    assert len(low) >= 3
    assert statistics.quantiles(high, n=4)[2] < statistics.median(low), (high, low)
    assert statistics.median(high) < 0.8 * statistics.median(low), (high, low)


def slow_starter(url: str, priority: str, stop: float, into: list[float]) -> None:
    """Requests on new connections whose bytes come 20 ms after the connection (as from a client that
    connects, then builds its request): gunicorn accepts each before its priority can be read."""
    host, port = url.removeprefix("http://").split(":")
    head = f"GET /sleep?ms=50 HTTP/1.1\r\nHost: svc\r\nX-Request-Priority: {priority}\r\nConnection: close\r\n\r\n"
    while time.monotonic() < stop:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            time.sleep(0.02)
            sent = time.monotonic()
            sock.sendall(head.encode())
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        if answer.startswith(b"HTTP/1.1 200"):
            into.append(time.monotonic() - sent)


def test_on_a_stop_connections_waiting_for_their_first_bytes_get_the_linger_and_the_loop_is_woken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # gunicorn 25.2-27.0.0 sleep on the poller during a stop until something wakes them (their real
    # servers: tests/server/test_priority_worker_releases.py); a release without that wake-up queue
    # must not make the stop raise.
    monkeypatch.setattr(priority_worker, "STOP_LINGER", 0.05)
    monkeypatch.setattr(ThreadWorker, "murder_pending", lambda self: None)  # gthread's own closing
    woken = threading.Event()

    class MethodQueue:
        def defer(self, callback: Callable[..., None], *args: Any) -> None:
            callback(*args)
            woken.set()

    for method_queue in [MethodQueue(), None]:
        worker = object.__new__(PriorityThreadWorker)
        waiting, fresh = SimpleNamespace(timeout=time.monotonic() + 7), SimpleNamespace(timeout=time.monotonic() + 0.01)
        worker.alive, worker.pending_conns = False, collections.deque([fresh, waiting])
        if method_queue is not None:
            worker.method_queue = method_queue
        stopped_at = time.monotonic()
        worker.murder_pending()
        worker.murder_pending()  # once: later rounds do not start more timers
        assert waiting.timeout <= stopped_at + 0.06
        assert fresh.timeout < stopped_at + 0.02  # an earlier expiry is kept
    assert woken.wait(2)


def check_the_order_of_new_connections(url: str) -> None:
    """One caller sending high and three sending low for 2.5 s, every request on a new connection
    written 20 ms after it (a server with one thread): high waits for the request in hand only.
    One request first: the worker's first (Django loading its views) took 1.1 s in a loaded run
    and, with a few more behind it, took the high p90 to 0.49 s: start-up, not ordering."""
    slow_starter(url, "high", time.monotonic() + 0.001, [])
    stop = time.monotonic() + 2.5
    high: list[float] = []
    lows: list[list[float]] = [[], [], []]
    callers = [threading.Thread(target=slow_starter, args=(url, "high", stop, high))]
    callers += [threading.Thread(target=slow_starter, args=(url, "low", stop, low)) for low in lows]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join(20)
    assert len(high) >= 10
    # High waits for the request in hand only; a low one for the highs and the other lows. Alone here:
    # high p90 0.083 s against a low median of 0.29 s, where plain gthread read 0.19 s both. Judged
    # against each other, not against a fixed 0.14 s, which a CI run beside the parallel suite passed
    # at 0.151 s: the load slows both alike.
    lows_median = statistics.median(x for low in lows for x in low)
    assert statistics.quantiles(high, n=10)[8] < 0.6 * lows_median, (high, lows_median)
    # Every low caller is served in turn: none is left behind requests whose priority was not yet known.
    assert min(len(low) for low in lows) >= 3, [len(low) for low in lows]


@pytest.mark.timeout(120)
def test_the_order_holds_for_requests_on_new_connections_that_write_after_connecting() -> None:
    with server(WORKER, 1, {"shedding": None}) as url:
        check_the_order_of_new_connections(url)


@pytest.mark.timeout(120)
def test_a_timeout_sent_again_past_the_peeked_bytes_does_not_put_a_request_ahead() -> None:
    """The queue read claims from a head not all there: a low-priority request claiming 10 ms in
    its first 8 KiB and 30 s after them was taken ahead of everyone once its "deadline" passed, and
    the middleware, reading the joined ``0.01,30`` as malformed, served it in full (a review: 30 such
    callers left trusted high priority 0% in time). Such a request queues at the default priority now,
    behind a high one that came after it."""
    with server(WORKER, 1, {"shedding": None}) as url:
        host, port = url.removeprefix("http://").split(":")
        done: list[str] = []

        def raw(name: str, head: bytes) -> None:
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(head)
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            done.append(name)

        busy, _ = in_background(url, "/sleep?ms=400", {})
        time.sleep(0.15)  # the one thread is busy: the others queue
        padding = b"".join(b"X-Padding-%d: %s\r\n" % (n, b"x" * 1000) for n in range(10))
        sneaking = (
            b"GET /sleep?ms=50 HTTP/1.1\r\nHost: svc\r\nX-Request-Priority: low\r\nX-Request-Timeout: 0.01\r\n"
            + padding
            + b"X-Request-Timeout: 30\r\nConnection: close\r\n\r\n"
        )
        first = threading.Thread(target=raw, args=("sneaking", sneaking))
        first.start()
        time.sleep(0.05)
        high = b"GET /sleep?ms=50 HTTP/1.1\r\nHost: svc\r\nX-Request-Priority: high\r\nConnection: close\r\n\r\n"
        second = threading.Thread(target=raw, args=("high", high))
        second.start()
        for thread in (busy, first, second):
            thread.join(30)
    assert done == ["high", "sneaking"]


def ask(url: str, path: str, headers: dict[str, str], into: list[tuple[int, dict[str, str], bytes, float]]) -> None:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    started = time.monotonic()
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        into.append((response.status, dict(response.getheaders()), response.read(), time.monotonic() - started))
    finally:
        connection.close()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of one ``/metrics`` page, by name and sorted labels."""
    from prometheus_client.parser import text_string_to_metric_families

    answers: list[Any] = []
    ask(url, "/metrics", {}, answers)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answers[0][2].decode())
        for sample in family.samples
    }


def in_background(url: str, path: str, headers: dict[str, str]) -> tuple[threading.Thread, list[Any]]:
    answers: list[Any] = []
    thread = threading.Thread(target=ask, args=(url, path, headers, answers))
    thread.start()
    return thread, answers


@pytest.mark.timeout(120)
def test_a_request_that_outwaits_its_timeout_in_the_queue_is_shed_without_running_its_view() -> None:
    with server(WORKER, 1, {"shedding": None}) as url:
        busy_sent = time.monotonic()
        # With a deadline, as the others: one without is taken after them when they queue together
        # (the first request a worker ranks loads Django, and the next ones may queue meanwhile).
        busy, busy_answer = in_background(url, "/sleep?ms=800", {"X-Request-Timeout": "10"})
        time.sleep(0.2)
        late_sent = time.monotonic()
        late, late_answer = in_background(url, "/timeout", {"X-Request-Timeout": "0.3"})
        time.sleep(0.05)
        queued, queued_answer = in_background(url, "/timeout", {"X-Request-Timeout": "5"})
        for thread in (busy, late, queued):
            thread.join(10)
        time.sleep(0.3)  # the clients' hang-ups (a connection read to its end is queued too) are handled
        samples = scrape(url)
    shed = samples[("aio_request_server_shed_total", (("priority", "normal"), ("reason", "deadline")))]
    name = "aio_request_server_thread_queue_wait_seconds"
    waits = {p: samples[(f"{name}_count", (("priority", p),))] for p in ("high", "normal", "low")}
    waited_over_100ms = waits["normal"] - samples[(f"{name}_bucket", (("le", "0.1"), ("priority", "normal")))]
    queued_now = samples[("aio_request_server_thread_queue_length", (("priority", "normal"),))]
    status, headers, _, elapsed = late_answer[0]
    assert (status, headers.get("Retry-After"), headers.get("X-Do-Not-Retry")) == (503, "1", "1")
    # Answered at its deadline, on a thread of its own while the only one was busy: before the 800 ms
    # view ended, when it was answered before (measured against that end, not from the start: on a
    # loaded machine the whole sequence drifts).
    thread_free = busy_sent + busy_answer[0][3]
    assert late_sent + elapsed < thread_free
    assert shed == 1
    # And in the server's latency, as the middleware's refusals are: an error ratio over it counts it.
    labels = (("request_client", "unknown"), ("request_method", "GET"), ("request_path", "<unmatched>"))
    refused = samples[("aio_request_server_latency_count", (*labels, ("response_status", "503")))]
    assert refused == 1
    # Every request went through the queue at normal priority (the default), the scrapes too; two
    # waited for the 800 ms one. (Not the connection that found the server listening, closed without
    # a request: it is closed before any other, where with no deadline it waited after all of them.)
    assert waits["high"] == waits["low"] == 0
    assert waits["normal"] >= 3
    assert waited_over_100ms == 2
    assert queued_now == 0  # back down once they were served
    # The other one ran, with what was left of its 5 s, and what it was sent kept beside it.
    status, _, body, _ = queued_answer[0]
    seen = json.loads(body)
    assert status == 200
    assert seen["received"] == "5"
    # It queued until the thread was free (about 0.55 s), taken off its 5 s. Loose on both sides: on a
    # loaded machine its wait grows (the client's clock is no guide: it also counts the answers' way back).
    assert 2.5 < float(seen["timeout"]) < 4.8


@pytest.mark.timeout(120)
def test_a_request_whose_caller_hung_up_while_it_queued_runs_no_view_and_is_recorded_as_a_499() -> None:
    """On one thread, a queued request whose caller then hung up ran its view for nobody once the
    thread was free, and the live caller queued behind it waited that view out too."""
    with server(WORKER, 1, {"shedding": None}) as url:
        port = int(url.rsplit(":", 1)[1])
        busy, busy_answer = in_background(url, "/sleep?ms=600", {"X-Request-Timeout": "10"})
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port)) as gone:
            gone.sendall(b"GET /sleep?ms=1000 HTTP/1.1\r\nHost: x\r\nX-Request-Timeout: 5\r\n\r\n")
            time.sleep(0.1)  # queued behind the busy one
        live, live_answer = in_background(url, "/sleep?ms=10", {"X-Request-Timeout": "5"})
        for thread in (busy, live):
            thread.join(10)
        live_took = live_answer[0][3]
        time.sleep(0.3)  # the 499's latency is recorded off the request path
        samples = scrape(url)
    labels = (("request_client", "unknown"), ("request_method", "GET"))
    count = "aio_request_server_latency_count"
    ran = samples.get((count, (*labels, ("request_path", "sleep"), ("response_status", "200"))), 0)
    left = samples.get((count, (*labels, ("request_path", "<unmatched>"), ("response_status", "499"))), 0)
    shed = sum(v for (name, _), v in samples.items() if name == "aio_request_server_shed_total")
    assert busy_answer[0][0] == live_answer[0][0] == 200
    assert ran == 2  # the busy one's view and the live one's: not the 1 s view of the caller that left
    assert left == 1
    assert shed == 0  # nothing was refused
    # The live caller waited for the busy view's last 0.4 s or so, not for the abandoned 1 s view too.
    assert live_took < 1.0, live_took


@pytest.mark.timeout(120)
def test_a_connection_its_caller_closed_is_no_request_in_the_queue_metrics() -> None:
    # The close of each connection (queued to the pool so that a thread closes it) was recorded in
    # aio_request_server_thread_queue_wait_seconds as a request at the default priority: 20 high
    # priority requests on connections their caller closed showed as 20 high and 20 normal.
    with server(WORKER, 2, {"shedding": None}) as url:
        for _ in range(10):
            answers: list[Any] = []
            ask(url, "/timeout", {"X-Request-Priority": "high", "X-Request-Timeout": "5"}, answers)
            assert answers[0][0] == 200
        time.sleep(0.3)  # the last hang-up handled
        samples = scrape(url)
    name = "aio_request_server_thread_queue_wait_seconds_count"
    waits = {p: samples.get((name, (("priority", p),)), 0.0) for p in ("high", "normal", "low")}
    # The ten, and the scrape itself (normal: it sends no priority); not the hang-ups, nor the
    # connection that found the server listening.
    assert waits == {"high": 10, "normal": 1, "low": 0}
    assert samples[("aio_request_server_thread_queue_length", (("priority", "normal"),))] == 0


@contextmanager
def worker_with(tmp_path: Path, aio_request: dict[str, Any]) -> Iterator[str]:
    """A PriorityThreadWorker of one thread serving the shedding service with ``aio_request`` added
    to its ``AIO_REQUEST``; yields its URL once Django is loaded."""
    (tmp_path / "worker_settings.py").write_text(
        "from benchmarks._shedding_service import *  # noqa: F403\n"
        "from benchmarks._shedding_service import AIO_REQUEST as _AIO\n"
        f"AIO_REQUEST = {{**_AIO, **{aio_request!r}}}\n"
    )
    port = free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "worker_settings", "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [str(BIN / "gunicorn"), "-k", "django_aio_request.server.priority_worker.PriorityThreadWorker",
               "--threads", "1", "--bind", f"127.0.0.1:{port}", "--log-level", "warning",
               "benchmarks._shedding_service:wsgi()"]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_listening(process, port, "gunicorn")
        ask(url, "/timeout", {}, [])  # Django loaded before the timed part
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)


@pytest.mark.timeout(120)
def test_a_request_asking_for_more_than_max_timeout_that_outwaits_it_in_the_queue_is_shed(tmp_path: Path) -> None:
    # MAX_TIMEOUT 0.5 s: a request sent with X-Request-Timeout: 100 has 0.5 s, and queued about 1.3 s
    # behind a 1.5 s view it has nothing left. Before, the worker took its wait off 100 and Django
    # ran the view with a fresh 0.5 s.
    with worker_with(tmp_path, {"TIMEOUT": 0.5, "MAX_TIMEOUT": 0.5}) as url:
        busy, _ = in_background(url, "/sleep?ms=1500", {})
        time.sleep(0.2)
        late, late_answer = in_background(url, "/timeout", {"X-Request-Timeout": "100"})
        busy.join(10)
        late.join(10)
        served: list[Any] = []
        ask(url, "/timeout", {"X-Request-Timeout": "100"}, served)  # a free thread: served
    status, headers, body, _ = late_answer[0]
    assert (status, headers.get("Retry-After"), headers.get("X-Do-Not-Retry")) == (503, "1", "1"), body
    status, _, body, _ = served[0]
    assert status == 200
    seen = json.loads(body)
    assert seen["received"] == "100"
    assert 0.1 < float(seen["timeout"]) <= 0.5  # MAX_TIMEOUT less the little it queued


@pytest.mark.timeout(120)
def test_requests_without_a_deadline_wait_after_high_priority_and_after_their_own_with_one(tmp_path: Path) -> None:
    # TIMEOUT 0.5 s, 200 ms views, one thread. Judged by TIMEOUT, the requests without
    # X-Request-Timeout (or with junk in it) expired in the queue while the 1 s view ran, and were
    # all taken before the high-priority ones (served in full: nothing refuses them), which came last.
    # Now they have no deadline: high priority first, then normal with a deadline, then those.
    with worker_with(tmp_path, {"TIMEOUT": 0.5}) as url:
        busy, _ = in_background(url, "/sleep?ms=1000", {})
        time.sleep(0.2)
        sent: list[tuple[str, float, tuple[threading.Thread, list[Any]]]] = []
        for name, headers in [
            *[(f"none{n}", {}) for n in range(3)],
            ("junk", {"X-Request-Timeout": "junk"}),
            *[(f"normal{n}", {"X-Request-Timeout": "10"}) for n in range(2)],
            *[(f"high{n}", {"X-Request-Priority": "high", "X-Request-Timeout": "10"}) for n in range(2)],
        ]:
            sent.append((name, time.monotonic(), in_background(url, "/sleep?ms=200", headers)))
            time.sleep(0.05)  # queued in this order, all while the 1 s view runs
        busy.join(20)
        for _, _, (thread, _) in sent:
            thread.join(20)
    statuses = {name: answers[0][0] for name, _, (_, answers) in sent}
    assert set(statuses.values()) == {200}, statuses  # no SHEDDING: nothing bounds their wait
    at = {name: started + answers[0][3] for name, started, (_, answers) in sent}  # when each was answered
    order = sorted(at, key=lambda name: at[name])
    assert order[:4] == ["high0", "high1", "normal0", "normal1"], at
    assert sorted(order[4:]) == ["junk", "none0", "none1", "none2"], at


@pytest.mark.timeout(120)
def low_request_under_a_high_flood(tmp_path: Path, headers: dict[str, str], *, flood: float) -> tuple[Any, Any, Any]:
    """With SHEDDING (QUEUE_TIMEOUT 0.5 s) on one thread: a first request, alone; then, 0.3 s into
    ``flood`` seconds of high-priority requests from three callers, one low request with ``headers``.
    The first's answer, the low one's and the metrics scraped after."""
    with worker_with(tmp_path, {"SHEDDING": {"QUEUE_TIMEOUT": 0.5}}) as url:
        first: list[Any] = []
        ask(url, "/sleep?ms=30", {}, first)  # a free thread: served, though it queued for a moment
        stop = time.monotonic() + flood

        def high() -> None:
            while time.monotonic() < stop:
                ask(url, "/sleep?ms=30", {"X-Request-Priority": "high", "X-Request-Timeout": "5"}, [])

        flooders = [threading.Thread(target=high) for _ in range(3)]
        for thread in flooders:
            thread.start()
        time.sleep(0.3)
        answers: list[Any] = []
        ask(url, "/sleep?ms=30", {"X-Request-Priority": "low", **headers}, answers)
        for thread in flooders:
            thread.join(10)
        return first[0], answers[0], scrape(url)


@pytest.mark.timeout(120)
def test_while_every_thread_is_busy_a_request_is_refused_at_queue_timeout_not_when_a_thread_frees(
    tmp_path: Path,
) -> None:
    """One thread busy with a 3 s view; a high-priority request with 2 s, a low one with 2 s and a
    normal one without a deadline queue behind it. Each waited for the thread: refused when the view
    ended, 2.8 s after it came, 5.5 times QUEUE_TIMEOUT and past the deadlines (a review, 10 of 10
    runs). Refused at QUEUE_TIMEOUT now, on a thread of the pool's own for refusals; they have 1.5 s
    left, more than Retry-After: they may try again."""
    with worker_with(tmp_path, {"SHEDDING": {"QUEUE_TIMEOUT": 0.5}}) as url:
        busy, busy_answer = in_background(url, "/sleep?ms=3000", {"X-Request-Timeout": "10"})
        time.sleep(0.25)
        waiting = [
            in_background(url, "/timeout", headers)
            for headers in (
                {"X-Request-Priority": "high", "X-Request-Timeout": "2"},
                {"X-Request-Priority": "low", "X-Request-Timeout": "2"},
                {},
            )
        ]
        for thread, _ in [(busy, busy_answer), *waiting]:
            thread.join(10)
        samples = scrape(url)
    assert busy_answer[0][0] == 200
    for _, answers in waiting:
        status, headers, _, elapsed = answers[0]
        assert (status, headers.get("Retry-After"), headers.get("X-Do-Not-Retry")) == (503, "1", None)
        assert 0.45 < elapsed < 1.5  # QUEUE_TIMEOUT (0.5 s), far from the view's end (2.75 s later)
    shed = {p: samples.get(("aio_request_server_shed_total", (("priority", p), ("reason", "queue_timeout"))), 0)
            for p in ("high", "normal", "low")}  # fmt: skip
    assert shed == {"high": 1, "normal": 1, "low": 1}


def test_under_a_flood_of_high_priority_a_request_without_a_deadline_is_refused_after_queue_timeout(
    tmp_path: Path,
) -> None:
    # With SHEDDING, a request without X-Request-Timeout waits for a thread at most QUEUE_TIMEOUT, as
    # for a slot: then it is refused at once, and told it may try again (no X-Do-Not-Retry).
    first, (status, headers, _, elapsed), samples = low_request_under_a_high_flood(tmp_path, {}, flood=4.0)
    assert first[0] == 200
    assert (status, headers.get("Retry-After"), headers.get("X-Do-Not-Retry")) == (503, "1", None)
    assert 0.4 < elapsed < 2.5  # refused once QUEUE_TIMEOUT (0.5 s) had passed, not after the flood (4 s)
    assert samples[("aio_request_server_shed_total", (("priority", "low"), ("reason", "queue_timeout")))] == 1


def test_under_a_flood_of_high_priority_a_request_with_a_deadline_is_refused_after_queue_timeout(
    tmp_path: Path,
) -> None:
    # Sent with 5 s, it waited for a thread all 5 s and was then refused (a review: 5 of 5 normal and
    # low requests at 5,006-5,011 ms). Refused once QUEUE_TIMEOUT has passed, as the limiter refuses
    # one that waited that long for a slot; 4.5 s left is more than Retry-After: it may try again.
    _, (status, headers, _, elapsed), samples = low_request_under_a_high_flood(
        tmp_path, {"X-Request-Timeout": "5"}, flood=3.0
    )
    assert (status, headers.get("Retry-After"), headers.get("X-Do-Not-Retry")) == (503, "1", None)
    assert 0.4 < elapsed < 2.5  # once QUEUE_TIMEOUT (0.5 s) had passed, not after the flood (3 s) nor 5 s
    assert samples[("aio_request_server_shed_total", (("priority", "low"), ("reason", "queue_timeout")))] == 1


@pytest.mark.timeout(120)
def test_under_a_flood_of_high_priority_a_low_request_is_answered_by_its_deadline() -> None:
    with server(WORKER, 1, {"shedding": None}) as url:
        stop = time.monotonic() + 2.0

        def high() -> None:
            while time.monotonic() < stop:
                ask(url, "/sleep?ms=30", {"X-Request-Priority": "high"}, [])

        flooders = [threading.Thread(target=high) for _ in range(3)]
        for thread in flooders:
            thread.start()
        time.sleep(0.3)
        answers: list[Any] = []
        ask(url, "/sleep?ms=30", {"X-Request-Priority": "low", "X-Request-Timeout": "0.5"}, answers)
        for thread in flooders:
            thread.join(10)
    status, _, _, elapsed = answers[0]
    assert status == 503
    assert elapsed < 0.9  # refused once its 0.5 s were gone, not after the flood (2 s)


@pytest.mark.timeout(120)
@pytest.mark.skipif(
    gunicorn.version_info < (27,), reason="gthread before gunicorn 27 answers only the first of pipelined requests"
)
def test_a_pipelined_request_is_queued_with_its_own_priority() -> None:
    # Two requests written at once on one connection: gunicorn reads the second with the first and
    # queues the connection again for it; its priority is read from what gunicorn already read.
    # The gaps are wide (0.2 s for gunicorn to read each arrival, 200 ms views): with 50 ms gaps and
    # a time bound a slow machine once failed it.
    with server(WORKER, 1, {"shedding": None}) as url:
        host, port = url.removeprefix("http://").split(":")
        busy, _ = in_background(url, "/sleep?ms=800", {})
        time.sleep(0.1)
        pipelined = socket.create_connection((host, int(port)), timeout=10)
        first = "GET /sleep?ms=10 HTTP/1.1\r\nHost: svc\r\nX-Request-Priority: normal\r\n\r\n"
        second = "GET /sleep?ms=10 HTTP/1.1\r\nHost: svc\r\nX-Request-Priority: high\r\n\r\n"
        pipelined.sendall((first + second).encode())
        time.sleep(0.2)
        others = [in_background(url, "/sleep?ms=200", {"X-Request-Priority": "normal"}) for _ in range(3)]
        started = time.monotonic()
        answer = b""
        while answer.count(b"HTTP/1.1 200") < 2 or not answer.endswith(b"\r\n0\r\n\r\n"):  # chunked
            chunk = pipelined.recv(65536)
            assert chunk, answer
            answer += chunk
        second_answered = time.monotonic() - started
        pipelined.close()
        for thread, _ in others:
            thread.join(10)
        busy.join(10)
    # Its second request goes before the normal ones queued meanwhile, but for one at most: when the
    # first is answered, the thread takes the next request from the queue while gunicorn is still
    # putting the connection back in it for the second. Under gthread all three go first.
    answered = sorted(elapsed for _, answers in others for *_, elapsed in answers)
    assert len(answered) == 3
    before = [elapsed for elapsed in answered if elapsed < second_answered]
    assert len(before) <= 1, (second_answered, answered)


@pytest.mark.timeout(120)
def test_a_request_it_cannot_rank_is_served_in_arrival_order_and_the_worker_lives_on(tmp_path: Path) -> None:
    # Not a Django application: the settings the queue reads do not load. Ranking runs on gunicorn's
    # main loop, where an exception would end the worker and every request it holds.
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    log = tmp_path / "gunicorn.log"
    command = [str(BIN / "gunicorn"), "-k", "django_aio_request.server.priority_worker.PriorityThreadWorker",
               "--threads", "2", "--bind", f"127.0.0.1:{port}", "--error-logfile", str(log),
               "tests.support.plain_wsgi:app"]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)})
    try:
        wait_until_listening(process, port, "gunicorn")
        answers: list[Any] = []
        for priority in ["high", "low", "normal"] * 3:
            ask(f"http://127.0.0.1:{port}", "/", {"X-Request-Priority": priority, "X-Request-Timeout": "5"}, answers)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)
    assert [a[0] for a in answers] == [200] * 9
    text = log.read_text()
    assert text.count("could not rank a request by priority") == 1  # said once, in gunicorn's log
    assert text.count("could not take the time queued off") == 1
    assert text.count("Booting worker") == 1  # no worker died and was replaced


@pytest.mark.timeout(120)
@pytest.mark.parametrize("claim", ["high", "low"])
def test_impostors_that_never_back_off_starve_trusted_high_on_plain_gthread_but_not_under_the_priority_worker(
    claim: str,
) -> None:
    """docs/security.md: on gthread with one thread gunicorn's queue is first come, first served, so
    impostors that never back off (claiming high or low: "known_services" caps either) leave trusted
    high priority out of time; PriorityThreadWorker takes it ahead of them. 60 impostors, 10 ms views,
    a 0.25 s deadline: the queue ahead of a trusted request is about 0.6 s on plain gthread."""
    policy = {"shedding": {"PRIORITY_POLICY": "known_services"}, "known_services": ["known"]}
    deadline = 0.25
    in_time: dict[str, float] = {}
    for kind in ("gunicorn", WORKER):
        with server(kind, 1, policy) as url:
            closed_loop(
                url, [Callers(1, priorities=("high",))], path="/cpu?ms=10", seconds=0.3, deadline=1.0, backoff=0
            )
            outcomes = closed_loop(
                url,
                [Callers(2, priorities=("high",)), Callers(60, priorities=(claim,), service=None, kind="impostor")],
                path="/cpu?ms=10",
                seconds=2.0,
                deadline=deadline,
                backoff=0,
                honour_retry_after=False,
            )
        assert any(o.caller == "impostor" for o in outcomes)
        # The requests sent once the impostors' queue had formed (their first few came before it).
        began = min(o.ended - o.elapsed for o in outcomes)
        trusted = [o for o in outcomes if o.caller == "real" and o.ended - o.elapsed >= began + 0.3]
        if not trusted and kind == "gunicorn":
            # On a loaded machine (CI, with review sessions beside it) each trusted caller's first
            # request waited in gunicorn's queue for the whole run, so none was sent after the queue
            # formed: starved, which is what this measures. Counted by the requests that ended then.
            trusted = [o for o in outcomes if o.caller == "real" and o.ended >= began + 0.3]
        assert trusted, kind
        in_time[kind] = sum(o.status == 200 and o.elapsed <= deadline for o in trusted) / len(trusted)
    assert in_time["gunicorn"] <= 0.1, in_time
    assert in_time[WORKER] >= 0.95, in_time
