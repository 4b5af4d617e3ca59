import abc

from django_aio_request.core.cancellation import Cancellation
from django_aio_request.core.request import Request
from django_aio_request.core.response import Response


class Transport(abc.ABC):
    """Sends one attempt of a request and returns its response, read in full.

    A transport never raises for network failures: it answers 489 for a network error, 488 for
    too many redirects and 408 when ``timeout`` (seconds, a bound on the whole attempt) runs out.
    It raises only for programming errors (a request it cannot even build).
    """

    @abc.abstractmethod
    def send(
        self, endpoint: str, request: Request, timeout: float, cancellation: Cancellation | None = None
    ) -> Response: ...

    def close(self) -> None:  # noqa: B027 - optional hook, most transports hold nothing
        """Release pooled connections."""
