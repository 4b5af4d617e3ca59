"""Async views under a real ASGI server (uvicorn, one worker, one event loop) calling a downstream
on loopback with ``clients[...].arequest()``."""

import concurrent.futures
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.loopback import (
    Handler,
    LoopbackServer,
    answer_after,
    free_port,
    hang_until_disconnect,
    wait_for_disconnect,
    widen_backlog,
)
from tests.support.resources import eventually

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def downstream() -> Iterator[LoopbackServer]:
    server = LoopbackServer()
    widen_backlog(server)
    yield server
    server.close()


@pytest.fixture(scope="module")
def service(downstream: LoopbackServer) -> Iterator[str]:
    """The URL of a Django service served by uvicorn whose clients call ``downstream``."""
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.support.settings_asgi",
        "BILLING_URL": downstream.url,
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "uvicorn", "tests.support.asgi_app:application"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--lifespan", "off", "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                requests.get(url + "aping/", timeout=1)
                break
            except requests.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stdout.read().decode() if process.stdout else ""
                    pytest.fail(f"uvicorn did not start: {output}")
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    answer = requests.get(url, headers=headers or {}, timeout=10)
    answer.raise_for_status()
    return answer.json(), time.monotonic() - started


def test_async_view_sends_the_deadline_and_priority_it_serves_with(downstream: LoopbackServer, service: str) -> None:
    downstream.route("/invoices/1", lambda h: h.reply(200, b"invoice 1"))

    data, _ = fetch(service + "ainvoice/1/", {"X-Request-Timeout": "3", "X-Request-Priority": "low"})

    assert (data["status"], data["body"]) == (200, "invoice 1")
    [received] = downstream.received("/invoices/1")
    assert 2.0 < float(received.headers["X-Request-Timeout"]) <= 3.0
    assert received.headers["X-Request-Priority"] == "low"
    assert received.headers["X-Service-Name"] == "asgi-tests"


def test_slow_calls_do_not_hold_up_the_event_loop(downstream: LoopbackServer, service: str) -> None:
    """Eight views each wait 0.8 s for the downstream at once; one event loop serves them all in
    about 0.8 s, and answers another view meanwhile at once."""
    downstream.route("/invoices/2", answer_after(0.8, body=b"slow"))

    with concurrent.futures.ThreadPoolExecutor(9) as pool:
        slow = [pool.submit(fetch, service + "ainvoice/2/") for _ in range(8)]
        time.sleep(0.3)  # the eight are waiting for the downstream now
        _, ping_elapsed = fetch(service + "aping/")
        results = [future.result() for future in slow]

    assert [data["status"] for data, _ in results] == [200] * 8
    assert max(elapsed for _, elapsed in results) < 2.0  # a blocked loop would take 8 x 0.8 s
    assert ping_elapsed < 0.3


def test_client_timeout_caps_the_request_deadline(downstream: LoopbackServer, service: str) -> None:
    downstream.route("/invoices/3", hang_until_disconnect)

    data, elapsed = fetch(service + "ainvoice/3/?client=capped", {"X-Request-Timeout": "2"})

    assert data["status"] == 408
    assert 0.45 < data["elapsed"] < 0.9  # the client's TIMEOUT (0.5 s), not the request's 2 s
    assert elapsed < 1.5
    [received] = downstream.received("/invoices/3")
    assert float(received.headers["X-Request-Timeout"]) <= 0.5


def test_hedging_from_an_async_view(downstream: LoopbackServer, service: str) -> None:
    lock = threading.Lock()
    seen = 0

    def first_slow(handler: Handler) -> None:
        nonlocal seen
        with lock:
            seen += 1
            n = seen
        if n == 1:
            wait_for_disconnect(handler, 2.0)  # hung up by the client once the hedge wins
            return
        handler.reply(200, b"hedge")

    downstream.route("/invoices/4", first_slow)

    data, _ = fetch(service + "ainvoice/4/?client=hedged")

    assert (data["status"], data["body"]) == (200, "hedge")
    assert data["elapsed"] < 0.6
    assert len(downstream.received("/invoices/4")) == 2


