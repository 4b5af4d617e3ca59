import abc
import enum
from collections.abc import Mapping

from django_aio_request.core import headers as h
from django_aio_request.core import status
from django_aio_request.core.response import Response


class ResponseVerdict(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"


# A member read from a module global: ``ResponseVerdict.ACCEPT`` goes through the enum's class on each read.
_ACCEPT, _REJECT = ResponseVerdict.ACCEPT, ResponseVerdict.REJECT


class ResponseClassifier(abc.ABC):
    """Decides whether a response ends the call (accept) or another attempt may be tried (reject)."""

    @abc.abstractmethod
    def classify(self, response: Response) -> ResponseVerdict: ...


class DefaultResponseClassifier(ResponseClassifier):
    """aio-request's verdicts: 5xx, 408, 429 and network errors are retried; the rest accepted.

    ``X-Do-Not-Retry`` in a response accepts it whatever its status; ``verdict_for_status``
    overrides everything for the statuses it names.
    """

    def __init__(
        self,
        *,
        network_errors_code: int = status.NETWORK_ERROR,
        verdict_for_status: Mapping[int, ResponseVerdict] | None = None,
    ) -> None:
        self._network_errors_code = network_errors_code
        self._verdict_for_status = dict(verdict_for_status or {})

    def classify(self, response: Response) -> ResponseVerdict:
        code = response.status
        verdict = self._verdict_for_status.get(code)
        if verdict is not None:
            return verdict
        if 500 <= code < 600 or code in (self._network_errors_code, 408, 429):
            # X-Do-Not-Retry is looked for only here, where it changes the verdict: a look-up in
            # requests' case-insensitive headers raises and catches a KeyError when the name is
            # absent, and every call's answer is classified twice (the breaker, the strategy).
            return _ACCEPT if h.X_DO_NOT_RETRY in response.headers else _REJECT
        return _ACCEPT
