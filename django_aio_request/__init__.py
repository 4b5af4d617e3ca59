"""Service-to-service HTTP calls for Django, wire-compatible with aio-request.

Everything importable here except ``clients`` and ``timeout`` is the core, which does not import
Django; ``clients`` (named clients from settings) is loaded on first use.
"""

from typing import TYPE_CHECKING, Any

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
from django_aio_request.core.cancellation import Cancellation
from django_aio_request.core.classifier import DefaultResponseClassifier, ResponseClassifier, ResponseVerdict
from django_aio_request.core.client import Client
from django_aio_request.core.client_setup import setup
from django_aio_request.core.context import Context, get_context, set_context
from django_aio_request.core.deadline import Deadline
from django_aio_request.core.priority import Priority
from django_aio_request.core.request import (
    Request,
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

if TYPE_CHECKING:
    from django_aio_request.named_clients import ClientsHandler
    from django_aio_request.server.view_timeout import timeout as timeout

    clients: ClientsHandler

__all__ = [
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
    "MemoryCircuitStore",
    "Override",
    "PercentileDelaysProvider",
    "Priority",
    "Request",
    "RequestAttemptDelaysProvider",
    "RequestStrategy",
    "RequestsTransport",
    "Response",
    "ResponseClassifier",
    "ResponseVerdict",
    "RetryBudget",
    "Transport",
    "UnexpectedContentTypeError",
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


def __getattr__(name: str) -> Any:
    if name == "clients":
        from django_aio_request.named_clients import clients

        return clients
    if name == "timeout":
        from django_aio_request.server.view_timeout import timeout

        return timeout
    raise AttributeError(f"module 'django_aio_request' has no attribute {name!r}")
