"""Manual overrides of the circuit breaker (force open, force closed, back to automatic) and snapshots."""

import time
from collections.abc import Iterator

import pytest

from django_aio_request import (
    CircuitSnapshot,
    CircuitState,
    CircuitTransition,
    Client,
    DefaultCircuitBreaker,
    EmptyResponse,
    MemoryCircuitStore,
    Override,
    Response,
    get,
    single_attempt_strategy,
)
from tests.support.clock import FakeClock
from tests.support.loopback import LoopbackServer, clients, replies


def make_breaker(clock: FakeClock | None = None, **kwargs: float) -> DefaultCircuitBreaker[str, Response]:
    options = {"break_duration": 5.0, "sampling_duration": 60.0, "minimum_throughput": 3, "failure_threshold": 0.5}
    store = MemoryCircuitStore[str](clock=clock) if clock is not None else None
    return DefaultCircuitBreaker(store=store, **{**options, **kwargs})  # type: ignore[arg-type]


@pytest.fixture
def breaker() -> DefaultCircuitBreaker[str, Response]:
    return make_breaker()


@pytest.fixture
def client(server: LoopbackServer, breaker: DefaultCircuitBreaker[str, Response]) -> Iterator[Client]:
    with clients(server.url) as make:
        yield make(circuit_breaker=breaker, safe_method_strategy=single_attempt_strategy())


def call(client: Client) -> Response:
    with client.request(get("thing")) as response:
        return response


def is_fallback(response: Response) -> bool:
    return response.status == 502 and response.headers.get("X-Circuit-Breaker") == "1"


def test_client_exposes_its_breaker(server: LoopbackServer, client: Client) -> None:
    assert client.circuit_breaker is not None
    with clients(server.url) as make:
        assert make().circuit_breaker is None


def test_forced_open_answers_the_fallback_without_a_request(
    server: LoopbackServer, client: Client, breaker: DefaultCircuitBreaker[str, Response]
) -> None:
    server.route("/thing", replies(200))
    assert call(client).status == 200
    breaker.set_override(client.endpoint, Override.FORCE_OPEN)

    responses = [call(client) for _ in range(5)]

    assert all(is_fallback(r) for r in responses)
    assert len(server.received("/thing")) == 1  # only the call made before
    assert breaker.state[client.endpoint] is CircuitState.FORCED_OPEN


def test_forced_closed_calls_through_an_open_circuit_and_still_counts(
    server: LoopbackServer, client: Client, breaker: DefaultCircuitBreaker[str, Response]
) -> None:
    server.route("/thing", replies(500))
    for _ in range(3):
        call(client)
    assert breaker.state[client.endpoint] is CircuitState.OPEN
    assert is_fallback(call(client))

    breaker.set_override(client.endpoint, Override.FORCE_CLOSED)
    statuses = [call(client).status for _ in range(4)]

    assert statuses == [500] * 4  # every call reached the failing server
    assert len(server.received("/thing")) == 7
    assert breaker.counts(client.endpoint) == (7, 0)  # outcomes counted while forced
    assert breaker.state[client.endpoint] is CircuitState.FORCED_CLOSED


def test_back_to_automatic_resumes_the_automatic_state(
    server: LoopbackServer, client: Client, breaker: DefaultCircuitBreaker[str, Response]
) -> None:
    server.route("/thing", replies(500))
    breaker.set_override(client.endpoint, Override.FORCE_OPEN)
    assert is_fallback(call(client))
    breaker.set_override(client.endpoint, None)
    assert breaker.state[client.endpoint] is CircuitState.CLOSED
    assert call(client).status == 500  # automatic again: closed, calls go through

    for _ in range(2):
        call(client)
    assert breaker.state[client.endpoint] is CircuitState.OPEN  # and it trips as usual
    breaker.set_override(client.endpoint, Override.FORCE_CLOSED)
    assert call(client).status == 500
    breaker.set_override(client.endpoint, None)
    assert breaker.state[client.endpoint] is CircuitState.OPEN  # still within its break
    assert is_fallback(call(client))


