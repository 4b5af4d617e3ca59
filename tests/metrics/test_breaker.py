"""The breaker state gauge counts the breakers that are alive: closed with their client, or
garbage-collected with it when the client is dropped without ``close()``."""

import gc
import os
import threading
import time

import pytest
from prometheus_client import REGISTRY

import django_aio_request as dar
from django_aio_request.metrics import breaker as breaker_metrics
from django_aio_request.metrics.deferred import INTERVAL
from tests.support.forking import in_child
from tests.support.loopback import LoopbackServer, replies


@pytest.fixture
def endpoint(server: LoopbackServer) -> str:
    """A failing endpoint whose URL labels no series yet (see tests/conftest.py's server)."""
    server.route("/x", replies(503))
    return server.url


def build(endpoint: str) -> dar.Client:
    breaker: dar.DefaultCircuitBreaker[str, dar.Response] = dar.DefaultCircuitBreaker(
        break_duration=600, sampling_duration=10, minimum_throughput=2, failure_threshold=0.5
    )
    return dar.setup(endpoint=endpoint, safe_method_strategy=dar.single_attempt_strategy(), circuit_breaker=breaker)


def open_breaker(client: dar.Client) -> None:
    for _ in range(3):
        with client.request(dar.get("x")):
            pass
    assert client.circuit_breaker is not None
    assert str(client.circuit_breaker.state[client.endpoint].value) == "open"


def gauge(endpoint: str, state: str) -> float | None:
    """Read as a scrape in this process does (which records what is queued first)."""
    labels = {"request_endpoint": endpoint, "state": state}
    return REGISTRY.get_sample_value("aio_request_circuit_breaker_state", labels)


def unflushed(endpoint: str, state: str) -> float:
    """The gauge's own value, without recording the queues first (what another process's scrape
    reads from this one's file in multiprocess mode)."""
    child = breaker_metrics.breaker_state.labels(endpoint, state)
    return float(child._value.get())  # type: ignore[attr-defined]


def test_clients_dropped_without_close_leave_the_gauge(endpoint: str) -> None:
    """Before, they were counted for the life of the process: closed 3, open 1 with no client left,
    and the open circuit's alert fired forever."""
    for _ in range(3):
        build(endpoint)  # dropped at once
    client = build(endpoint)
    open_breaker(client)
    assert (gauge(endpoint, "closed"), gauge(endpoint, "open")) == (0, 1)

    del client
    gc.collect()
    assert (gauge(endpoint, "closed"), gauge(endpoint, "open")) == (0, 0)


def test_a_dropped_client_leaves_the_gauge_within_the_interval_without_a_scrape(endpoint: str) -> None:
    client = build(endpoint)
    open_breaker(client)
    assert unflushed(endpoint, "open") == 1
    del client
    gc.collect()
    deadline = time.monotonic() + INTERVAL + 2.0
    while unflushed(endpoint, "open") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert unflushed(endpoint, "open") == 0  # the recording thread took it out


def test_a_breaker_collected_while_its_thread_holds_the_gauge_lock_does_not_deadlock(endpoint: str) -> None:
    """A breaker dies on whichever thread drops it, maybe one in the middle of a transition (holding
    the module's lock, not reentrant): its finalizer only queues."""
    client = build(endpoint)
    done = threading.Event()

    def drop_holding_the_lock() -> None:
        nonlocal client
        with breaker_metrics._lock:
            del client
            gc.collect()  # the breaker's finalizer runs here, on this thread, now
        done.set()

    thread = threading.Thread(target=drop_holding_the_lock, daemon=True)
    thread.start()
    thread.join(5)
    assert done.is_set()
    assert gauge(endpoint, "closed") == 0


def test_a_closed_client_is_taken_out_once_even_when_collected_later(endpoint: str) -> None:
    client = build(endpoint)
    other = build(endpoint)
    assert gauge(endpoint, "closed") == 2
    client.close()
    assert gauge(endpoint, "closed") == 1
    del client
    gc.collect()
    assert gauge(endpoint, "closed") == 1  # other's
    other.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_child_forked_before_a_dropped_breaker_was_taken_out_does_not_count_it(endpoint: str) -> None:
    """The parent's queue is the parent's to record; the child's gauge is a copy of the parent's
    (no multiprocess mode here) that still counted the breaker: the child sets it anew."""
    keep = build(endpoint)
    client = build(endpoint)
    open_breaker(client)
    with breaker_metrics._dropped._flush_lock:  # the parent's recording thread cannot take it out yet
        del client
        gc.collect()
        assert breaker_metrics._dropped.pending() == 1
        in_child_gauge = in_child(lambda: (gauge(endpoint, "closed"), gauge(endpoint, "open")))
    assert in_child_gauge == [1, 0]  # keep's, in the child
    assert (gauge(endpoint, "closed"), gauge(endpoint, "open")) == (1, 0)  # and in the parent
    keep.close()
