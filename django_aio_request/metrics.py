"""Prometheus metrics; no-ops when ``prometheus_client`` is not installed (``pip install django-aio-request[metrics]``).

The metrics live on prometheus_client's default registry, so django-prometheus's ``/metrics`` view
(or ``prometheus_client.start_http_server``) exposes them. Every label value comes from a fixed set.
"""

from typing import Any, Protocol

from . import headers as h


class Counter(Protocol):
    def labels(self, *values: str, **labels: str) -> "Counter": ...

    def inc(self, amount: float = 1) -> None: ...


class _NoOpCounter:
    def labels(self, *values: str, **labels: str) -> "_NoOpCounter":
        return self

    def inc(self, amount: float = 1) -> None:
        pass


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
