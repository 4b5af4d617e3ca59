"""Service-to-service HTTP calls for Django, wire-compatible with aio-request.

Everything importable here except ``clients``, ``timeout`` and the errors of settings
(``InvalidSettings``, ``UnknownClientError``) is the core, which does not import Django; ``clients``
(named clients from settings) is loaded on first use.

Each name is imported when first asked for, so ``import django_aio_request`` imports nothing else:
the pytest plugin (``django_aio_request.pytest_plugin``), which pytest loads in every project of an
environment where the package is installed, imported the whole package and with it requests and
prometheus_client, registering this package's metrics in unrelated projects' tests (and failing
their runs when ``PROMETHEUS_MULTIPROC_DIR`` named a directory their conftest makes).
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django_aio_request.breaker.circuit_breaker import (
        CircuitBreaker,
        CircuitSnapshot,
        CircuitState,
        CircuitStore,
        CircuitTransition,
        DefaultCircuitBreaker,
        MemoryCircuitStore,
        Override,
    )
    from django_aio_request.conf.current import InvalidSettings
    from django_aio_request.core.cancellation import Cancellation
    from django_aio_request.core.classifier import DefaultResponseClassifier, ResponseClassifier, ResponseVerdict
    from django_aio_request.core.client import Client
    from django_aio_request.core.client_setup import setup
    from django_aio_request.core.context import Context, get_context, set_context
    from django_aio_request.core.deadline import Deadline
    from django_aio_request.core.event_loop import BlockingCallWarning
    from django_aio_request.core.priority import Priority
    from django_aio_request.core.request import (
        Request,
        RequestOptions,
        delete,
        get,
        patch,
        patch_json,
        post,
        post_json,
        put,
        put_json,
        request,
        request_json,
    )
    from django_aio_request.core.response import EmptyResponse, Response, UnexpectedContentTypeError, UnsentResponse
    from django_aio_request.core.retry_budget import RetryBudget
    from django_aio_request.named_clients import ClientsHandler, UnknownClientError
    from django_aio_request.server.view_timeout import timeout as timeout
    from django_aio_request.strategies import (
        RequestStrategy,
        method_based_strategy,
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

    clients: ClientsHandler

_LAZY = {
    "BlockingCallWarning": "django_aio_request.core.event_loop",
    "Cancellation": "django_aio_request.core.cancellation",
    "CircuitBreaker": "django_aio_request.breaker.circuit_breaker",
    "CircuitSnapshot": "django_aio_request.breaker.circuit_breaker",
    "CircuitState": "django_aio_request.breaker.circuit_breaker",
    "CircuitStore": "django_aio_request.breaker.circuit_breaker",
    "CircuitTransition": "django_aio_request.breaker.circuit_breaker",
    "Client": "django_aio_request.core.client",
    "Context": "django_aio_request.core.context",
    "Deadline": "django_aio_request.core.deadline",
    "DeadlineProvider": "django_aio_request.strategies.deadline_providers",
    "DefaultCircuitBreaker": "django_aio_request.breaker.circuit_breaker",
    "DefaultResponseClassifier": "django_aio_request.core.classifier",
    "DelaysProvider": "django_aio_request.strategies.delays",
    "EmptyResponse": "django_aio_request.core.response",
    "InvalidSettings": "django_aio_request.conf.current",
    "MemoryCircuitStore": "django_aio_request.breaker.circuit_breaker",
    "Override": "django_aio_request.breaker.circuit_breaker",
    "PercentileDelaysProvider": "django_aio_request.strategies.percentile_delays",
    "Priority": "django_aio_request.core.priority",
    "Request": "django_aio_request.core.request",
    "RequestOptions": "django_aio_request.core.request",
    "RequestAttemptDelaysProvider": "django_aio_request.strategies.delays",
    "RequestStrategy": "django_aio_request.strategies",
    "RequestsTransport": "django_aio_request.transport.requests_transport",
    "Response": "django_aio_request.core.response",
    "ResponseClassifier": "django_aio_request.core.classifier",
    "ResponseVerdict": "django_aio_request.core.classifier",
    "RetryBudget": "django_aio_request.core.retry_budget",
    "Transport": "django_aio_request.transport.base",
    "UnexpectedContentTypeError": "django_aio_request.core.response",
    "UnknownClientError": "django_aio_request.named_clients",
    "UnsentResponse": "django_aio_request.core.response",
    "constant_delays": "django_aio_request.strategies.delays",
    "delete": "django_aio_request.core.request",
    "get": "django_aio_request.core.request",
    "get_context": "django_aio_request.core.context",
    "linear_backoff_delays": "django_aio_request.strategies.delays",
    "method_based_strategy": "django_aio_request.strategies",
    "parallel_strategy": "django_aio_request.strategies",
    "pass_deadline_through": "django_aio_request.strategies.deadline_providers",
    "patch": "django_aio_request.core.request",
    "patch_json": "django_aio_request.core.request",
    "post": "django_aio_request.core.request",
    "post_json": "django_aio_request.core.request",
    "put": "django_aio_request.core.request",
    "put_json": "django_aio_request.core.request",
    "request": "django_aio_request.core.request",
    "request_json": "django_aio_request.core.request",
    "retry_until_deadline_expired": "django_aio_request.strategies",
    "sequential_strategy": "django_aio_request.strategies",
    "set_context": "django_aio_request.core.context",
    "setup": "django_aio_request.core.client_setup",
    "single_attempt_strategy": "django_aio_request.strategies",
    "split_deadline_between_attempts": "django_aio_request.strategies.deadline_providers",
    "clients": "django_aio_request.named_clients",
    "timeout": "django_aio_request.server.view_timeout",
}

__all__ = [
    "BlockingCallWarning",
    "Cancellation",
    "CircuitBreaker",
    "CircuitSnapshot",
    "CircuitState",
    "CircuitStore",
    "CircuitTransition",
    "Client",
    "Context",
    "Deadline",
    "DeadlineProvider",
    "DefaultCircuitBreaker",
    "DefaultResponseClassifier",
    "DelaysProvider",
    "EmptyResponse",
    "InvalidSettings",
    "MemoryCircuitStore",
    "Override",
    "PercentileDelaysProvider",
    "Priority",
    "Request",
    "RequestAttemptDelaysProvider",
    "RequestOptions",
    "RequestStrategy",
    "RequestsTransport",
    "Response",
    "ResponseClassifier",
    "ResponseVerdict",
    "RetryBudget",
    "Transport",
    "UnexpectedContentTypeError",
    "UnknownClientError",
    "UnsentResponse",
    "clients",
    "constant_delays",
    "delete",
    "get",
    "get_context",
    "linear_backoff_delays",
    "method_based_strategy",
    "parallel_strategy",
    "pass_deadline_through",
    "patch",
    "patch_json",
    "post",
    "post_json",
    "put",
    "put_json",
    "request",
    "request_json",
    "retry_until_deadline_expired",
    "sequential_strategy",
    "set_context",
    "setup",
    "single_attempt_strategy",
    "split_deadline_between_attempts",
    "timeout",
]


_requests_imported = False


def __getattr__(name: str) -> Any:
    global _requests_imported  # set once, by whichever thread gets there first
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'django_aio_request' has no attribute {name!r}")
    if not _requests_imported:
        # requests whole, first: another thread importing it waits for it to finish (its module lock).
        # Without, threads using public names for the first time at once imported requests' modules
        # in different orders through ours, and one got _DeadlockError on requests.structures (CI,
        # twice in a row on a slow VM).
        importlib.import_module("requests")
        _requests_imported = True
    # The packages on the way first, outermost first: importing ``strategies.delays`` takes that
    # module's import lock and then imports ``strategies``, whose ``__init__`` imports ``delays``. A
    # thread importing ``strategies`` for another name meanwhile holds the locks the other way round,
    # and one of the two got ``_DeadlockError`` (23 runs of 40 with a thread per public name).
    parts = module.split(".")
    for end in range(2, len(parts)):
        importlib.import_module(".".join(parts[:end]))
    value = getattr(importlib.import_module(module), name)
    if name != "clients":  # clients is looked up each time: named_clients may be reloaded in tests
        globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
