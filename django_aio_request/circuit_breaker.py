"""A circuit breaker per scope (endpoint) with aio-request's semantics, safe to share between threads.

Failures and successes are counted over ``sampling_duration`` in ``windows_count`` rolling windows.
When at least ``minimum_throughput`` outcomes were seen and the failure ratio reaches
``failure_threshold``, the circuit opens for ``break_duration``: calls get the fallback without
touching the network. Then exactly one call is let through as a probe (half-open): its success
closes the circuit, its failure opens it again. A probe that never reports (its caller died) is
replaced by another after ``break_duration``.
"""

import abc
import collections
import dataclasses
import enum
import logging
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

TScope = TypeVar("TScope", bound=Hashable)
TResult = TypeVar("TResult")


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclasses.dataclass(frozen=True, slots=True)
class CircuitTransition(Generic[TScope]):
    """What an observer of a breaker is told when a scope changes state."""

    scope: TScope
    old: CircuitState
    new: CircuitState
    failures: int
    successes: int
    at: float  # time.time()

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


class _Circuit:
    __slots__ = ("blocked_until", "counts", "state")

    def __init__(self, counts: _RollingCounts) -> None:
        self.state = CircuitState.CLOSED
        self.blocked_until = 0.0
        self.counts = counts


class DefaultCircuitBreaker(CircuitBreaker[TScope, TResult]):
    def __init__(
        self,
        *,
        break_duration: float,
        sampling_duration: float,
        minimum_throughput: int,
        failure_threshold: float,
        windows_count: int = 10,
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
        self._lock = threading.Lock()
        self._circuits: dict[TScope, _Circuit] = {}
        self._listeners: list[TransitionListener[TScope]] = []

    def add_listener(self, listener: TransitionListener[TScope]) -> None:
        """Call ``listener`` after every state change (outside the breaker's lock)."""
        self._listeners.append(listener)

    @property
    def state(self) -> Mapping[TScope, CircuitState]:
        with self._lock:
            return {scope: circuit.state for scope, circuit in self._circuits.items()}

    def counts(self, scope: TScope) -> tuple[int, int]:
        """(failures, successes) of ``scope`` in the current sampling period."""
        with self._lock:
            circuit = self._circuits.get(scope)
            return circuit.counts.totals(time.monotonic()) if circuit else (0, 0)

    def execute(
        self,
        *,
        scope: TScope,
        operation: Callable[[], TResult],
        fallback: Callable[[], TResult],
        is_successful: Callable[[TResult], bool | None],
    ) -> TResult:
        if not self._admit(scope):
            return fallback()
        result = operation()
        success = is_successful(result)
        if success is not None:
            self._record(scope, success)
        return result

    def _circuit(self, scope: TScope) -> _Circuit:
        circuit = self._circuits.get(scope)
        if circuit is None:
            circuit = _Circuit(_RollingCounts(self.sampling_duration, self.windows_count))
            self._circuits[scope] = circuit
        return circuit

    def _admit(self, scope: TScope) -> bool:
        transition = None
        with self._lock:
            circuit = self._circuit(scope)
            if circuit.state is CircuitState.CLOSED:
                return True
            now = time.monotonic()
            if circuit.blocked_until > now:
                return False
            # The break is over (or the last probe went missing): this call is the one probe.
            circuit.blocked_until = now + self.break_duration
            if circuit.state is not CircuitState.HALF_OPEN:
                transition = self._move(scope, circuit, CircuitState.HALF_OPEN, now)
        self._notify(transition)
        return True

    def _record(self, scope: TScope, success: bool) -> None:
        transition = None
        with self._lock:
            circuit = self._circuit(scope)
            now = time.monotonic()
            if circuit.state is CircuitState.HALF_OPEN:
                if success:
                    transition = self._move(scope, circuit, CircuitState.CLOSED, now)
                    circuit.counts.reset()
                    circuit.blocked_until = 0.0
                else:
                    circuit.counts.add(False, now)
                    circuit.blocked_until = now + self.break_duration
                    transition = self._move(scope, circuit, CircuitState.OPEN, now)
            else:
                circuit.counts.add(success, now)
            if circuit.state is CircuitState.CLOSED and not success and transition is None:
                failures, successes = circuit.counts.totals(now)
                total = failures + successes
                if total >= self.minimum_throughput and failures / total >= self.failure_threshold:
                    circuit.blocked_until = now + self.break_duration
                    transition = self._move(scope, circuit, CircuitState.OPEN, now)
        self._notify(transition)

    def _move(self, scope: TScope, circuit: _Circuit, new: CircuitState, now: float) -> CircuitTransition[TScope]:
        failures, successes = circuit.counts.totals(now)
        old, circuit.state = circuit.state, new
        return CircuitTransition(scope=scope, old=old, new=new, failures=failures, successes=successes, at=time.time())

    def _notify(self, transition: CircuitTransition[TScope] | None) -> None:
        if transition is None:
            return
        for listener in self._listeners:
            try:
                listener(transition)
            except Exception:
                logger.exception("circuit breaker listener %r failed", listener)
