"""A circuit breaker per scope (endpoint) with aio-request's semantics, safe to share between threads.

Failures and successes are counted over ``sampling_duration`` in ``windows_count`` rolling windows.
When at least ``minimum_throughput`` outcomes were seen and the failure ratio reaches
``failure_threshold``, the circuit opens for ``break_duration``: calls get the fallback without
touching the network. Then exactly one call is let through as a probe (half-open): its success
closes the circuit, its failure opens it again. A probe that never reports (its caller died) is
replaced by another after ``break_duration``.

An :class:`Override` (``set_override``) forces a circuit open or closed by hand. Counts and blocks
live in a :class:`CircuitStore`: in memory by default, or shared by processes (shared_breaker.py).
"""

import abc
import collections
import dataclasses
import enum
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

TScope = TypeVar("TScope", bound=Hashable)
TResult = TypeVar("TResult")


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"  # Override.FORCE_OPEN is set
    FORCED_CLOSED = "forced_closed"  # Override.FORCE_CLOSED is set


@dataclasses.dataclass(frozen=True, slots=True)
class CircuitTransition(Generic[TScope]):
    """What an observer of a breaker is told when a scope changes state."""

    scope: TScope
    old: CircuitState
    new: CircuitState
    failures: int
    successes: int
    at: float  # time.time()
    #: Closed -> open because the circuit was already open in a store shared with other processes when
    #: this one first read it (a worker started or recycled during a break): this process's view
    #: changed, nothing opened. Counted as no opening by the metrics and admin's history: one opening
    #: read by each of 20 recycled workers counted 20 to 30 times in a review.
    already_open: bool = False

    @property
    def failure_ratio(self) -> float:
        total = self.failures + self.successes
        return self.failures / total if total else 0.0


TransitionListener = Callable[[CircuitTransition[TScope]], None]


class CircuitBreaker(abc.ABC, Generic[TScope, TResult]):
    @abc.abstractmethod
    def execute(
        self,
        *,
        scope: TScope,
        operation: Callable[[], TResult],
        fallback: Callable[[], TResult],
        is_successful: Callable[[TResult], bool | None],
    ) -> TResult:
        """Run ``operation`` if the circuit of ``scope`` lets it, else return ``fallback()``.

        ``is_successful`` judges the result: True and False count, None (an attempt abandoned by
        its caller) does not.
        """

    @property
    @abc.abstractmethod
    def state(self) -> Mapping[TScope, CircuitState]: ...

    def close(self) -> None:
        """Release what the breaker holds (e.g. a shared store's thread); it may still be used afterwards."""


@dataclasses.dataclass(slots=True)
class _Window:
    started_at: float
    successes: int = 0
    failures: int = 0


class _RollingCounts:
    """Outcomes over the last ``sampling_duration`` seconds in ``windows_count`` windows."""

    __slots__ = ("_sampling_duration", "_window_duration", "_windows")

    def __init__(self, sampling_duration: float, windows_count: int) -> None:
        self._sampling_duration = sampling_duration
        self._window_duration = sampling_duration / windows_count
        self._windows: collections.deque[_Window] = collections.deque()

    def add(self, success: bool, now: float) -> None:
        self._expire(now)
        if not self._windows or now - self._windows[-1].started_at >= self._window_duration:
            self._windows.append(_Window(started_at=now))
        if success:
            self._windows[-1].successes += 1
        else:
            self._windows[-1].failures += 1

    def totals(self, now: float) -> tuple[int, int]:
        """(failures, successes) in the sampling period."""
        self._expire(now)
        return sum(w.failures for w in self._windows), sum(w.successes for w in self._windows)

    def reset(self) -> None:
        self._windows.clear()

    def _expire(self, now: float) -> None:
        while self._windows and now - self._windows[0].started_at >= self._sampling_duration:
            self._windows.popleft()


