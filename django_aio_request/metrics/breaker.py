"""The circuit breakers' metrics: the state of each endpoint's circuit, and its transitions."""

import functools
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from django_aio_request.breaker.circuit_breaker import CircuitState
from django_aio_request.metrics.deferred import DeferredObservations, before_recording, recording
from django_aio_request.metrics.prometheus import ENABLED, MULTIPROCESS, family

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
_counted: "weakref.WeakKeyDictionary[Any, _Watched]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


class _Watched:
    """A watched breaker's entry: the state each of its scopes is counted in, the finalizer that
    takes them out of the gauge if the breaker is garbage-collected while watched, and per scope how
    many clients watch it (open clients with metrics sharing the breaker, by endpoint). None refers
    to the breaker.

    Only watched scopes are exported: a ``metrics=False`` client sharing the breaker with a client
    that has metrics showed its own endpoint in the gauge and counter once its circuit moved (45
    series, an open circuit among them: its alert fired for a client whose metrics were off)."""

    __slots__ = ("counted", "finalizer", "scopes")

    def __init__(self, counted: dict[str, str], finalizer: "weakref.finalize[Any, Any]") -> None:
        self.counted = counted
        self.finalizer = finalizer
        self.scopes: dict[str, int] = {}


# The breakers whose transitions are counted: a listener is added once per breaker, for its life.
# A client closed and used again watches its breaker anew; a second listener counted each of its
# transitions twice.
_listened: "weakref.WeakSet[Any]" = weakref.WeakSet()


# After fork(), the child's gauge may not be what its breakers say, until _settle() sets it anew:
# - In multiprocess mode prometheus_client starts the child's values at 0 (a file of its own) while
#   _counted still says each breaker is counted: with gunicorn --preload, the master's client counted
#   closed 1 in the master's file, and a worker opening it wrote closed -1, open 1 in its own, so
#   the gauge said closed -1 once both workers' were open.
# - Without it, the child's values are a copy of the parent's, which still count the breakers
#   collected and queued but not yet taken out (the parent's queue, which the child's forgets).
# Settled when the child first records metrics (deferred.py's before_recording: the first call or
# request recorded, a collection in the process) or touches the gauge: not in the fork hook, so a
# child that never records (a subprocess's preexec_fn, a short multiprocessing task) leaves no file
# of its own in the multiprocess directory counting the parent's breakers for ever.
_unsettled = False


def _after_fork_in_child() -> None:
    global _lock, _unsettled
    _lock = threading.Lock()  # a transition counted on another thread at the fork held it
    # Registered before _dropped's own hook (made below): it still sees what the parent had queued.
    _unsettled = ENABLED and ((MULTIPROCESS and len(_counted) > 0) or _dropped.pending() > 0)


def _settle() -> None:
    """Set the gauge from this process's breakers if a fork left it unsettled; the caller holds ``_lock``."""
    global _unsettled
    if _unsettled:
        _unsettled = False
        _recount()


def _settle_before_recording() -> None:
    if _unsettled:
        with recording(), _lock:  # in this order everywhere (see deferred.recording)
            _settle()


os.register_at_fork(after_in_child=_after_fork_in_child)
before_recording(_settle_before_recording)


def _on_collected(counted: dict[str, str]) -> None:
    """A watched breaker was garbage-collected: its client was dropped without ``close()``, so
    nothing called :func:`unwatch_breaker`, and the gauge kept counting it for the life of the
    process (an open one fired the alert forever). This runs inside the garbage collector, on
    whichever thread it ran, maybe while that thread holds ``_lock`` or a lock of prometheus_client
    (neither reentrant): it only queues the states, for the recording thread to take out of the
    gauge within 0.1 s (a collection in this process records the queue first, see deferred.py)."""
    _dropped.add(counted)


def _uncount(counted: dict[str, str]) -> None:
    with recording(), _lock:
        _settle()
        _take_out(counted)


def _take_out(counted: dict[str, str]) -> None:
    """Take a breaker's states out of the gauge, once; the caller holds ``_lock``."""
    for scope, state in counted.items():
        breaker_state.labels(scope, state).dec()
    counted.clear()


_dropped: DeferredObservations[dict[str, str]] = DeferredObservations(_uncount, name="breaker-metrics", fed_by_gc=True)


def _recount() -> None:
    """Set every series of the gauge to what this process's watched breakers say."""
    totals = dict.fromkeys(breaker_state.label_sets(), 0)
    for watched in list(_counted.values()):
        for scope, state in watched.counted.items():
            totals[scope, state] = totals.get((scope, state), 0) + 1
    for (scope, state), count in totals.items():
        breaker_state.labels(scope, state).set(count)


