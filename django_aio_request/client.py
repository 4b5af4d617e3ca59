import contextlib
import time
from collections.abc import Iterator

from . import headers as h
from .cancellation import Cancellation
from .circuit_breaker import CircuitBreaker
from .classifier import ResponseClassifier
from .context import get_context
from .deadline import Deadline
from .metrics import ClientMetrics
from .pipeline import Attempt, Next
from .priority import Priority
from .request import Request
from .response import Response
from .strategies import RequestStrategy, ResponseWithVerdict
from .transport import Transport
from .workers import WorkerPool


class Client:
    """Calls one endpoint; made by :func:`django_aio_request.setup`. Safe to share between threads."""

    def __init__(
        self,
        *,
        endpoint: str,
        strategy: RequestStrategy,
        classifier: ResponseClassifier,
        timeout: float,
        priority: Priority,
        pipeline: Next,
        workers: WorkerPool,
        transport: Transport,
        metrics: ClientMetrics | None = None,
        circuit_breaker: CircuitBreaker[str, Response] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.strategy = strategy
        self.classifier = classifier
        self.timeout = timeout
        self.priority = priority
        self.transport = transport
        self.circuit_breaker = circuit_breaker  # the breaker given to setup(), or None
        self._pipeline = pipeline
        self._workers = workers
        self._metrics = metrics

    @contextlib.contextmanager
    def request(
        self,
        request: Request,
        *,
        deadline: Deadline | None = None,
        priority: Priority | None = None,
        strategy: RequestStrategy | None = None,
    ) -> Iterator[Response]:
        """Make the call and yield its final response.

        The deadline is ``deadline``, else the context's (set by the middleware from the incoming
        request), else the client's timeout from now. A call that names no priority sends the
        context's, else the client's; a named one is normalised against the context's.
        """
        context = get_context()
        if deadline is None:
            deadline = context.deadline if context.deadline is not None else Deadline.from_timeout(self.timeout)
        priority = (context.priority or self.priority) if priority is None else priority.within(context.priority)
        metrics = self._metrics
        if metrics is None:
            result = (strategy or self.strategy).request(self._send, self._workers, request, deadline, priority)
        else:
            started = time.perf_counter()
            result = (strategy or self.strategy).request(self._send, self._workers, request, deadline, priority)
            response = result.response
            metrics.call(
                request.method,
                request.url,  # the template ("things/{id}"): a bounded label
                response.status,
                circuit_breaker=h.X_CIRCUIT_BREAKER in response.headers,
                attempt=result.attempt,
                elapsed=time.perf_counter() - started,
            )
        yield result.response

    def _send(
        self, request: Request, deadline: Deadline, priority: Priority, number: int, cancellation: Cancellation | None
    ) -> ResponseWithVerdict:
        response = self._pipeline(Attempt(self.endpoint, request, deadline, priority, number, cancellation))
        return ResponseWithVerdict(response, self.classifier.classify(response), number)

    def close(self) -> None:
        """Wait for running attempts, then close pooled connections."""
        self._workers.shutdown()
        self.transport.close()
        if self.circuit_breaker is not None:
            self.circuit_breaker.close()

    def __repr__(self) -> str:
        return f"<Client {self.endpoint}>"