def test_a_forced_open_probe_time_does_not_let_a_probe_through(server: LoopbackServer) -> None:
    clock = FakeClock()
    breaker = make_breaker(clock, break_duration=0.05)
    server.route("/thing", replies(500))
    with clients(server.url) as make:
        client = make(circuit_breaker=breaker, safe_method_strategy=single_attempt_strategy())
        for _ in range(3):
            call(client)
        breaker.set_override(client.endpoint, Override.FORCE_OPEN)
        clock.advance(0.1)  # the automatic break is over: it would let a probe through
        assert is_fallback(call(client))
        assert len(server.received("/thing")) == 3


def test_listeners_are_told_of_override_changes(breaker: DefaultCircuitBreaker[str, Response]) -> None:
    seen: list[CircuitTransition[str]] = []
    breaker.add_listener(seen.append)

    breaker.set_override("svc", Override.FORCE_OPEN)
    breaker.set_override("svc", Override.FORCE_OPEN)  # no change: no news
    breaker.set_override("svc", Override.FORCE_CLOSED)
    breaker.set_override("svc", None)
    breaker.set_override("svc", None)

    assert [(t.scope, t.old, t.new) for t in seen] == [
        ("svc", CircuitState.CLOSED, CircuitState.FORCED_OPEN),
        ("svc", CircuitState.FORCED_OPEN, CircuitState.FORCED_CLOSED),
        ("svc", CircuitState.FORCED_CLOSED, CircuitState.CLOSED),
    ]
    assert all(abs(t.at - time.time()) < 5 for t in seen)


def test_override_accepts_its_string_value(breaker: DefaultCircuitBreaker[str, Response]) -> None:
    breaker.set_override("svc", "force_open")  # type: ignore[arg-type]  # e.g. read from a database
    assert breaker.snapshot()[0].override is Override.FORCE_OPEN
    with pytest.raises(ValueError, match="sideways"):
        breaker.set_override("svc", "sideways")  # type: ignore[arg-type]


def run(breaker: DefaultCircuitBreaker[str, Response], outcome: bool, scope: str = "svc") -> None:
    ok, failed = EmptyResponse(status=200), EmptyResponse(status=500)
    breaker.execute(
        scope=scope,
        operation=lambda: ok if outcome else failed,
        fallback=lambda: failed,
        is_successful=lambda r: r is ok,
    )


def test_snapshot_values() -> None:
    breaker = make_breaker(minimum_throughput=4)
    assert breaker.snapshot() == []
    run(breaker, True, "a")
    run(breaker, False, "a")
    before = time.time()
    for _ in range(3):
        run(breaker, False, "b")
    run(breaker, True, "b")  # 3 of 4 failed, but a success never trips
    run(breaker, False, "b")  # 4 of 5: opens
    breaker.set_override("c", Override.FORCE_CLOSED)

    snapshots = {s.scope: s for s in breaker.snapshot()}

    assert snapshots["a"] == CircuitSnapshot("a", CircuitState.CLOSED, 1, 1, 0.0, None, 1, 1, 0, None)
    assert snapshots["a"].failure_ratio == 0.5
    b = snapshots["b"]
    assert (b.state, b.failures, b.successes, b.override) == (CircuitState.OPEN, 4, 1, None)
    assert b.failure_ratio == 0.8
    assert before <= b.changed_at <= time.time()
    # Blocked for break_duration from the trip, on the wall clock although the store counts on monotonic time.
    assert b.blocked_until is not None
    assert b.changed_at + 5 - 0.5 < b.blocked_until <= b.changed_at + 5 + 0.5
    assert (b.failures_total, b.successes_total, b.rejected_total) == (4, 1, 0)
    run(breaker, True, "b")  # rejected: open
    assert {s.scope: s for s in breaker.snapshot()}["b"].rejected_total == 1
    c = snapshots["c"]
    assert (c.state, c.failures, c.successes, c.override) == (CircuitState.FORCED_CLOSED, 0, 0, Override.FORCE_CLOSED)
    assert c.failure_ratio == 0.0
    assert c.changed_at >= b.changed_at


def test_enum_values() -> None:
    assert Override("force_closed") is Override.FORCE_CLOSED
    assert str(CircuitState.FORCED_OPEN) == "forced_open"