def watch_breaker(breaker: object, endpoint: str) -> None:
    """Export the breaker's state per scope (endpoint) in the gauge and count its transitions.

    Works with any breaker that has ``state`` (scope -> state enum) and ``add_listener``; a breaker
    shared by several clients is counted once. State labels are the enum's values. The gauge holds,
    per endpoint and state, how many breakers are in it: 1 and 0s with one client of an endpoint.

    Each call is one watcher of ``endpoint`` (a client with metrics, built or used again after
    ``close()``), ended by one :func:`unwatch_breaker`: the endpoint stays in the gauge while any of
    its watchers is open, and only watched endpoints are exported.
    """
    add_listener: Callable[[Callable[[Any], None]], None] | None = getattr(breaker, "add_listener", None)
    if not ENABLED or add_listener is None:
        return
    with recording(), _lock:
        _settle()
        watched = _counted.get(breaker)
        listen = False
        if watched is None:
            counted: dict[str, str] = {}
            finalizer = weakref.finalize(breaker, _on_collected, counted)
            finalizer.atexit = False  # at exit the gauge goes with the process
            watched = _counted[breaker] = _Watched(counted, finalizer)
            listen = breaker not in _listened
            _listened.add(breaker)
        watched.scopes[endpoint] = watched.scopes.get(endpoint, 0) + 1
    # The endpoint's scope, even for a breaker counted already: one breaker may serve the clients of
    # several endpoints, and the second one's state and transitions were missing until its first
    # transition, which then started its counter at 1 (increase() missed its first opening).
    states: Mapping[Any, Any] = getattr(breaker, "state", {})
    state = states.get(endpoint)
    _move(breaker, endpoint, "closed" if state is None else str(state.value))
    if listen:
        add_listener(functools.partial(_on_transition, weakref.ref(breaker)))


def unwatch_breaker(breaker: object, endpoint: str) -> None:
    """End one watcher of the breaker's ``endpoint`` (``Client.close()`` of a client with metrics);
    the last one takes the endpoint out of the gauge, and the breaker's last watcher the breaker: a
    client rebuilt with new settings must not be counted twice, and a breaker shared by several
    clients stays counted while one of them is open (closing the other took it out, and the gauge
    said 0 open while the live client's circuit was open)."""
    with recording(), _lock:
        _settle()
        watched = _counted.get(breaker)
        if watched is None:
            return
        left = watched.scopes.get(endpoint, 0) - 1
        if left > 0:
            watched.scopes[endpoint] = left
            return
        watched.scopes.pop(endpoint, None)
        if watched.scopes:
            state = watched.counted.pop(endpoint, None)
            if state is not None:
                breaker_state.labels(endpoint, state).dec()
            return
        del _counted[breaker]
        watched.finalizer.detach()
        _take_out(watched.counted)


def _move(breaker: object, scope: str, new: str) -> None:
    with recording(), _lock:
        _settle()
        watched = _counted.get(breaker)
        if watched is None or scope not in watched.scopes:  # closed meanwhile, or no client with metrics calls it
            return
        counted = watched.counted
        old = counted.get(scope)
        if old == new:
            return
        counted[scope] = new
        if old is None:  # a new scope: every known state exported, at 0 but its own
            for known in CircuitState:
                breaker_state.labels(scope, known.value).inc(0)
            export_transitions_at_zero(scope)
        # The new state counted before the old one is let go: a scrape between the two writes (another
        # process reads them from their files) sees the breaker in both states for that moment, never
        # in none, which set AioRequestCircuitOpen's `for` back when open turned half-open (a review).
        breaker_state.labels(scope, new).inc()
        if old is not None:
            breaker_state.labels(scope, old).dec()


def export_transitions_at_zero(scope: str) -> None:
    """Export every transition between the known states of a breaker's ``scope`` (endpoint) at 0: a
    counter series born at 1 hides its first event from increase() and rate() (the circuit's first
    opening counted 0 times). Made when a client with metrics starts watching its breaker, and for
    the named clients of a service as it starts (named_clients.py). Not the state gauge: it counts
    live breakers. Idempotent."""
    if not ENABLED:
        return
    with recording():
        for before in CircuitState:
            for after in CircuitState:
                if before is not after:
                    breaker_transitions.labels(scope, before.value, after.value)


def _on_transition(ref: "weakref.ref[Any]", transition: Any) -> None:
    breaker = ref()
    if breaker is None:
        return
    scope, old, new = str(transition.scope), str(transition.old.value), str(transition.new.value)
    with recording(), _lock:
        watched = _counted.get(breaker)
        if watched is None or scope not in watched.scopes:  # no open client with metrics calls this endpoint
            return
    if not getattr(transition, "already_open", False):  # one opening counts once per process that saw it happen
        with recording():
            breaker_transitions.labels(scope, old, new).inc()
    _move(breaker, scope, new)
