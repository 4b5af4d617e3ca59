"""The client's metrics: call and transport latency, attempts, winning attempts, budget and deadline refusals.

Every label value comes from a bounded set: configured endpoints, request path templates, methods,
status codes and attempt numbers (``5+`` from the fifth on). See docs/metrics.md.
"""

from typing import Any

from django_aio_request.metrics.deferred import DeferredObservations, recording
from django_aio_request.metrics.prometheus import BUCKETS, ENABLED, family

CLIENT = ("request_endpoint", "request_method")
client_latency = family(
    "Histogram",
    "aio_request_latency",
    "Duration of client requests.",
    (*CLIENT, "request_path", "response_status", "circuit_breaker"),
    buckets=BUCKETS,
)
transport_latency = family(
    "Histogram",
    "aio_request_transport_latency",
    "Duration of transport requests.",
    (*CLIENT, "request_path", "response_status"),
    buckets=BUCKETS,
)
client_attempts = family(
    "Counter",
    "aio_request_attempts_total",
    "Attempts started by client calls, by attempt number (0: the first; retries and hedges above).",
    (*CLIENT, "attempt"),
)
client_retries = family(
    "Counter",
    "aio_request_retries_total",
    "Attempts beyond a call's first (retries and hedges).",
    CLIENT,
)
client_winning_attempt = family(
    "Counter",
    "aio_request_winning_attempt_total",
    "Client calls by the attempt whose response the call returned (0: the first).",
    (*CLIENT, "attempt"),
)
client_deadline_rejected = family(
    "Counter",
    "aio_request_deadline_rejected_total",
    "Attempts answered 408 without sending: deadline expired, or less time left than LOW_TIMEOUT_THRESHOLD.",
    (*CLIENT, "reason"),
)
client_retry_budget_exhausted = family(
    "Counter",
    "aio_request_retry_budget_exhausted_total",
    "Extra attempts (retries and hedges) not sent because the client's retry budget was spent.",
    ("request_endpoint",),
)
#: Every family above: each is labelled by endpoint.
FAMILIES = (
    client_latency,
    transport_latency,
    client_attempts,
    client_retries,
    client_winning_attempt,
    client_deadline_rejected,
    client_retry_budget_exhausted,
)

#: Why an attempt was answered 408 without sending (``deadline_rejected``'s reasons).
DEADLINE_REASONS = ("expired", "low_timeout", "no_connection")
#: The methods of the request helpers (``get()``, ``post()``...): their deadline refusals, retries
#: and winning attempts are exported at 0 from a client's setup, since a counter born at 1 hides its
#: first event from ``increase()``.
#: A call may use any method: another one's series is made at its first refusal.
EXPORTED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")

MAX_ATTEMPT_LABEL = 5  # attempt numbers from this one on share the label "5+"
_ATTEMPTS = (*(str(n) for n in range(MAX_ATTEMPT_LABEL)), f"{MAX_ATTEMPT_LABEL}+")


def attempt_label(number: int) -> str:
    return _ATTEMPTS[min(number, MAX_ATTEMPT_LABEL)]


def export_at_zero(endpoint: str, *, retry_budget: bool = False) -> None:
    """Export the counters of a client of ``endpoint`` at 0, before it records anything.

    increase() and rate() then see the first refusal, the first retry or hedge, the first call a
    later attempt answered (a series born at 1 hides its first event), and the first calls (attempt
    "0", what the extra-load query divides by: born with the first call, a burst of calls before its
    first scrape went unseen while its retries counted, and the query read 7.0 where 0.5 was true, a
    review). Not the attempts after the first, which aio_request_retries_total counts (half the cost
    a client). ``retry_budget``: its refusals too. Made by every client's setup, and for the named
    clients of a service as it starts, before any is made (startup_metrics.py). Idempotent."""
    if not ENABLED:
        return
    with recording():  # a fork meanwhile must not copy prometheus-client's lock held (metrics/deferred.py)
        for method in EXPORTED_METHODS:
            for reason in DEADLINE_REASONS:
                client_deadline_rejected.labels(endpoint, method, reason)
            client_retries.labels(endpoint, method)
            client_attempts.labels(endpoint, method, _ATTEMPTS[0])
            for attempt in _ATTEMPTS:
                client_winning_attempt.labels(endpoint, method, attempt)
        if retry_budget:
            client_retry_budget_exhausted.labels(endpoint)


class ClientMetrics:
    """The metrics of one client (one endpoint label), called by the client and its pipeline.

    What every call records (its latency, its attempts, each attempt's transport latency) is queued
    and recorded off the caller's thread, as the server's latency is (see deferred.py):
    recorded inline, these cost about 20 µs a call.
    """

    __slots__ = ("endpoint",)

    def __init__(self, endpoint: str, *, retry_budget: bool = False) -> None:
        self.endpoint = endpoint
        export_at_zero(endpoint, retry_budget=retry_budget)

    def call(self, method: str, path: str, status: int, *, circuit_breaker: bool, attempt: int, elapsed: float) -> None:
        _client_observations.add((_record_call, self.endpoint, method, path, status, circuit_breaker, attempt, elapsed))

    def attempt(self, method: str, number: int) -> None:
        _client_observations.add((_record_attempt, self.endpoint, method, number))

    def transport(self, method: str, path: str, status: int, elapsed: float) -> None:
        _client_observations.add((_record_transport, self.endpoint, method, path, status, elapsed))

    def deadline_rejected(self, method: str, reason: str) -> None:
        with recording():  # inline: rare, and a fork must not copy it half done (see deferred.py)
            client_deadline_rejected.labels(self.endpoint, method, reason).inc()

    def budget_exhausted(self) -> None:
        with recording():
            client_retry_budget_exhausted.labels(self.endpoint).inc()


def path_label(template: str) -> str:
    """``request_path`` of a URL template: its path, without a query written into it
    (``get("status/?code=201")``), as aio-request labels it (yarl's ``url.path``); kept, each query
    string made a series of its own, and an aio-request service's dashboards another label. (A
    template with a fragment is refused as the request is made.)"""
    return template.partition("?")[0] if "?" in template else template


def _record_call(observation: tuple[Any, ...]) -> None:
    _, endpoint, method, path, status, circuit_breaker, attempt, elapsed = observation
    client_latency.labels(endpoint, method, path_label(path), str(status), str(circuit_breaker)).observe(elapsed)
    client_winning_attempt.labels(endpoint, method, attempt_label(attempt)).inc()


def _record_attempt(observation: tuple[Any, ...]) -> None:
    _, endpoint, method, number = observation
    client_attempts.labels(endpoint, method, attempt_label(number)).inc()
    if number:
        client_retries.labels(endpoint, method).inc()


def _record_transport(observation: tuple[Any, ...]) -> None:
    _, endpoint, method, path, status, elapsed = observation
    transport_latency.labels(endpoint, method, path_label(path), str(status)).observe(elapsed)


def _record(observation: tuple[Any, ...]) -> None:
    """An observation is ``(record_function, *values)``; the function unpacks it."""
    observation[0](observation)


_client_observations: DeferredObservations[tuple[Any, ...]] = DeferredObservations(_record, name="client-metrics")
