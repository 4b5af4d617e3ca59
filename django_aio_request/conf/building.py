"""Clients made from validated settings (``schema.ClientSpec``): strategies, delays, breaker, budget.

Each call makes new objects with fresh state; the registry (``named_clients.py``) keeps one client
per name per process.
"""

from collections.abc import Mapping
from typing import Any

from django_aio_request.breaker.circuit_breaker import CircuitStore, DefaultCircuitBreaker
from django_aio_request.conf.schema import LOCAL_BREAKER_STATE, ClientSpec, DelaysSpec, StrategySpec
from django_aio_request.core.client import Client
from django_aio_request.core.client_setup import setup
from django_aio_request.core.retry_budget import RetryBudget
from django_aio_request.strategies import (
    RequestStrategy,
    parallel_strategy,
    retry_until_deadline_expired,
    sequential_strategy,
    single_attempt_strategy,
)
from django_aio_request.strategies.deadline_providers import (
    DeadlineProvider,
    pass_deadline_through,
    split_deadline_between_attempts,
)
from django_aio_request.strategies.delays import (
    DelaysProvider,
    RequestAttemptDelaysProvider,
    constant_delays,
    linear_backoff_delays,
)
from django_aio_request.strategies.percentile_delays import PercentileDelaysProvider
from django_aio_request.transport.base import Transport
from django_aio_request.transport.requests_transport import RequestsTransport


def build_delays(spec: DelaysSpec | None) -> DelaysProvider | RequestAttemptDelaysProvider:
    if spec is None:
        return linear_backoff_delays()
    o = spec.options
    if spec.name == "constant":
        return constant_delays(delay=o["DELAY"])
    if spec.name == "linear_backoff":
        return linear_backoff_delays(
            min_delay_seconds=o["MIN_DELAY_SECONDS"], delay_multiplier=o["DELAY_MULTIPLIER"], jitter=o["JITTER"]
        )
    return PercentileDelaysProvider(
        percentile=o["PERCENTILE"],
        min_delay_seconds=o["MIN_DELAY_SECONDS"],
        max_delay_seconds=o["MAX_DELAY_SECONDS"],
        window_seconds=o["WINDOW_SECONDS"],
        saturation_ratio=o["SATURATION_RATIO"] or None,
    )


def build_strategy(spec: StrategySpec) -> RequestStrategy:
    if spec.name == "single":
        return single_attempt_strategy()
    if spec.name == "retry_until_deadline_expired":
        assert spec.inner is not None  # the schema requires STRATEGY
        return retry_until_deadline_expired(build_strategy(spec.inner), delays_provider=build_delays(spec.delays))
    if spec.name == "parallel":
        return parallel_strategy(
            attempts_count=spec.attempts_count,
            delays_provider=build_delays(spec.delays),
            stragglers_only=spec.stragglers_only,
        )
    deadlines: DeadlineProvider = (
        split_deadline_between_attempts(attempts_count_to_split=spec.attempts_count_to_split)
        if spec.split_deadline
        else pass_deadline_through()
    )
    return sequential_strategy(
        attempts_count=spec.attempts_count, delays_provider=build_delays(spec.delays), deadline_provider=deadlines
    )


def build_retry_budget(value: dict[str, float] | bool) -> RetryBudget | None:
    """A new budget (each client has its own) from a validated ``RETRY_BUDGET``."""
    if value is False:
        return None
    if value is True:
        return RetryBudget()
    return RetryBudget(
        ratio=value["RATIO"], min_per_second=value["MIN_PER_SECOND"], window_seconds=value["WINDOW_SECONDS"]
    )


def build_circuit_breaker(spec: ClientSpec) -> DefaultCircuitBreaker[str, Any] | None:
    """The client's breaker, counting in this process or, with a cache alias, in that shared cache."""
    if spec.circuit_breaker is None:
        return None
    store: CircuitStore[str] | None = None
    if spec.circuit_breaker_state != LOCAL_BREAKER_STATE:
        from django.core.cache import caches

        from django_aio_request.breaker.cache_store import CacheCircuitStore

        alias = spec.circuit_breaker_state
        store = CacheCircuitStore(
            alias,
            connect=lambda: caches.create_connection(alias),
            namespace=spec.name,
            disconnect=disconnect_cache,
            location=_location(alias),
        )
    return DefaultCircuitBreaker(store=store, **spec.circuit_breaker)


def _location(alias: str) -> object:
    """The ``LOCATION`` of cache ``alias`` in ``CACHES``, or None (read where the settings may be broken)."""
    from django.conf import settings

    caches = getattr(settings, "CACHES", {})
    entry = caches.get(alias) if isinstance(caches, Mapping) else None
    return entry.get("LOCATION") if isinstance(entry, Mapping) else None


def disconnect_cache(backend: Any) -> None:
    """Close the connections of a cache backend made by ``caches.create_connection()`` for one store.

    Django's ``RedisCache.close()`` does nothing (Django keeps a process's pools for its life); a
    backend made for one store has pools of its own, disconnected here."""
    backend.close()
    client = backend.__dict__.get("_cache")  # RedisCache's client, if it was made (a cached_property)
    pools = getattr(client, "_pools", None)
    if isinstance(pools, dict):
        for pool in list(pools.values()):
            pool.disconnect()


def build_client(spec: ClientSpec, service_name: str | None, transport: Transport | None = None) -> Client:
    """A new client for ``spec``, with fresh state (connections, breaker, budget, learned delays);
    ``transport`` replaces the one the settings describe (``django_aio_request.testing``)."""
    o = spec.options
    made: dict[str, Any] = {}
    if spec.safe_method_strategy is not None:
        made["safe_method_strategy"] = build_strategy(spec.safe_method_strategy)
    if spec.unsafe_method_strategy is not None:
        made["unsafe_method_strategy"] = build_strategy(spec.unsafe_method_strategy)
    if spec.response_classifier is not None:
        made["response_classifier"] = spec.response_classifier()
    return setup(
        endpoint=spec.endpoint,
        transport=transport
        or RequestsTransport(
            max_connections=o["MAX_CONNECTIONS"],
            connect_retries=o["CONNECT_RETRIES"],
            max_response_size=o["MAX_RESPONSE_SIZE"],
        ),
        timeout=o["TIMEOUT"],
        priority=o["PRIORITY"],
        low_timeout_threshold=o["LOW_TIMEOUT_THRESHOLD"],
        emit_system_headers=o["EMIT_SYSTEM_HEADERS"],
        max_workers=o["MAX_WORKERS"],
        request_enricher=o["REQUEST_ENRICHER"],
        service_name=service_name,
        retry_budget=build_retry_budget(o["RETRY_BUDGET"]),
        hedge_priority=o["HEDGE_PRIORITY"],
        circuit_breaker=build_circuit_breaker(spec),
        **made,
    )
