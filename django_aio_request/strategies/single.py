from ..deadline import Deadline
from ..priority import Priority
from ..request import Request
from ..workers import WorkerPool
from .base import RequestStrategy, ResponseWithVerdict, SendAttempt, first_attempt


class SingleAttemptStrategy(RequestStrategy):
    def request(
        self, send: SendAttempt, workers: WorkerPool, request: Request, deadline: Deadline, priority: Priority
    ) -> ResponseWithVerdict:
        return first_attempt(send(request, deadline, priority, 0, None))

    def __repr__(self) -> str:
        return "<SingleAttemptStrategy>"


def single_attempt_strategy() -> RequestStrategy:
    return SingleAttemptStrategy()
