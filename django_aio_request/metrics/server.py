"""The server's metrics (AioRequestMiddleware): request latency by calling service, refusals, load shedding.

The calling service's label comes from the caller's ``X-Service-Name``: :func:`service_label`
keeps it within a bounded set. See docs/metrics.md.
"""

import threading

from django_aio_request.core import headers as h
from django_aio_request.metrics import service_names
from django_aio_request.metrics.deferred import DeferredObservations, recording
from django_aio_request.metrics.prometheus import _NO_OP, BUCKETS, Child, _prometheus, counter, family
from django_aio_request.metrics.service_names import ServiceNames

# Server side (the middleware): label values are exactly these.
MALFORMED_HEADERS = (h.X_REQUEST_TIMEOUT, h.X_REQUEST_PRIORITY)
REJECT_REASONS = ("expired", "low_timeout")

server_malformed_headers = counter(
    "aio_request_server_malformed_headers_total",
    "Incoming X-Request-Timeout / X-Request-Priority values that were ignored as malformed.",
    "header",
    MALFORMED_HEADERS,
)
server_rejected = counter(
    "aio_request_server_rejected_total",
    "Requests answered 408 without running the view: deadline already expired, or below the low-timeout threshold.",
    "reason",
    REJECT_REASONS,
)
server_cancelled = counter(
    "aio_request_server_cancelled_total",
    "Async views cancelled at their deadline and answered 408 (CANCEL_ASYNC_VIEWS_ON_TIMEOUT).",
)
server_database_cancelled = counter(
    "aio_request_server_database_cancelled_total",
    "Requests answered 408 because the database cancelled a query at the deadline (DATABASE_STATEMENT_TIMEOUT).",
)

# Load shedding (AIO_REQUEST["SHEDDING"]): label values are exactly these.
SHED_PRIORITIES = ("high", "normal", "low")
SHED_REASONS = ("capacity", "queue_timeout", "deadline")  # server/shedding/limiter.py REASONS


def shed(priority: str, reason: str) -> None:
    """Count a request the middleware shed (answered 503) in ``aio_request_server_shed_total``."""
    with recording():  # inline (see deferred.recording)
        server_shed.labels(priority, reason).inc()


server_latency = family(
    "Histogram",
    "aio_request_server_latency",
    "Duration of HTTP server requests.",
    ("request_client", "request_method", "request_path", "response_status"),
    buckets=BUCKETS,
)
server_shed = family(
    "Counter",
    "aio_request_server_shed_total",
    "Requests answered 503 by load shedding, by priority and reason (capacity, deadline).",
    ("priority", "reason"),
)
for _priority in SHED_PRIORITIES:  # exported at 0 from the start, as the other server counters
    for _reason in SHED_REASONS:
        server_shed.labels(_priority, _reason)


def _gauge(name: str, documentation: str) -> Child:
    """An unlabelled gauge summed over a server's live workers (multiprocess mode)."""
    if _prometheus is None:
        return _NO_OP
    gauge: Child = _prometheus.Gauge(name, documentation, multiprocess_mode="livesum")
    return gauge


