"""Prometheus metrics; no-ops when ``prometheus_client`` is not installed (``pip install django-aio-request[metrics]``).

The metrics live on prometheus_client's default registry, so django-prometheus's ``/metrics`` view
(or ``prometheus_client.start_http_server``) exposes them. Every label value comes from a bounded
set: configured endpoints, request path templates, URL patterns, status codes, and calling-service
names bounded by :func:`service_label`. See docs/metrics.md for every metric.

This module imports no Django: the client pipeline uses it.

``aio_request_latency``, ``aio_request_transport_latency`` and ``aio_request_server_latency`` have
aio-request's names, help texts, labels and buckets, so a process running both libraries shares
one metric of each (whichever library is imported first creates it, the other uses it).
"""

import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from django_aio_request.breaker.circuit_breaker import CircuitState
from django_aio_request.core import headers as h
from django_aio_request.metrics.deferred import DeferredObservations


class Counter(Protocol):
    def labels(self, *values: str, **labels: str) -> "Counter": ...

    def inc(self, amount: float = 1) -> None: ...


class Child(Protocol):
    """One labelled series: a counter's, a gauge's or a histogram's."""

    def inc(self, amount: float = 1) -> None: ...

    def set(self, value: float) -> None: ...

    def observe(self, amount: float) -> None: ...


class _NoOpCounter:
    def labels(self, *values: str, **labels: str) -> "_NoOpCounter":
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


_NO_OP = _NoOpCounter()


def _counter(name: str, documentation: str, label: str | None = None, values: tuple[str, ...] = ()) -> Counter:
    if _prometheus is None:
        return _NoOpCounter()
    if label is None:
        unlabelled: Counter = _prometheus.Counter(name, documentation)
        return unlabelled
    counter: Counter = _prometheus.Counter(name, documentation, [label])
    for value in values:  # exported at 0 from the start, so rates and alerts work before the first event
        counter.labels(**{label: value})
    return counter


try:
    import prometheus_client

    _prometheus: Any = prometheus_client
except ImportError:  # the optional extra is not installed
    _prometheus = None

ENABLED = _prometheus is not None

# Server side (the middleware): label values are exactly these.
MALFORMED_HEADERS = (h.X_REQUEST_TIMEOUT, h.X_REQUEST_PRIORITY)
REJECT_REASONS = ("expired", "low_timeout")

server_malformed_headers = _counter(
    "aio_request_server_malformed_headers_total",
    "Incoming X-Request-Timeout / X-Request-Priority values that were ignored as malformed.",
    "header",
    MALFORMED_HEADERS,
)
server_rejected = _counter(
    "aio_request_server_rejected_total",
    "Requests answered 408 without running the view: deadline already expired, or below the low-timeout threshold.",
    "reason",
    REJECT_REASONS,
)
server_cancelled = _counter(
    "aio_request_server_cancelled_total",
    "Async views cancelled at their deadline and answered 408 (CANCEL_ASYNC_VIEWS_ON_TIMEOUT).",
)
server_database_cancelled = _counter(
    "aio_request_server_database_cancelled_total",
    "Requests answered 408 because the database cancelled a query at the deadline (DATABASE_STATEMENT_TIMEOUT).",
)

# Load shedding (AIO_REQUEST["SHEDDING"]): label values are exactly these.
SHED_PRIORITIES = ("high", "normal", "low")
SHED_REASONS = ("capacity", "deadline")  # shedding.REASONS


def shed(priority: str, reason: str) -> None:
    """Count a request the middleware shed (answered 503) in ``aio_request_server_shed_total``."""
    server_shed.labels(priority, reason).inc()


# Labelled metrics used on every call and request: children are cached by label values (a dict
# lookup instead of prometheus_client's locked labels()), which is safe because every label set is bounded.

#: aio-request's buckets, for its three latency histograms.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.75,
           1.0, 5.0, 10.0, 15.0, 20.0)  # fmt: skip


class Family:
    """A labelled metric with a cache of its children (``labels(*values)``, positional only)."""

    __slots__ = ("_by_key", "_children", "_labelnames", "_name", "_own", "_shared", "_target")

    MAX_KEYS = 4096  # entries of the cache by caller's key (cached()/cache()); misses past it are not kept

    def __init__(self, own: Any, name: str, labelnames: tuple[str, ...], *, shared: bool = False) -> None:
        self._own = own
        self._name = name
        self._labelnames = labelnames
        self._shared = shared
        self._target = own
        self._children: dict[tuple[str, ...], Child] = {}
        self._by_key: dict[Any, Child] = {}

    def labels(self, *values: str) -> Child:
        if self._shared and _registered.get(self._name, self._own) is not self._target:
            self._follow()
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._target.labels(*values)
        return child

    def cached(self, key: Any) -> Child | None:
        """The child cached under the caller's own ``key`` (raw values a caller maps to labels), or None."""
        if self._shared and _registered.get(self._name, self._own) is not self._target:
            self._follow()
        return self._by_key.get(key)

    def cache(self, key: Any, child: Child) -> Child:
        if len(self._by_key) < self.MAX_KEYS:
            self._by_key[key] = child
        return child

    def _follow(self) -> None:
        """Record into aio-request's collector of the same name once one is registered (see _Shared)."""
        found = _registered.get(self._name)
        if found is not None and found is not self._target and _compatible(found, self._own):
            self._target = found
            self._children = {}
            self._by_key = {}


