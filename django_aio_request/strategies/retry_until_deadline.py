import time

from ..deadline import Deadline
from ..delays import DelaysProvider, RequestAttemptDelaysProvider, as_request_delays, linear_backoff_delays
from ..priority import Priority
from ..request import Request
from ..workers import WorkerPool
from .base import RequestStrategy, ResponseWithVerdict, SendAttempt


class RetryUntilDeadlineExpiredStrategy(RequestStrategy):
    """Runs ``strategy`` again and again, ``delays(k)`` apart, until it is accepted or time is up."""

    def __init__(
        self, strategy: RequestStrategy, delays_provider: DelaysProvider | RequestAttemptDelaysProvider
    ) -> None:
        self.strategy = strategy
        self.delays = as_request_delays(delays_provider)

    def request(
        self, send: SendAttempt, workers: WorkerPool, request: Request, deadline: Deadline, priority: Priority
    ) -> ResponseWithVerdict:
        round_ = 0
        while True:
            result = self.strategy.request(send, workers, request, deadline, priority)
            if result.accepted or deadline.expired:
                return result
            round_ += 1
            delay = self.delays(request, round_)
            if deadline.timeout <= delay:
                return result
            time.sleep(delay)

    def __repr__(self) -> str:
        return f"<RetryUntilDeadlineExpiredStrategy {self.strategy!r}>"


def retry_until_deadline_expired(
    strategy: RequestStrategy,
    *,
    delays_provider: DelaysProvider | RequestAttemptDelaysProvider | None = None,
) -> RequestStrategy:
    return RetryUntilDeadlineExpiredStrategy(
        strategy,
        delays_provider if delays_provider is not None else linear_backoff_delays(),
    )
