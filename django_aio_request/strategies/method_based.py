from django_aio_request.core.attempt_threads import AttemptThreadPool
from django_aio_request.core.deadline import Deadline
from django_aio_request.core.priority import Priority
from django_aio_request.core.request import Request
from django_aio_request.strategies.base import RequestStrategy, ResponseWithVerdict, SendAttempt, claim_strategy
from django_aio_request.strategies.sequential import sequential_strategy
from django_aio_request.strategies.single import single_attempt_strategy

#: Methods that do not change anything on the server (RFC 9110 9.2.1): retrying them is harmless.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


class MethodBasedStrategy(RequestStrategy):
    """One strategy for safe methods, another for the rest."""

    def __init__(self, *, safe: RequestStrategy, unsafe: RequestStrategy) -> None:
        self.safe = safe
        self.unsafe = unsafe

    def claim(self, endpoint: str) -> None:
        claim_strategy(self.safe, endpoint)
        claim_strategy(self.unsafe, endpoint)

    def for_method(self, method: str) -> RequestStrategy:
        return self.safe if method in SAFE_METHODS else self.unsafe

    def request(
        self, send: SendAttempt, workers: AttemptThreadPool, request: Request, deadline: Deadline, priority: Priority
    ) -> ResponseWithVerdict:
        return self.for_method(request.method).request(send, workers, request, deadline, priority)

    def __repr__(self) -> str:
        return f"<MethodBasedStrategy safe={self.safe!r} unsafe={self.unsafe!r}>"


def method_based_strategy(
    *, safe: RequestStrategy | None = None, unsafe: RequestStrategy | None = None
) -> MethodBasedStrategy:
    """The default: safe methods sequential with 3 attempts, unsafe methods a single attempt."""
    return MethodBasedStrategy(
        safe=safe if safe is not None else sequential_strategy(attempts_count=3),
        unsafe=unsafe if unsafe is not None else single_attempt_strategy(),
    )