shedding_limit = _gauge(
    "aio_request_server_concurrency_limit",
    "Requests this process serves at once with load shedding on: fixed or learned from latency.",
)
shedding_queue_length = family(
    "Gauge",
    "aio_request_server_queue_length",
    "Requests waiting for a slot under load shedding, by priority.",
    ("priority",),
    multiprocess_mode="livesum",
)
shedding_queue_wait = family(
    "Histogram",
    "aio_request_server_queue_wait_seconds",
    "Time requests that waited for a slot under load shedding waited before being served, by priority.",
    ("priority",),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
for _priority in SHED_PRIORITIES:
    shedding_queue_length.labels(_priority)
    shedding_queue_wait.labels(_priority)


def shedding_waited(priority: str, seconds: float) -> None:
    """A request waited ``seconds`` for a slot and was served."""
    with recording():
        shedding_queue_wait.labels(priority).observe(seconds)


# PriorityThreadWorker: gunicorn's own queue, where requests wait for a thread before Django sees them.
thread_queue_length = family(
    "Gauge",
    "aio_request_server_thread_queue_length",
    "Requests waiting for a thread in PriorityThreadWorker's queue (gunicorn), by the priority they queued with.",
    ("priority",),
    multiprocess_mode="livesum",
)
thread_queue_wait = family(
    "Histogram",
    "aio_request_server_thread_queue_wait_seconds",
    "Time requests waited for a thread in PriorityThreadWorker's queue (gunicorn), by the priority they queued with.",
    ("priority",),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
for _priority in SHED_PRIORITIES:
    thread_queue_length.labels(_priority)
    thread_queue_wait.labels(_priority)


# The server side: calling services named in X-Service-Name.

MAX_SERVICE_NAMES = 100  # distinct calling-service names kept without KNOWN_SERVICES, fleet-wide
MAX_SERVICE_NAME_LENGTH = h.MAX_SERVICE_NAME_LENGTH
UNKNOWN_SERVICE = "unknown"  # no X-Service-Name (aio-request's label for it too)
OTHER_SERVICE = "other"
_services: ServiceNames | None = None  # made at first use: PROMETHEUS_MULTIPROC_DIR is read then
_services_lock = threading.Lock()


_RESERVED = frozenset((OTHER_SERVICE, UNKNOWN_SERVICE))


def service_label(raw: str | None, known: frozenset[str] | None) -> str:
    """The ``request_client`` label for an ``X-Service-Name`` value: lower-cased, from a bounded set.

    With ``known`` (``AIO_REQUEST["KNOWN_SERVICES"]``, lower-cased) other names are ``other``;
    without, the first :data:`MAX_SERVICE_NAMES` distinct names are kept and later ones are
    ``other``: the first of the whole fleet in multiprocess mode (shared through
    ``PROMETHEUS_MULTIPROC_DIR``, see service_names.py), so recycled workers add none.
    """
    global _services
    if raw is None:
        return UNKNOWN_SERVICE
    name = h.service_name(raw)  # the name the priority policy judges by
    if name is None:
        return OTHER_SERVICE
    if known is not None:
        return name if name in known else OTHER_SERVICE
    if len(name) > MAX_SERVICE_NAME_LENGTH or not name.isprintable() or name in _RESERVED:
        # "unknown" and "other" are labels of their own already: admitted, a peer so named took one
        # of the fleet's slots for real names (a review: 98 named labels of 100).
        return OTHER_SERVICE
    services = _services
    if services is None:
        with _services_lock:
            if _services is None:
                _services = service_names.for_this_process(MAX_SERVICE_NAMES)
            services = _services
    return name if services.admit(name) else OTHER_SERVICE


_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"))


def method_label(method: str | None) -> str:
    return method if method in _METHODS else "other"


#: ``request_path`` of a request no URL pattern matched, or refused before URL resolution.
UNMATCHED_ROUTE = "<unmatched>"

#: One request through AioRequestMiddleware: raw X-Service-Name or None, method, URL pattern, status,
#: KNOWN_SERVICES or None, and seconds taken. Raw values: labels are made off the request path.
ServerObservation = tuple[str | None, str | None, str, int, frozenset[str] | None, float]


# The longest raw X-Service-Name kept as a key of the family's cache: one that could still be a name
# (white space around it is stripped). Longer ones, all "other", are labelled anew each time: kept,
# 4,096 names of 8 KB (what a peer may send, up to the server's limit on a header) held 32 MiB a process.
_CACHED_SERVICE_LENGTH = 2 * MAX_SERVICE_NAME_LENGTH


def _record_server(observation: ServerObservation) -> None:
    family = server_latency
    key = observation[:5]
    child = family.cached(key)
    if child is None:
        service, method, route, status, known, _ = observation
        values = (service_label(service, known), method_label(method), route, str(status))
        child = family.labels(*values)
        # Keys are the raw values: only short service names and the methods kept as labels (a peer
        # may send any token as its method) are cached; the route is the URLconf's, the rest small.
        if (service is None or len(service) <= _CACHED_SERVICE_LENGTH) and method in _METHODS:
            family.cache(key, child)
    child.observe(observation[5])


#: ``server_observations.add(observation)`` records it in ``aio_request_server_latency`` off the
#: request path, within deferred.INTERVAL (see that module).
server_observations = DeferredObservations(_record_server, name="server-latency")
