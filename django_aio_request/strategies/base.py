import abc
import dataclasses
from collections.abc import Callable

from django_aio_request.core.attempt_threads import AttemptThreadPool
from django_aio_request.core.cancellation import Cancellation
from django_aio_request.core.classifier import ResponseVerdict
from django_aio_request.core.deadline import Deadline, too_little_to_send
from django_aio_request.core.priority import Priority
from django_aio_request.core.request import Request
from django_aio_request.core.response import Response


@dataclasses.dataclass(frozen=True, slots=True)
class ResponseWithVerdict:
    response: Response
    verdict: ResponseVerdict
    attempt: int = 0  # which attempt of the call produced it, 0 for the first

    @property
    def accepted(self) -> bool:
        return self.verdict is ResponseVerdict.ACCEPT


#: Sends one attempt through the client's pipeline: ``send(request, deadline, priority, attempt, cancellation)``.
#: It returns None, sending nothing, when the client's retry budget refuses an extra attempt
#: (``attempt > 0``: a retry or a hedge); a strategy then makes no more attempts. It never refuses
#: a call's first attempt (``attempt == 0``): see :func:`first_attempt`.
SendAttempt = Callable[[Request, Deadline, Priority, int, Cancellation | None], ResponseWithVerdict | None]


def first_attempt(result: ResponseWithVerdict | None) -> ResponseWithVerdict:
    """The result of a call's first attempt, which no retry budget refuses."""
    if result is None:
        raise RuntimeError("send() refused a call's first attempt: only attempts > 0 may be refused")
    return result


class RequestStrategy(abc.ABC):
    """Decides how many attempts a call makes, when, and which response it ends with."""

    @abc.abstractmethod
    def request(
        self, send: SendAttempt, workers: AttemptThreadPool, request: Request, deadline: Deadline, priority: Priority
    ) -> ResponseWithVerdict: ...

    def first_attempt_deadline(self, deadline: Deadline) -> Deadline:
        """The deadline this strategy gives the first attempt of a call whose deadline is ``deadline``:
        all of it, unless the strategy shares it between its attempts (``sequential`` with a split
        deadline). A strategy that runs this one again (``retry_until_deadline_expired``) asks it
        before it pauses for a round whose first attempt would have too little time to be sent."""
        return deadline


#: The most attempts one strategy makes in a call: a call works out its attempts' delays before it
#: sends the first, and a million of them held it past its deadline with nothing sent.
MAX_ATTEMPTS = 100


def too_late_to_send(deadline: Deadline, after: float = 0.0) -> bool:
    """Whether an extra attempt with ``deadline``, sent ``after`` seconds from now, would have too
    little time left to be sent: its deadline passed, or less than the client's low-timeout
    threshold left (the client then refuses it, as ``send`` returning None).

    A strategy asks before pausing ``after`` seconds for a retry: it ended with the response it had
    only when the time left was shorter than the pause, so with 0.30 s left, a 0.25 s pause and a
    0.1 s threshold it slept 0.25 s for a retry that was then refused, and answered that much later.
    """
    return too_little_to_send(deadline.timeout - after)