def _compatible(found: Any, own: Any) -> bool:
    return type(found) is type(own) and tuple(getattr(found, "_labelnames", ())) == tuple(own._labelnames)


class _Shared:
    """Exports our histograms of aio-request's names unless another collector registered the name.

    Ours are not registered under their names: aio-request registers its own at import without a
    duplicate check, so claiming a name would make ``import aio_request`` fail after us. This
    collector claims no name (``describe()`` is empty) and collects ours while nobody else holds
    the name; from the moment aio-request does, :class:`Family` records into its collector instead.
    """

    def __init__(self) -> None:
        self.families: list[tuple[str, Any]] = []

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        # Collected before every collector registered after this module's import (ours, and
        # aio-request's when imported later), so a scrape sees every request that has finished.
        flush()
        for name, own in self.families:
            if name not in _registered:
                yield from own.collect()


def _family(kind: str, name: str, documentation: str, labelnames: tuple[str, ...], **options: Any) -> Family:
    if _prometheus is None:
        return _NO_OP  # type: ignore[return-value]
    factory = getattr(_prometheus, kind)
    existing = _registered.get(name)
    if existing is not None:  # registered already (aio-request was imported first): share it
        probe = factory(name, documentation, labelnames, registry=None, **options)
        if _compatible(existing, probe):
            return Family(existing, name, labelnames)
        raise ValueError(f"a different metric named {name} is registered already: {existing!r}")
    if name in _AIO_REQUEST_NAMES:
        own = factory(name, documentation, labelnames, registry=None, **options)
        _shared.families.append((name, own))
        return Family(own, name, labelnames, shared=True)
    return Family(factory(name, documentation, labelnames, **options), name, labelnames)


_AIO_REQUEST_NAMES = ("aio_request_latency", "aio_request_transport_latency", "aio_request_server_latency")
_shared = _Shared()
_registered: Mapping[str, Any] = {}
if _prometheus is not None:
    _registered = _prometheus.REGISTRY._names_to_collectors  # read only: name -> collector
    _prometheus.REGISTRY.register(_shared)

CLIENT = ("request_endpoint", "request_method")
client_latency = _family(
    "Histogram",
    "aio_request_latency",
    "Duration of client requests.",
    (*CLIENT, "request_path", "response_status", "circuit_breaker"),
    buckets=BUCKETS,
)
transport_latency = _family(
    "Histogram",
    "aio_request_transport_latency",
    "Duration of transport requests.",
    (*CLIENT, "request_path", "response_status"),
    buckets=BUCKETS,
)
server_latency = _family(
    "Histogram",
    "aio_request_server_latency",
    "Duration of HTTP server requests.",
    ("request_client", "request_method", "request_path", "response_status"),
    buckets=BUCKETS,
)
client_attempts = _family(
    "Counter",
    "aio_request_attempts_total",
    "Attempts started by client calls, by attempt number (0: the first; retries and hedges above).",
    (*CLIENT, "attempt"),
)
client_retries = _family(
    "Counter",
    "aio_request_retries_total",
    "Attempts beyond a call's first (retries and hedges).",
    CLIENT,
)
client_winning_attempt = _family(
    "Counter",
    "aio_request_winning_attempt_total",
    "Client calls by the attempt whose response the call returned (0: the first).",
    (*CLIENT, "attempt"),
)
client_deadline_rejected = _family(
    "Counter",
    "aio_request_deadline_rejected_total",
    "Attempts answered 408 without sending: deadline expired, or less time left than LOW_TIMEOUT_THRESHOLD.",
    (*CLIENT, "reason"),
)
client_retry_budget_exhausted = _family(
    "Counter",
    "aio_request_retry_budget_exhausted_total",
    "Extra attempts (retries and hedges) not sent because the client's retry budget was spent.",
    ("request_endpoint",),
)
breaker_state = _family(
    "Gauge",
    "aio_request_circuit_breaker_state",
    "1 for the circuit breaker state of an endpoint, else 0; with several processes, the number of live ones in it.",
    ("request_endpoint", "state"),
    multiprocess_mode="livesum",
)
breaker_transitions = _family(
    "Counter",
    "aio_request_circuit_breaker_transitions_total",
    "Circuit breaker state changes of an endpoint.",
    ("request_endpoint", "from_state", "to_state"),
)
server_shed = _family(
    "Counter",
    "aio_request_server_shed_total",
    "Requests answered 503 by load shedding, by priority and reason (capacity, deadline).",
    ("priority", "reason"),
)
for _priority in SHED_PRIORITIES:  # exported at 0 from the start, as the other server counters
    for _reason in SHED_REASONS:
        server_shed.labels(_priority, _reason)

