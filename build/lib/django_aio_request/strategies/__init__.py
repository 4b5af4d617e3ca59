from django_aio_request.strategies.base import RequestStrategy, ResponseWithVerdict, SendAttempt
from django_aio_request.strategies.method_based import SAFE_METHODS, MethodBasedStrategy, method_based_strategy
from django_aio_request.strategies.parallel import ParallelStrategy, parallel_strategy
from django_aio_request.strategies.retry_until_deadline import (
    RetryUntilDeadlineExpiredStrategy,
    retry_until_deadline_expired,
)
from django_aio_request.strategies.sequential import SequentialStrategy, sequential_strategy
from django_aio_request.strategies.single import SingleAttemptStrategy, single_attempt_strategy

__all__ = [
    "SAFE_METHODS",
    "MethodBasedStrategy",
    "ParallelStrategy",
    "RequestStrategy",
    "ResponseWithVerdict",
    "RetryUntilDeadlineExpiredStrategy",
    "SendAttempt",
    "SequentialStrategy",
    "SingleAttemptStrategy",
    "method_based_strategy",
    "parallel_strategy",
    "retry_until_deadline_expired",
    "sequential_strategy",
    "single_attempt_strategy",
]
