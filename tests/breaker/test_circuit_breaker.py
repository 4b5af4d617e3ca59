"""The circuit breaker: its state machine with fake operations, its thread safety, and through a client."""

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from django_aio_request import (
    CircuitState,
    CircuitTransition,
    Client,
    DefaultCircuitBreaker,
    MemoryCircuitStore,
    Request,
    Response,
    get,
    parallel_strategy,
    single_attempt_strategy,
)
from tests.support.clock import FakeClock
from tests.support.forking import in_child
from tests.support.loopback import (
    Handler,
    LoopbackServer,
    hang_until_disconnect,
    replies,
    timed_call,
    wait_for_disconnect,
)

Breaker = DefaultCircuitBreaker[str, str]


def make_breaker(
    *,
    break_duration: float = 0.2,
    sampling_duration: float = 60.0,
    minimum_throughput: int = 4,
    failure_threshold: float = 0.5,
    windows_count: int = 10,
    clock: FakeClock | None = None,
) -> Breaker:
    """A breaker on real time, or on ``clock`` when given (tests then move time by hand, no sleeps)."""
    return DefaultCircuitBreaker(
        break_duration=break_duration,
        sampling_duration=sampling_duration,
        minimum_throughput=minimum_throughput,
        failure_threshold=failure_threshold,
        windows_count=windows_count,
        store=MemoryCircuitStore(clock=clock) if clock is not None else None,
    )


