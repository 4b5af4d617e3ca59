import abc
import enum
from collections.abc import Mapping

from django_aio_request.core import headers as h
from django_aio_request.core import status
from django_aio_request.core.response import Response


class ResponseVerdict(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"


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
        verdict = self._verdict_for_status.get(response.status)
        if verdict is not None:
            return verdict
        if h.X_DO_NOT_RETRY in response.headers:
            return ResponseVerdict.ACCEPT
        if response.is_server_error() or response.status in (self._network_errors_code, 408, 429):
            return ResponseVerdict.REJECT
        return ResponseVerdict.ACCEPT
