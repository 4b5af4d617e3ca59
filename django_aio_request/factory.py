import urllib.parse

from . import metrics as _metrics
from .circuit_breaker import CircuitBreaker
from .classifier import DefaultResponseClassifier, ResponseClassifier
from .client import Client
from .pipeline import (
    CircuitBreakerModule,
    LowTimeoutModule,
    RequestEnricher,
    RequestModule,
    TransportModule,
    build_pipeline,
)
from .priority import Priority
from .requests_transport import RequestsTransport
from .response import Response
from .strategies import MethodBasedStrategy, RequestStrategy, method_based_strategy
from .transport import Transport
from .workers import WorkerPool

DEFAULT_MAX_WORKERS = 32


def validate_endpoint(endpoint: str) -> str:
    """Return ``endpoint`` if it is an absolute http(s) URL with a host, else raise ValueError."""
    if not isinstance(endpoint, str):
        raise ValueError(f"endpoint must be a string URL, not {type(endpoint).__name__}")
    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"endpoint must be an absolute http:// or https:// URL with a host, not {endpoint!r}")
    try:
        _ = parts.port
    except ValueError as error:
        raise ValueError(f"endpoint {endpoint!r} has an invalid port: {error}") from None
    return endpoint


def setup(
    *,
    endpoint: str,
    transport: Transport | None = None,
    safe_method_strategy: RequestStrategy | None = None,
    unsafe_method_strategy: RequestStrategy | None = None,
    response_classifier: ResponseClassifier | None = None,
    timeout: float = 20.0,
    priority: Priority = Priority.NORMAL,
    low_timeout_threshold: float = 0.005,
    emit_system_headers: bool = True,
    request_enricher: RequestEnricher | None = None,
    circuit_breaker: CircuitBreaker[str, Response] | None = None,
    service_name: str | None = None,
    max_workers: int = DEFAULT_MAX_WORKERS,
    metrics: bool = True,
) -> Client:
    """Build a client for ``endpoint``.

    Safe methods use ``safe_method_strategy`` (default: 3 sequential attempts), the others
    ``unsafe_method_strategy`` (default: one attempt). ``max_workers`` bounds the threads that run
    parallel (hedged) attempts. Without a ``transport``, a :class:`RequestsTransport` is made with a
    connection pool as large as the attempts it lets run at once. ``metrics``: record the client's
    Prometheus metrics (docs/metrics.md; nothing is recorded without prometheus-client anyway).
    """
    validate_endpoint(endpoint)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < float("inf"):
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    if low_timeout_threshold < 0:
        raise ValueError(f"low_timeout_threshold must be >= 0, not {low_timeout_threshold!r}")
    classifier = response_classifier or DefaultResponseClassifier()
    strategy: MethodBasedStrategy = method_based_strategy(safe=safe_method_strategy, unsafe=unsafe_method_strategy)
    recorder = _metrics.ClientMetrics(endpoint) if metrics and _metrics.ENABLED else None
    modules: list[RequestModule] = [LowTimeoutModule(low_timeout_threshold, recorder)]
    if circuit_breaker is not None:
        modules.append(CircuitBreakerModule(circuit_breaker, classifier))
        if recorder is not None:
            _metrics.watch_breaker(circuit_breaker, endpoint)
    transport = transport if transport is not None else RequestsTransport()
    modules.append(
        TransportModule(
            transport,
            emit_system_headers=emit_system_headers,
            request_enricher=request_enricher,
            service_name=service_name,
            metrics=recorder,
        )
    )
    return Client(
        endpoint=endpoint,
        strategy=strategy,
        classifier=classifier,
        timeout=float(timeout),
        priority=Priority(priority),
        pipeline=build_pipeline(modules),
        workers=WorkerPool(max_workers),
        transport=transport,
        metrics=recorder,
        circuit_breaker=circuit_breaker,
    )