class Operation:
    """A fake operation whose outcome the test chooses; counts how often the breaker ran it."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def run(
        self,
        breaker: Breaker,
        outcome: bool | None,
        *,
        scope: str = "svc",
        during: Callable[[], object] | None = None,
    ) -> str:
        """``outcome``: True succeeds, False fails, None is an abandoned attempt. Returns "ran" or "fallback"."""

        def operation() -> str:
            with self._lock:
                self.calls += 1
            if during is not None:
                during()
            return {True: "ok", False: "failed", None: "cancelled"}[outcome]

        result = breaker.execute(
            scope=scope,
            operation=operation,
            fallback=lambda: "fallback",
            is_successful=lambda r: {"ok": True, "failed": False, "cancelled": None}[r],
        )
        return "fallback" if result == "fallback" else "ran"


def state_of(breaker: DefaultCircuitBreaker[str, Any], scope: str = "svc") -> CircuitState:
    return breaker.state[scope]


def open_breaker(breaker: Breaker, op: Operation, scope: str = "svc") -> None:
    for _ in range(breaker.minimum_throughput):
        op.run(breaker, False, scope=scope)
    assert state_of(breaker, scope) is CircuitState.OPEN


class TestStateMachine:
    def test_stays_closed_below_minimum_throughput(self) -> None:
        breaker, op = make_breaker(minimum_throughput=4), Operation()
        for _ in range(3):
            assert op.run(breaker, False) == "ran"
        assert state_of(breaker) is CircuitState.CLOSED
        assert breaker.counts("svc") == (3, 0)

    def test_opens_at_the_failure_threshold_once_throughput_is_reached(self) -> None:
        breaker, op = make_breaker(minimum_throughput=4, failure_threshold=0.5), Operation()
        for outcome in (True, True, True, False, False):  # 2 of 5 failed: 40%
            op.run(breaker, outcome)
        assert state_of(breaker) is CircuitState.CLOSED
        op.run(breaker, False)  # 3 of 6: 50%
        assert state_of(breaker) is CircuitState.OPEN

    def test_open_circuit_answers_with_the_fallback_without_running_the_operation(self) -> None:
        breaker, op = make_breaker(break_duration=5.0), Operation()
        open_breaker(breaker, op)
        calls = op.calls

        assert [op.run(breaker, True) for _ in range(5)] == ["fallback"] * 5
        assert op.calls == calls

    def test_scopes_are_independent(self) -> None:
        breaker, op = make_breaker(break_duration=5.0), Operation()
        open_breaker(breaker, op, scope="a")

        assert op.run(breaker, True, scope="b") == "ran"
        assert breaker.state == {"a": CircuitState.OPEN, "b": CircuitState.CLOSED}

    def test_after_the_break_exactly_one_probe_passes(self) -> None:
        clock = FakeClock()
        breaker, op = make_breaker(break_duration=0.2, clock=clock), Operation()
        open_breaker(breaker, op)
        assert op.run(breaker, True) == "fallback"
        clock.advance(0.25)

        during_probe: list[tuple[str, CircuitState]] = []

        def meanwhile() -> None:
            during_probe.append((op.run(breaker, True), breaker.state["svc"]))

        assert op.run(breaker, True, during=meanwhile) == "ran"
        assert during_probe == [("fallback", CircuitState.HALF_OPEN)]  # others wait for the probe

    def test_probe_success_closes_and_forgets_old_failures(self) -> None:
        clock = FakeClock()
        breaker, op = make_breaker(break_duration=0.1, clock=clock), Operation()
        open_breaker(breaker, op)
        clock.advance(0.15)

        assert op.run(breaker, True) == "ran"

        assert state_of(breaker) is CircuitState.CLOSED
        assert breaker.counts("svc") == (0, 0)
        assert [op.run(breaker, True) for _ in range(3)] == ["ran"] * 3

    def test_probe_failure_opens_again_for_another_break(self) -> None:
        clock = FakeClock()
        breaker, op = make_breaker(break_duration=0.2, clock=clock), Operation()
        open_breaker(breaker, op)
        clock.advance(0.25)

        assert op.run(breaker, False) == "ran"

        assert state_of(breaker) is CircuitState.OPEN
        assert op.run(breaker, True) == "fallback"
        clock.advance(0.25)
        assert op.run(breaker, True) == "ran"
        assert state_of(breaker) is CircuitState.CLOSED

    @pytest.mark.parametrize("stale_outcome", [True, False], ids=["stale success", "stale failure"])
    def test_only_the_probe_decides_a_half_open_circuit(self, stale_outcome: bool) -> None:
        """A call let through while the circuit was closed and still out when the probe went: its
        outcome decided the half-open circuit. A success closed it with the probe still out (3 more
        calls went through); a failure opened it again, and the probe's success then left it open
        for another break."""
        clock = FakeClock()
        breaker, op = make_breaker(break_duration=0.2, clock=clock), Operation()
        stale_go, probe_go, probe_out = threading.Event(), threading.Event(), threading.Event()
        results: dict[str, str] = {}
        stale = threading.Thread(
            target=lambda: results.update(stale=op.run(breaker, stale_outcome, during=lambda: stale_go.wait(5)))
        )
        stale.start()
        while op.calls == 0:
            time.sleep(0.001)
        open_breaker(breaker, op)
        clock.advance(0.25)

        def probing() -> None:
            probe_out.set()
            probe_go.wait(5)

        probe = threading.Thread(target=lambda: results.update(probe=op.run(breaker, True, during=probing)))
        probe.start()
        probe_out.wait(5)
        stale_go.set()
        stale.join()
        during_probe = (state_of(breaker), [op.run(breaker, True) for _ in range(3)])
        probe_go.set()
        probe.join()

        assert results == {"stale": "ran", "probe": "ran"}
        assert during_probe == (CircuitState.HALF_OPEN, ["fallback"] * 3)
        assert state_of(breaker) is CircuitState.CLOSED  # the probe's success

    def test_cancelled_outcomes_are_not_counted(self) -> None:
        breaker, op = make_breaker(minimum_throughput=2), Operation()
        op.run(breaker, False)
        for _ in range(10):
            assert op.run(breaker, None) == "ran"
        assert breaker.counts("svc") == (1, 0)
        assert state_of(breaker) is CircuitState.CLOSED
        op.run(breaker, True)
        assert breaker.counts("svc") == (1, 1)

    def test_a_cancelled_probe_is_replaced_at_once(self) -> None:
        """A probe abandoned by its strategy (lost to a hedge) says nothing about the endpoint: the
        next call probes, instead of every call getting the fallback for another break."""
        clock = FakeClock()
        breaker, op = make_breaker(break_duration=0.2, clock=clock), Operation()
        open_breaker(breaker, op)
        clock.advance(0.25)

        assert op.run(breaker, None) == "ran"  # the probe's caller gave up: no verdict
        assert state_of(breaker) is CircuitState.HALF_OPEN
        assert op.run(breaker, True) == "ran"
        assert state_of(breaker) is CircuitState.CLOSED

    def test_a_probe_that_raises_counts_as_a_failure(self) -> None:
        clock = FakeClock()
        breaker, op = make_breaker(break_duration=0.2, clock=clock), Operation()
        open_breaker(breaker, op)
        clock.advance(0.25)

        def broken() -> str:
            raise RuntimeError("a bug in an enricher")

        with pytest.raises(RuntimeError):
            breaker.execute(scope="svc", operation=broken, fallback=lambda: "fallback", is_successful=bool)
        assert state_of(breaker) is CircuitState.OPEN  # not left half-open: opened again for a break
        assert op.run(breaker, True) == "fallback"
        clock.advance(0.25)
        assert op.run(breaker, True) == "ran"
        assert state_of(breaker) is CircuitState.CLOSED

    def test_a_probe_interrupted_by_a_base_exception_is_replaced_at_once(self) -> None:
        clock = FakeClock()
        breaker, op = make_breaker(break_duration=0.2, clock=clock), Operation()
        open_breaker(breaker, op)
        clock.advance(0.25)

        def interrupted() -> str:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            breaker.execute(scope="svc", operation=interrupted, fallback=lambda: "fallback", is_successful=bool)
        assert op.run(breaker, True) == "ran"
        assert state_of(breaker) is CircuitState.CLOSED

    def test_failures_leave_the_sampling_period(self) -> None:
        clock = FakeClock()
        breaker, op = (
            make_breaker(sampling_duration=0.3, minimum_throughput=2, windows_count=3, clock=clock),
            Operation(),
        )
        op.run(breaker, False)
        clock.advance(0.35)
        op.run(breaker, False)
        assert breaker.counts("svc") == (1, 0)
        assert state_of(breaker) is CircuitState.CLOSED
        op.run(breaker, False)
        assert state_of(breaker) is CircuitState.OPEN

    def test_unknown_scope_has_no_counts(self) -> None:
        breaker = make_breaker()
        assert breaker.counts("nobody") == (0, 0)
        assert breaker.state == {}


class TestListeners:
    def test_told_of_every_transition_with_counts(self) -> None:
        clock = FakeClock()
        breaker, op = make_breaker(break_duration=0.1, minimum_throughput=4, clock=clock), Operation()
        transitions: list[CircuitTransition[str]] = []
        breaker.add_listener(transitions.append)

        op.run(breaker, True)
        for _ in range(3):
            op.run(breaker, False)  # 3 of 4 failed
        clock.advance(0.15)
        op.run(breaker, False)  # the probe fails
        clock.advance(0.15)
        op.run(breaker, True)  # the next probe succeeds

        assert [(t.old, t.new) for t in transitions] == [
            (CircuitState.CLOSED, CircuitState.OPEN),
            (CircuitState.OPEN, CircuitState.HALF_OPEN),
            (CircuitState.HALF_OPEN, CircuitState.OPEN),
            (CircuitState.OPEN, CircuitState.HALF_OPEN),
            (CircuitState.HALF_OPEN, CircuitState.CLOSED),
        ]
        opened = transitions[0]
        assert (opened.scope, opened.failures, opened.successes) == ("svc", 3, 1)
        assert opened.failure_ratio == 0.75
        assert (transitions[2].failures, transitions[2].successes) == (4, 1)  # the failed probe counts
        # ... and so does the probe that closes it: it read 4 failures, 1 success (80%), the figures
        # from before it, in the admin's history (a review: "half-open -> closed at 100%").
        assert (transitions[4].failures, transitions[4].successes) == (4, 2)
        assert all(abs(t.at - time.time()) < 5 for t in transitions)
        assert CircuitTransition("s", CircuitState.OPEN, CircuitState.CLOSED, 0, 0, 0.0).failure_ratio == 0.0

    def test_a_failing_listener_breaks_nothing(self, caplog: pytest.LogCaptureFixture) -> None:
        breaker, op = make_breaker(break_duration=5.0), Operation()
        seen: list[CircuitState] = []

        def broken(transition: CircuitTransition[str]) -> None:
            raise RuntimeError("listener bug")

        breaker.add_listener(broken)
        breaker.add_listener(lambda t: seen.append(t.new))

        with caplog.at_level(logging.ERROR, logger="django_aio_request.breaker.circuit_breaker"):
            open_breaker(breaker, op)

        assert seen == [CircuitState.OPEN]  # later listeners still told
        assert op.run(breaker, True) == "fallback"
        assert any("listener" in record.getMessage() for record in caplog.records)

    def test_a_listener_may_read_the_breaker(self) -> None:
        breaker, op = make_breaker(break_duration=5.0), Operation()
        states: list[dict[str, CircuitState]] = []
        breaker.add_listener(lambda t: states.append(dict(breaker.state)))  # would deadlock under the lock

        open_breaker(breaker, op)

        assert states == [{"svc": CircuitState.OPEN}]


class TestThreadSafety:
    def test_exact_counts_from_many_threads(self) -> None:
        # A quarter of the outcomes fail, evenly spread: never 90% once 100 are counted, so it stays closed.
        breaker, op = make_breaker(minimum_throughput=100, failure_threshold=0.9), Operation()
        barrier = threading.Barrier(8)
        per_thread = 500

        def hammer(n: int) -> None:
            barrier.wait(5)
            for i in range(per_thread):
                op.run(breaker, (i + n) % 4 != 0)

        threads = [threading.Thread(target=hammer, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)

        assert state_of(breaker) is CircuitState.CLOSED
        assert breaker.counts("svc") == (8 * per_thread // 4, 8 * per_thread * 3 // 4)
        assert op.calls == 8 * per_thread

    def test_one_probe_among_many_concurrent_callers(self) -> None:
        clock = FakeClock()
        breaker, op = make_breaker(break_duration=0.2, clock=clock), Operation()
        open_breaker(breaker, op)
        calls = op.calls
        clock.advance(0.25)
        barrier = threading.Barrier(16)
        results: list[str] = []
        lock = threading.Lock()
        others_answered = threading.Event()

        def caller() -> None:
            barrier.wait(5)
            # The probe holds on until every other caller has had its answer.
            result = op.run(breaker, True, during=lambda: others_answered.wait(5))
            with lock:
                results.append(result)
                if results.count("fallback") == 15:
                    others_answered.set()

        threads = [threading.Thread(target=caller) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)

        assert sorted(results) == ["fallback"] * 15 + ["ran"]
        assert op.calls == calls + 1
        assert state_of(breaker) is CircuitState.CLOSED

    def test_operations_run_outside_the_lock(self) -> None:
        breaker, op = make_breaker(), Operation()
        barrier = threading.Barrier(4)

        # Four operations that each wait for the others: only possible if they run concurrently.
        results: list[str] = []
        threads = [
            threading.Thread(target=lambda: results.append(op.run(breaker, True, during=lambda: barrier.wait(2))))
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)

        assert results == ["ran"] * 4
        assert not barrier.broken


class TestValidation:
    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"break_duration": 0}, "break_duration"),
            ({"break_duration": -1}, "break_duration"),
            ({"break_duration": float("nan")}, "break_duration"),
            ({"sampling_duration": 0}, "sampling_duration"),
            ({"minimum_throughput": 0}, "minimum_throughput"),
            ({"failure_threshold": 0}, "failure_threshold"),
            ({"failure_threshold": 1}, "failure_threshold"),
            ({"failure_threshold": 50}, "failure_threshold"),
            ({"windows_count": 0}, "windows_count"),
        ],
    )
    def test_invalid_arguments(self, kwargs: dict[str, float], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            make_breaker(**kwargs)  # type: ignore[arg-type]


def call(client: Client, request: Request, **kwargs: object) -> Response:
    return timed_call(client, request, **kwargs)[0]


class _SlowAfter:
    """Fails ``failures`` times at once, then answers 200 after ``delay`` seconds."""

    def __init__(self, *, failures: int, delay: float) -> None:
        self.failures = failures
        self.delay = delay
        self.count = 0

    def __call__(self, handler: Handler) -> None:
        self.count += 1
        if self.count <= self.failures:
            handler.reply(500)
            return
        time.sleep(self.delay)
        handler.reply(200, b"recovered")


class TestThroughAClient:
    def test_a_server_shedding_every_call_with_do_not_retry_opens_no_circuit(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        """A 503 with ``X-Do-Not-Retry`` (a shedding server's answer to a caller whose deadline is too
        short to wait) is accepted, and counted as a success: the endpoint answers, and its shedding
        protects it. So a service refusing every call so never opens its callers' circuits (a review
        saw 20 successes of 20 refusals, and aio-request's breaker never opened either)."""
        server.route("/shed", lambda handler: handler.reply(503, headers={"X-Do-Not-Retry": "1", "Retry-After": "1"}))
        breaker: DefaultCircuitBreaker[str, Response] = DefaultCircuitBreaker(
            break_duration=5, sampling_duration=60, minimum_throughput=5, failure_threshold=0.5
        )
        client = make_client(circuit_breaker=breaker, safe_method_strategy=single_attempt_strategy())
        assert [call(client, get("shed")).status for _ in range(20)] == [503] * 20
        assert breaker.counts(server.url) == (0, 20)
        assert state_of(breaker, server.url) is CircuitState.CLOSED
        assert len(server.received("/shed")) == 20

    def test_open_circuit_answers_502_without_a_request(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        server.route("/down", replies(500, 500, 200))
        clock = FakeClock()
        breaker: DefaultCircuitBreaker[str, Response] = DefaultCircuitBreaker(
            break_duration=0.3,
            sampling_duration=60,
            minimum_throughput=2,
            failure_threshold=0.5,
            store=MemoryCircuitStore(clock=clock),
        )
        client = make_client(circuit_breaker=breaker, safe_method_strategy=single_attempt_strategy())

        assert [call(client, get("down")).status for _ in range(2)] == [500, 500]
        assert state_of(breaker, server.url) is CircuitState.OPEN

        response = call(client, get("down"))
        assert response.status == 502
        assert "X-Circuit-Breaker" in response.headers
        assert "X-Do-Not-Retry" in response.headers
        assert len(server.received("/down")) == 2

        clock.advance(0.35)
        assert call(client, get("down")).status == 200  # the probe reached the server and closed it
        assert state_of(breaker, server.url) is CircuitState.CLOSED
        assert len(server.received("/down")) == 3

    def test_open_circuit_is_not_retried(self, server: LoopbackServer, make_client: Callable[..., Client]) -> None:
        server.route("/down", replies(503))
        breaker: DefaultCircuitBreaker[str, Response] = DefaultCircuitBreaker(
            break_duration=5, sampling_duration=60, minimum_throughput=3, failure_threshold=0.5
        )
        client = make_client(circuit_breaker=breaker)  # GET: 3 sequential attempts

        assert call(client, get("down")).status == 503
        assert len(server.received("/down")) == 3
        started = time.monotonic()
        assert call(client, get("down")).status == 502
        assert time.monotonic() - started < 0.05  # one fallback, no retries
        assert len(server.received("/down")) == 3

    def test_abandoned_hedges_are_not_counted(self, server: LoopbackServer, make_client: Callable[..., Client]) -> None:
        count = 0

        def slow_first(handler: Handler) -> None:
            nonlocal count
            count += 1
            if count == 1:
                wait_for_disconnect(handler, 5.0)
            else:
                handler.reply(200)

        server.route("/x", slow_first)
        breaker: DefaultCircuitBreaker[str, Response] = DefaultCircuitBreaker(
            break_duration=5, sampling_duration=60, minimum_throughput=1, failure_threshold=0.5
        )
        client = make_client(
            circuit_breaker=breaker,
            safe_method_strategy=parallel_strategy(attempts_count=2, delays_provider=lambda k: 0.1 * k),
        )

        assert call(client, get("x")).status == 200
        client.close()  # waits for the aborted attempt to finish

        assert breaker.counts(server.url) == (0, 1)
        assert state_of(breaker, server.url) is CircuitState.CLOSED

    def test_hedged_probe_is_not_beaten_by_the_open_circuit_fallback(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        # The endpoint recovered but answers slower than the hedge delay. The hedge launched while
        # the probe is in flight gets the open-circuit fallback: it must not win over the probe
        # (and abort it), or the circuit could never close again.
        slow_after_failures = _SlowAfter(failures=2, delay=0.2)
        server.route("/x", slow_after_failures)
        clock = FakeClock()
        breaker: DefaultCircuitBreaker[str, Response] = DefaultCircuitBreaker(
            break_duration=0.2,
            sampling_duration=60,
            minimum_throughput=2,
            failure_threshold=0.5,
            store=MemoryCircuitStore(clock=clock),
        )
        client = make_client(
            circuit_breaker=breaker,
            safe_method_strategy=parallel_strategy(attempts_count=3, delays_provider=lambda k: 0.05 * k),
        )
        for _ in range(2):
            assert call(client, get("x"), strategy=single_attempt_strategy()).status == 500
        assert state_of(breaker, server.url) is CircuitState.OPEN
        clock.advance(0.25)

        response = call(client, get("x"))

        assert response.status == 200
        assert state_of(breaker, server.url) is CircuitState.CLOSED
        assert slow_after_failures.count == 3  # the probe only: the hedges never reached the server

    def test_open_circuit_with_hedging_answers_at_once(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        server.route("/down", replies(500))
        breaker: DefaultCircuitBreaker[str, Response] = DefaultCircuitBreaker(
            break_duration=5, sampling_duration=60, minimum_throughput=3, failure_threshold=0.5
        )
        client = make_client(
            circuit_breaker=breaker,
            safe_method_strategy=parallel_strategy(attempts_count=3, delays_provider=lambda k: 0.2 * k),
        )
        assert call(client, get("down")).status == 500  # three attempts, all failed: open
        assert state_of(breaker, server.url) is CircuitState.OPEN

        started = time.monotonic()
        response = call(client, get("down"))

        assert response.status == 502
        assert "X-Circuit-Breaker" in response.headers
        assert time.monotonic() - started < 0.1  # no waiting for hedge times
        assert len(server.received("/down")) == 3

    def test_timeouts_count_as_failures(self, server: LoopbackServer, make_client: Callable[..., Client]) -> None:
        server.route("/hang", hang_until_disconnect)
        breaker: DefaultCircuitBreaker[str, Response] = DefaultCircuitBreaker(
            break_duration=5, sampling_duration=60, minimum_throughput=1, failure_threshold=0.5
        )
        client = make_client(circuit_breaker=breaker, timeout=0.2, safe_method_strategy=single_attempt_strategy())

        assert call(client, get("hang")).status == 408
        assert breaker.counts(server.url) == (1, 0)
        assert call(client, get("hang")).status == 502


def test_a_fork_while_another_thread_holds_the_breaker_leaves_the_child_a_working_breaker() -> None:
    """The breaker publisher and the cache store's thread read and change a breaker under its lock:
    a fork() meanwhile (gunicorn --preload) left the lock held for ever in the child, whose first
    call through the breaker hung."""
    breaker = make_breaker()
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with breaker._lock:
            held.set()
            release.wait(5)

    threading.Thread(target=hold, daemon=True).start()
    assert held.wait(5)

    def child() -> str:
        signal.alarm(5)  # a child stuck on the lock dies, and the parent reads nothing
        return str(dict(breaker.state))

    try:
        assert in_child(child) == "{}"
    finally:
        release.set()