MAX_ATTEMPT_LABEL = 5  # attempt numbers from this one on share the label "5+"
_ATTEMPTS = (*(str(n) for n in range(MAX_ATTEMPT_LABEL)), f"{MAX_ATTEMPT_LABEL}+")


def attempt_label(number: int) -> str:
    return _ATTEMPTS[min(number, MAX_ATTEMPT_LABEL)]


class ClientMetrics:
    """The metrics of one client (one endpoint label), called by the client and its pipeline.

    What every call records (its latency, its attempts, each attempt's transport latency) is queued
    and recorded off the caller's thread, as the server's latency is (see deferred_observations.py):
    recorded inline, these cost about 20 µs a call.
    """

    __slots__ = ("endpoint",)

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def call(self, method: str, path: str, status: int, *, circuit_breaker: bool, attempt: int, elapsed: float) -> None:
        _client_observations.add((_record_call, self.endpoint, method, path, status, circuit_breaker, attempt, elapsed))

    def attempt(self, method: str, number: int) -> None:
        _client_observations.add((_record_attempt, self.endpoint, method, number))

    def transport(self, method: str, path: str, status: int, elapsed: float) -> None:
        _client_observations.add((_record_transport, self.endpoint, method, path, status, elapsed))

    def deadline_rejected(self, method: str, reason: str) -> None:
        client_deadline_rejected.labels(self.endpoint, method, reason).inc()

    def budget_exhausted(self) -> None:
        client_retry_budget_exhausted.labels(self.endpoint).inc()


def _record_call(observation: tuple[Any, ...]) -> None:
    _, endpoint, method, path, status, circuit_breaker, attempt, elapsed = observation
    client_latency.labels(endpoint, method, path, str(status), str(circuit_breaker)).observe(elapsed)
    client_winning_attempt.labels(endpoint, method, attempt_label(attempt)).inc()


def _record_attempt(observation: tuple[Any, ...]) -> None:
    _, endpoint, method, number = observation
    client_attempts.labels(endpoint, method, attempt_label(number)).inc()
    if number:
        client_retries.labels(endpoint, method).inc()


def _record_transport(observation: tuple[Any, ...]) -> None:
    _, endpoint, method, path, status, elapsed = observation
    transport_latency.labels(endpoint, method, path, str(status)).observe(elapsed)


def _record(observation: tuple[Any, ...]) -> None:
    """An observation is ``(record_function, *values)``; the function unpacks it."""
    observation[0](observation)


_client_observations: DeferredObservations[tuple[Any, ...]] = DeferredObservations(_record, name="client-metrics")


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


# The server side: calling services named in X-Service-Name.

MAX_SERVICE_NAMES = 100  # distinct calling-service names kept per process without KNOWN_SERVICES
MAX_SERVICE_NAME_LENGTH = 64
UNKNOWN_SERVICE = "unknown"  # no X-Service-Name (aio-request's label for it too)
OTHER_SERVICE = "other"
_services: set[str] = set()
_services_lock = threading.Lock()


def service_label(raw: str | None, known: frozenset[str] | None) -> str:
    """The ``request_client`` label for an ``X-Service-Name`` value: lower-cased, from a bounded set.

    With ``known`` (``AIO_REQUEST["KNOWN_SERVICES"]``, lower-cased) other names are ``other``;
    without, the first :data:`MAX_SERVICE_NAMES` distinct names this process sees are kept and
    later ones are ``other``, so no caller can create unbounded series.
    """
    if raw is None:
        return UNKNOWN_SERVICE
    name = raw.lower()
    if known is not None:
        return name if name in known else OTHER_SERVICE
    if name in _services:
        return name
    if not name or len(name) > MAX_SERVICE_NAME_LENGTH or not name.isascii() or not name.isprintable():
        return OTHER_SERVICE
    with _services_lock:
        if len(_services) >= MAX_SERVICE_NAMES:
            return OTHER_SERVICE
        _services.add(name)
    return name


_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"))


def method_label(method: str | None) -> str:
    return method if method in _METHODS else "other"


#: One request through AioRequestMiddleware: raw X-Service-Name or None, method, URL pattern, status,
#: KNOWN_SERVICES or None, and seconds taken. Raw values: labels are made off the request path.
ServerObservation = tuple[str | None, str | None, str, int, frozenset[str] | None, float]


def _record_server(observation: ServerObservation) -> None:
    family = server_latency
    key = observation[:5]
    child = family.cached(key)
    if child is None:
        service, method, route, status, known, _ = observation
        values = (service_label(service, known), method_label(method), route, str(status))
        child = family.cache(key, family.labels(*values))
    child.observe(observation[5])


#: ``server_observations.add(observation)`` records it in ``aio_request_server_latency`` off the
#: request path, within deferred_observations.INTERVAL (see that module).
server_observations = DeferredObservations(_record_server, name="server-latency")


def flush() -> None:
    """Record the observations still queued (client calls, server requests). In-process collection
    does this first by itself."""
    _client_observations.flush()
    server_observations.flush()
