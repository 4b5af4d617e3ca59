from .base import RequestStrategy, ResponseWithVerdict, SendAttempt
from .method_based import SAFE_METHODS, MethodBasedStrategy, method_based_strategy
from .parallel import ParallelStrategy, parallel_strategy
from .retry_until_deadline import RetryUntilDeadlineExpiredStrategy, retry_until_deadline_expired
from .sequential import SequentialStrategy, sequential_strategy
from .single import SingleAttemptStrategy, single_attempt_strategy

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
