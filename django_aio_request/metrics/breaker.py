"""The circuit breakers' metrics: the state of each endpoint's circuit, and its transitions."""

import functools
import os
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

# Per watched breaker, the state each of its scopes is counted in. The gauge counts breakers: two
# clients with the same ENDPOINT have a breaker each, and setting 1 and 0 made them overwrite each
# other's state (one open, the other closed, the gauge said closed).
_counted: "weakref.WeakKeyDictionary[Any, dict[str, str]]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # a transition counted on another thread at the fork held it


os.register_at_fork(after_in_child=_after_fork_in_child)


def watch_breaker(breaker: object, endpoint: str) -> None:
    """Export the breaker's state per scope (endpoint) in the gauge and count its transitions.

    Works with any breaker that has ``state`` (scope -> state enum) and ``add_listener``; a breaker
    shared by several clients is counted once. State labels are the enum's values. The gauge holds,
    per endpoint and state, how many breakers are in it: 1 and 0s with one client of an endpoint.
    """
    add_listener: Callable[[Callable[[Any], None]], None] | None = getattr(breaker, "add_listener", None)
    if not ENABLED or add_listener is None:
        return
    with _lock:
        if breaker in _counted:
            return
        _counted[breaker] = {}
    states: Mapping[Any, Any] = getattr(breaker, "state", {})
    state = states.get(endpoint)
    _move(breaker, endpoint, "closed" if state is None else str(state.value))
    add_listener(functools.partial(_on_transition, weakref.ref(breaker)))


def unwatch_breaker(breaker: object) -> None:
    """Take a closed breaker out of the gauge (``Client.close()``): a client rebuilt with new
    settings must not be counted twice."""
    with _lock:
        counted = _counted.pop(breaker, None)
        for scope, state in (counted or {}).items():
            breaker_state.labels(scope, state).dec()


def _move(breaker: object, scope: str, new: str) -> None:
    with _lock:
        counted = _counted.get(breaker)
        if counted is None:  # closed meanwhile
            return
        old = counted.get(scope)
        if old == new:
            return
        counted[scope] = new
        if old is None:  # a new scope: every known state exported, at 0 but its own
            for known in CircuitState:
                breaker_state.labels(scope, known.value).inc(0)
        else:
            breaker_state.labels(scope, old).dec()
        breaker_state.labels(scope, new).inc()


def _on_transition(ref: "weakref.ref[Any]", transition: Any) -> None:
    scope, old, new = str(transition.scope), str(transition.old.value), str(transition.new.value)
    breaker_transitions.labels(scope, old, new).inc()
    breaker = ref()
    if breaker is not None:
        _move(breaker, scope, new)
