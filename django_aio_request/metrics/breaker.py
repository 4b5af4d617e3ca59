"""The circuit breakers' metrics: the state of each endpoint's circuit, and its transitions."""

import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from django_aio_request.breaker.circuit_breaker import CircuitState
from django_aio_request.metrics.prometheus import ENABLED, family

breaker_state = family(
    "Gauge",
    "aio_request_circuit_breaker_state",
    "1 for the circuit breaker state of an endpoint, else 0; with several processes, the number of live ones in it.",
    ("request_endpoint", "state"),
    multiprocess_mode="livesum",
)
breaker_transitions = family(
    "Counter",
    "aio_request_circuit_breaker_transitions_total",
    "Circuit breaker state changes of an endpoint.",
    ("request_endpoint", "from_state", "to_state"),
)

_watched: "weakref.WeakSet[Any]" = weakref.WeakSet()
_watched_lock = threading.Lock()


def watch_breaker(breaker: object, endpoint: str) -> None:
    """Export the breaker's state per scope (endpoint) as a gauge and count its transitions.

    Works with any breaker that has ``state`` (scope -> state enum) and ``add_listener``; a breaker
    shared by several clients is watched once. State labels are the enum's values.
    """
    add_listener: Callable[[Callable[[Any], None]], None] | None = getattr(breaker, "add_listener", None)
    if not ENABLED or add_listener is None:
        return
    with _watched_lock:
        if breaker in _watched:
            return
        _watched.add(breaker)
    states: Mapping[Any, Any] = getattr(breaker, "state", {})
    state = states.get(endpoint)
    _set_state(endpoint, "closed" if state is None else str(state.value), None)
    add_listener(_on_transition)


def _set_state(scope: str, new: str, old: str | None) -> None:
    if old is not None:
        breaker_state.labels(scope, old).set(0)
    else:  # a new breaker: every known state at 0 but its own
        for known in CircuitState:
            if known.value != new:
                breaker_state.labels(scope, known.value).set(0)
    breaker_state.labels(scope, new).set(1)


def _on_transition(transition: Any) -> None:
    scope, old, new = str(transition.scope), str(transition.old.value), str(transition.new.value)
    _set_state(scope, new, old)
    breaker_transitions.labels(scope, old, new).inc()
