"""Service-to-service HTTP calls for Django, wire-compatible with aio-request.

Everything importable here except ``clients`` and ``timeout`` is the core, which does not import
Django; ``clients`` (named clients from settings) is loaded on first use.
"""

from typing import TYPE_CHECKING, Any

from .adaptive_delays import PercentileDelaysProvider
from .cancellation import Cancellation
from .circuit_breaker import (
    CircuitBreaker,
    CircuitSnapshot,
    CircuitState,
    CircuitStore,
    CircuitTransition,
    DefaultCircuitBreaker,
    MemoryCircuitStore,
    Override,
)
from .classifier import DefaultResponseClassifier, ResponseClassifier, ResponseVerdict
from .client import Client
from .context import Context, get_context, set_context
from .deadline import Deadline
from .deadline_providers import DeadlineProvider, pass_deadline_through, split_deadline_between_attempts
from .delays import DelaysProvider, RequestAttemptDelaysProvider, constant_delays, linear_backoff_delays
from .factory import setup
from .priority import Priority
from .request import (
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
from .requests_transport import RequestsTransport
from .response import EmptyResponse, Response, UnexpectedContentTypeError
from .retry_budget import RetryBudget
from .strategies import (
    RequestStrategy,
    method_based_strategy,
    parallel_strategy,
    retry_until_deadline_expired,
    sequential_strategy,
    single_attempt_strategy,
)
from .transport import Transport

if TYPE_CHECKING:
    from .registry import ClientsHandler
    from .view_timeout import timeout as timeout

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
        from .registry import clients

        return clients
    if name == "timeout":
        from .view_timeout import timeout

        return timeout
    raise AttributeError(f"module 'django_aio_request' has no attribute {name!r}")
