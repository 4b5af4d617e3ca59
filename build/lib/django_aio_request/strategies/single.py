from django_aio_request.core.attempt_threads import AttemptThreadPool
from django_aio_request.core.deadline import Deadline
from django_aio_request.core.priority import Priority
from django_aio_request.core.request import Request
from django_aio_request.strategies.base import RequestStrategy, ResponseWithVerdict, SendAttempt, first_attempt


class SingleAttemptStrategy(RequestStrategy):
    def request(
        self, send: SendAttempt, workers: AttemptThreadPool, request: Request, deadline: Deadline, priority: Priority
    ) -> ResponseWithVerdict:
        return first_attempt(send(request, deadline, priority, 0, None))

    def __repr__(self) -> str:
        return "<SingleAttemptStrategy>"


def single_attempt_strategy() -> RequestStrategy:
    return SingleAttemptStrategy()