class CircuitStore(abc.ABC, Generic[TScope]):
    """Where a :class:`DefaultCircuitBreaker` keeps, per scope, the outcome counts and until when the
    circuit is blocked (open, or half-open with its probe out).

    The breaker calls every method while holding its lock, so a store needs no lock of its own for
    these calls (one with a background thread must guard what that thread shares). ``now()`` is the
    store's clock for ``until`` values: monotonic in memory, wall-clock time when processes share it.
    A store must not block in these calls either (no network round trip): they run under the lock,
    on the call path; a shared store talks to its backend from a thread of its own.
    """

    def bind(
        self,
        *,
        sampling_duration: float,
        windows_count: int,
        break_duration: float,
        on_change: Callable[[TScope], None],
    ) -> None:
        """Called once by the breaker: its settings, and a callback to call (outside any lock of the
        store's) when the store learns of counts or blocks it did not make itself. The callback holds
        the breaker weakly: a store may keep it (it does nothing once the breaker is gone)."""

    @abc.abstractmethod
    def now(self) -> float: ...

    @abc.abstractmethod
    def add(self, scope: TScope, success: bool) -> None:
        """Count one outcome."""

    @abc.abstractmethod
    def totals(self, scope: TScope) -> tuple[int, int]:
        """(failures, successes) in the sampling period."""

    @abc.abstractmethod
    def blocked_until(self, scope: TScope) -> float | None:
        """Until when (``now()`` clock) the circuit is blocked; None when it is closed. A time in the
        past means the break is over: the next caller may claim the probe."""

    @abc.abstractmethod
    def block(self, scope: TScope, until: float) -> None:
        """Open the circuit until ``until``."""

    def open_before_first_read(self, scope: TScope) -> bool:
        """Whether the block :meth:`blocked_until` gives now was there when this process first read
        ``scope`` from a store shared with other processes (see ``CircuitTransition.already_open``)."""
        return False

    @abc.abstractmethod
    def claim_probe(self, scope: TScope, until: float) -> bool:
        """Atomically: if the break is over, block until ``until`` and return True (the caller is the
        one probe); else return False."""

    @abc.abstractmethod
    def close_circuit(self, scope: TScope) -> None:
        """The circuit closed: forget its counts and its block."""

    def release_probe(self, scope: TScope) -> None:
        """The probe ended without an outcome (abandoned by its strategy, or it raised): the break is
        over, so the next call may claim the probe at once."""
        self.block(scope, self.now())

    def close(self) -> None:
        """Release what the store holds (threads, connections); it may still be used afterwards."""