@pytest.mark.parametrize("view", ["ainvoice", "ainvoice-in-thread"])
def test_a_caller_that_hangs_up_stops_the_downstream_call(downstream: LoopbackServer, service: str, view: str) -> None:
    """The caller of an async view closes its connection while the view awaits a downstream call.
    Django 5.0 and later cancel the view's task on the ASGI ``http.disconnect``, and the cancelled
    ``arequest()`` shuts its socket: the downstream sees the call end at once, not at the deadline.
    Django 4.2 does not cancel the view: the call runs on to its deadline (2 s here). Nor does a
    sync ``request()`` the view handed to a thread (``sync_to_async``) stop, on any version: the
    cancelled task stops waiting for the thread, which runs on to its deadline (a review)."""
    import django

    hung_up: list[float] = []

    def watch(handler: Handler) -> None:
        closed = wait_for_disconnect(handler, 5.0)
        hung_up.append(closed if closed is not None else float("inf"))

    downstream.route("/invoices/5", watch)
    before = len(downstream.received("/invoices/5"))
    with socket.create_connection(("127.0.0.1", int(service.rsplit(":", 1)[1].strip("/")))) as caller:
        caller.sendall(f"GET /{view}/5/ HTTP/1.1\r\nHost: test\r\nX-Request-Timeout: 2\r\n\r\n".encode())
        assert eventually(lambda: len(downstream.received("/invoices/5")) == before + 1, timeout=3.0)
        time.sleep(0.2)
        gone = time.monotonic()
    assert eventually(lambda: bool(hung_up), timeout=5.0)
    after = hung_up[0] - gone
    if django.VERSION >= (5, 0) and view == "ainvoice":
        assert after < 0.5, f"the downstream call ended {after:.2f} s after the caller hung up"
    else:
        arrived = downstream.received("/invoices/5")[-1].at
        assert 1.5 < hung_up[0] - arrived < 2.6, "the call should end at its 2 s deadline"


def test_the_time_a_request_body_takes_to_arrive_is_not_taken_off_its_deadline(
    downstream: LoopbackServer, service: str
) -> None:
    """docs/server.md: Django's ASGI handler reads the whole body before any middleware runs, so a
    POST whose body comes 1.5 s after its head with X-Request-Timeout: 1 still has its whole second
    in the view (under WSGI the view reads the body: that time is the view's)."""
    downstream.route("/invoices/8642", lambda h: h.reply(200, b"invoice 8642"))
    host, port = service.removeprefix("http://").rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(
            b"POST /ainvoice/8642/ HTTP/1.1\r\nHost: x\r\nX-Request-Timeout: 1\r\nContent-Length: 5\r\n"
            b"Connection: close\r\n\r\n"
        )
        time.sleep(1.5)
        connection.sendall(b"hello")
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    [received] = downstream.received("/invoices/8642")
    assert 0.9 < float(received.headers["X-Request-Timeout"]) <= 1.0  # the whole second, though 1.5 s went by


def test_each_sync_view_runs_in_a_thread_of_its_own_so_a_quick_one_waits_for_no_slow_one(
    downstream: LoopbackServer, service: str
) -> None:
    """docs/metrics.md: under an ASGI server a scrape (Django's sync ``/metrics`` view) waits for no
    sync view, as each request's sync view runs in a thread of its own (Django gives each request
    its own thread-sensitive context). Here six sync views wait 1 s on their downstream, and a
    seventh, answered at once, is not queued behind them; the six run together."""
    downstream.route("/invoices/61", answer_after(1.0, body=b'{"slow": true}'))
    downstream.route("/invoices/62", lambda h: h.reply(200, b'{"quick": true}'))
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        slow = [pool.submit(fetch, service + "invoice/61/") for _ in range(6)]
        time.sleep(0.3)  # the six are in their views
        _, quick = fetch(service + "invoice/62/")
        took = [future.result()[1] for future in slow]
    assert quick < 0.5, quick
    assert max(took) < 2.0, took  # together, not one after another (6 s)
