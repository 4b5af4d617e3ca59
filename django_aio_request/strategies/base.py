import abc
import dataclasses
from collections.abc import Callable

from ..cancellation import Cancellation
from ..classifier import ResponseVerdict
from ..deadline import Deadline
from ..priority import Priority
from ..request import Request
from ..response import Response
from ..workers import WorkerPool


@dataclasses.dataclass(frozen=True, slots=True)
class ResponseWithVerdict:
    response: Response
    verdict: ResponseVerdict
    attempt: int = 0  # which attempt of the call produced it, 0 for the first

    @property
    def accepted(self) -> bool:
        return self.verdict is ResponseVerdict.ACCEPT


#: Sends one attempt through the client's pipeline: ``send(request, deadline, priority, attempt, cancellation)``.
SendAttempt = Callable[[Request, Deadline, Priority, int, Cancellation | None], ResponseWithVerdict]


class RequestStrategy(abc.ABC):
    """Decides how many attempts a call makes, when, and which response it ends with."""

    @abc.abstractmethod
    def request(
        self, send: SendAttempt, workers: WorkerPool, request: Request, deadline: Deadline, priority: Priority
    ) -> ResponseWithVerdict: ...