class MemoryCircuitStore(CircuitStore[TScope]):
    """The default store: counts and blocks in this process only, on the ``clock`` given (monotonic)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._sampling_duration = 10.0
        self._windows_count = 10
        self._counts: dict[TScope, _RollingCounts] = {}
        self._blocked: dict[TScope, float] = {}

    def bind(
        self,
        *,
        sampling_duration: float,
        windows_count: int,
        break_duration: float,
        on_change: Callable[[TScope], None],
    ) -> None:
        self._sampling_duration = sampling_duration
        self._windows_count = windows_count

    def now(self) -> float:
        return self._clock()

    def add(self, scope: TScope, success: bool) -> None:
        counts = self._counts.get(scope)
        if counts is None:
            counts = self._counts[scope] = _RollingCounts(self._sampling_duration, self._windows_count)
        counts.add(success, self._clock())

    def totals(self, scope: TScope) -> tuple[int, int]:
        counts = self._counts.get(scope)
        return counts.totals(self._clock()) if counts is not None else (0, 0)

    def blocked_until(self, scope: TScope) -> float | None:
        return self._blocked.get(scope)

    def block(self, scope: TScope, until: float) -> None:
        self._blocked[scope] = until

    def claim_probe(self, scope: TScope, until: float) -> bool:
        blocked = self._blocked.get(scope)
        if blocked is not None and blocked > self._clock():
            return False
        self._blocked[scope] = until
        return True

    def close_circuit(self, scope: TScope) -> None:
        counts = self._counts.get(scope)
        if counts is not None:
            counts.reset()
        self._blocked.pop(scope, None)


class Override(enum.StrEnum):
    """A manual setting that replaces the automatic state of a circuit until it is removed."""

    FORCE_OPEN = "force_open"  # isolate the endpoint: every call gets the fallback
    FORCE_CLOSED = "force_closed"  # every call goes through, whatever the counts say


_FORCED = {Override.FORCE_OPEN: CircuitState.FORCED_OPEN, Override.FORCE_CLOSED: CircuitState.FORCED_CLOSED}


@dataclasses.dataclass(frozen=True, slots=True)
class CircuitSnapshot(Generic[TScope]):
    """One scope of a breaker at one moment (``DefaultCircuitBreaker.snapshot()``)."""

    scope: TScope
    state: CircuitState  # FORCED_OPEN / FORCED_CLOSED while an override is set
    failures: int
    successes: int
    changed_at: float  # time.time() of the last state change, 0.0 if it never changed
    override: Override | None
    # Since the scope was first seen, in this process (counters that only grow: a reader takes the
    # difference of two snapshots for the outcomes of a period it chooses, whatever sampling_duration is).
    failures_total: int = 0
    successes_total: int = 0
    rejected_total: int = 0  # calls answered with the fallback: circuit open, forced open, probe out
    # time.time() until which the circuit is blocked (open, or half-open with its probe out); None: not blocked.
    # In the past while the state is still OPEN: the break is over, the next call will be the probe.
    blocked_until: float | None = None

    @property
    def failure_ratio(self) -> float:
        total = self.failures + self.successes
        return self.failures / total if total else 0.0


class _Circuit:
    __slots__ = ("changed_at", "failures_total", "override", "rejected_total", "state", "successes_total")

    def __init__(self) -> None:
        self.state = CircuitState.CLOSED  # the automatic state, kept (frozen) while an override is set
        self.override: Override | None = None
        self.changed_at = 0.0
        self.failures_total = self.successes_total = self.rejected_total = 0

    @property
    def effective(self) -> CircuitState:
        return self.state if self.override is None else _FORCED[self.override]


class DefaultCircuitBreaker(CircuitBreaker[TScope, TResult]):
    def __init__(
        self,
        *,
        break_duration: float,
        sampling_duration: float,
        minimum_throughput: int,
        failure_threshold: float,
        windows_count: int = 10,
        store: CircuitStore[TScope] | None = None,
    ) -> None:
        if not break_duration > 0:
            raise ValueError(f"break_duration must be > 0 seconds, not {break_duration!r}")
        if not sampling_duration > 0:
            raise ValueError(f"sampling_duration must be > 0 seconds, not {sampling_duration!r}")
        if minimum_throughput < 1:
            raise ValueError(f"minimum_throughput must be >= 1, not {minimum_throughput!r}")
        if not 0 < failure_threshold < 1:
            raise ValueError(f"failure_threshold must be between 0 and 1 (exclusive), not {failure_threshold!r}")
        if windows_count < 1:
            raise ValueError(f"windows_count must be >= 1, not {windows_count!r}")
        self.break_duration = break_duration
        self.sampling_duration = sampling_duration
        self.minimum_throughput = minimum_throughput
        self.failure_threshold = failure_threshold
        self.windows_count = windows_count
        self.store: CircuitStore[TScope] = store if store is not None else MemoryCircuitStore()
        self.store.bind(
            sampling_duration=sampling_duration,
            windows_count=windows_count,
            break_duration=break_duration,
            on_change=_weakly(self._reconcile),
        )
        self._lock = threading.Lock()
        self._circuits: dict[TScope, _Circuit] = {}
        self._listeners: list[TransitionListener[TScope]] = []
        _breakers.add(self)

    def _after_fork_in_child(self) -> None:
        # The lock may have been held at the fork by a thread the child does not have (the breaker
        # publisher reading the state, the cache store's thread reconciling): held for ever there,
        # and the child's first call through this breaker hung.
        self._lock = threading.Lock()

    def add_listener(self, listener: TransitionListener[TScope]) -> None:
        """Call ``listener`` after every state change (outside the breaker's lock)."""
        self._listeners.append(listener)

    @property
    def state(self) -> Mapping[TScope, CircuitState]:
        with self._lock:
            return {scope: circuit.effective for scope, circuit in self._circuits.items()}

    def counts(self, scope: TScope) -> tuple[int, int]:
        """(failures, successes) of ``scope`` in the current sampling period."""
        with self._lock:
            return self.store.totals(scope) if scope in self._circuits else (0, 0)

    def snapshot(self) -> list[CircuitSnapshot[TScope]]:
        """Every scope this breaker has seen: its state, counts, last change and override."""
        with self._lock:
            store = self.store
            wall_offset = time.time() - store.now()  # the store's clock to time.time()
            snapshots = []
            for scope, circuit in self._circuits.items():
                until = store.blocked_until(scope)
                snapshots.append(
                    CircuitSnapshot(
                        scope,
                        circuit.effective,
                        *store.totals(scope),
                        circuit.changed_at,
                        circuit.override,
                        circuit.failures_total,
                        circuit.successes_total,
                        circuit.rejected_total,
                        None if until is None else until + wall_offset,
                    )
                )
            return snapshots

    def set_override(self, scope: TScope, override: Override | None) -> None:
        """Force the circuit of ``scope`` open or closed; None gives it back to the automatic state
        (which resumes where it was). Outcomes are still counted while forced. Listeners are told of
        a change of the state shown (e.g. OPEN -> FORCED_CLOSED)."""
        override = None if override is None else Override(override)
        transition = None
        with self._lock:
            circuit = self._circuit(scope)
            old = circuit.effective
            circuit.override = override
            if circuit.effective is not old:
                transition = self._transition(scope, circuit, old)
        self._notify(transition)

    def close(self) -> None:
        self.store.close()

    def execute(
        self,
        *,
        scope: TScope,
        operation: Callable[[], TResult],
        fallback: Callable[[], TResult],
        is_successful: Callable[[TResult], bool | None],
    ) -> TResult:
        admitted = self._admit(scope)
        if admitted is None:
            return fallback()
        # Whatever happens inside, the attempt's outcome is recorded: a probe that raised or was
        # abandoned must not leave the circuit half-open (every other call would get the fallback
        # until the next break ends).
        try:
            result = operation()
            success = is_successful(result)
        except Exception:
            self._record(scope, False, probe=admitted)  # a call that raised did not succeed
            raise
        except BaseException:
            if admitted:
                self._release(scope)
            raise
        if success is not None:
            self._record(scope, success, probe=admitted)
        elif admitted:
            self._release(scope)
        return result

    def _circuit(self, scope: TScope) -> _Circuit:
        circuit = self._circuits.get(scope)
        if circuit is None:
            circuit = self._circuits[scope] = _Circuit()
        return circuit

    def _admit(self, scope: TScope) -> bool | None:
        """None: not admitted; True: admitted as the half-open probe; False: admitted otherwise."""
        transition = None
        admit: bool | None = False
        with self._lock:
            circuit = self._circuit(scope)
            if circuit.override is not None:
                if circuit.override is Override.FORCE_CLOSED:
                    return False
                circuit.rejected_total += 1
                return None
            store = self.store
            until = store.blocked_until(scope)
            if until is None:
                if circuit.state is CircuitState.CLOSED:
                    return False
                # Closed by another process sharing the store (its probe succeeded).
                transition = self._move(scope, circuit, CircuitState.CLOSED)
            else:
                now = store.now()
                if until > now:
                    # Blocked; in CLOSED state only when another process sharing the store opened it.
                    if circuit.state is CircuitState.CLOSED:
                        transition = self._move(
                            scope, circuit, CircuitState.OPEN, already_open=store.open_before_first_read(scope)
                        )
                    admit = None
                # The break is over (or the last probe went missing): this call may be the one probe.
                elif store.claim_probe(scope, now + self.break_duration):
                    admit = True
                    if circuit.state is not CircuitState.HALF_OPEN:
                        transition = self._move(scope, circuit, CircuitState.HALF_OPEN)
                else:
                    admit = None
            if admit is None:
                circuit.rejected_total += 1
        self._notify(transition)
        return admit

    def _release(self, scope: TScope) -> None:
        """The probe of ``scope`` ended without an outcome: the next call may probe at once."""
        with self._lock:
            circuit = self._circuit(scope)
            if circuit.override is None and circuit.state is CircuitState.HALF_OPEN:
                self.store.release_probe(scope)

    def _record(self, scope: TScope, success: bool, *, probe: bool) -> None:
        """Count an outcome; ``probe``: the call was let through as the half-open probe."""
        transition = None
        with self._lock:
            circuit = self._circuit(scope)
            if success:
                circuit.successes_total += 1
            else:
                circuit.failures_total += 1
            store = self.store
            if circuit.override is not None:
                store.add(scope, success)
                return
            if circuit.state is CircuitState.HALF_OPEN and not probe:
                # A call let through before the circuit opened, ending while the probe is out: counted,
                # and only the probe decides (this one closed the circuit with the probe still out, or
                # opened it again, and the probe's success then left it open for another break).
                store.add(scope, success)
            elif circuit.state is CircuitState.HALF_OPEN:
                if success:
                    # The figures the close was decided on: the window's, and this probe's success
                    # (not added to the window, which closing empties).
                    transition = self._move(scope, circuit, CircuitState.CLOSED, probe_succeeded=True)
                    store.close_circuit(scope)
                else:
                    store.add(scope, False)
                    store.block(scope, store.now() + self.break_duration)
                    transition = self._move(scope, circuit, CircuitState.OPEN)
            else:
                store.add(scope, success)
                if circuit.state is CircuitState.CLOSED and not success:
                    transition = self._trip_if_due(scope, circuit)
        self._notify(transition)

    def _trip_if_due(self, scope: TScope, circuit: _Circuit) -> CircuitTransition[TScope] | None:
        failures, successes = self.store.totals(scope)
        total = failures + successes
        if total >= self.minimum_throughput and failures / total >= self.failure_threshold:
            self.store.block(scope, self.store.now() + self.break_duration)
            return self._move(scope, circuit, CircuitState.OPEN)
        return None

    def _reconcile(self, scope: TScope) -> None:
        """The store learnt something from elsewhere (other processes): follow it without waiting for a call."""
        transition = None
        with self._lock:
            circuit = self._circuits.get(scope)
            if circuit is None or circuit.override is not None:
                return
            until = self.store.blocked_until(scope)
            if circuit.state is CircuitState.CLOSED:
                if until is not None and until > self.store.now():
                    transition = self._move(
                        scope, circuit, CircuitState.OPEN, already_open=self.store.open_before_first_read(scope)
                    )
                elif until is None:
                    transition = self._trip_if_due(scope, circuit)
            elif until is None:
                transition = self._move(scope, circuit, CircuitState.CLOSED)
        self._notify(transition)

    def _move(
        self,
        scope: TScope,
        circuit: _Circuit,
        new: CircuitState,
        *,
        probe_succeeded: bool = False,
        already_open: bool = False,
    ) -> CircuitTransition[TScope]:
        old = circuit.effective
        circuit.state = new
        return self._transition(scope, circuit, old, probe_succeeded=probe_succeeded, already_open=already_open)

    def _transition(
        self,
        scope: TScope,
        circuit: _Circuit,
        old: CircuitState,
        *,
        probe_succeeded: bool = False,
        already_open: bool = False,
    ) -> CircuitTransition[TScope]:
        failures, successes = self.store.totals(scope)
        successes += probe_succeeded
        circuit.changed_at = time.time()
        return CircuitTransition(
            scope=scope,
            old=old,
            new=circuit.effective,
            failures=failures,
            successes=successes,
            at=circuit.changed_at,
            already_open=already_open,
        )

    def _notify(self, transition: CircuitTransition[TScope] | None) -> None:
        if transition is None:
            return
        for listener in self._listeners:
            try:
                listener(transition)
            except Exception:
                logger.exception("circuit breaker listener %r failed", listener)


def _weakly(method: Callable[[TScope], None]) -> Callable[[TScope], None]:
    """``method`` (a breaker's), called while its breaker lives: a store keeps the callback, and
    with it the breaker (which keeps the store) until the cycle collector ran. A shared store's sync
    thread lives as long as the store: a client closed with a call in flight, whose outcome started
    it again, kept polling Redis for minutes after the client was dropped."""
    ref = weakref.WeakMethod(method)

    def call(scope: TScope) -> None:
        bound = ref()
        if bound is not None:
            bound(scope)

    return call


_breakers: "weakref.WeakSet[DefaultCircuitBreaker[Any, Any]]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for breaker in list(_breakers):
        breaker._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
