import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Literal

from django_aio_request.breaker.circuit_breaker import CircuitBreaker
from django_aio_request.core import headers as h
from django_aio_request.core.attempt_threads import AttemptThreadPool
from django_aio_request.core.cancellation import Cancellation
from django_aio_request.core.classifier import ResponseClassifier
from django_aio_request.core.context import get_context
from django_aio_request.core.deadline import Deadline
from django_aio_request.core.pipeline import Attempt, Next
from django_aio_request.core.priority import Priority
from django_aio_request.core.request import Request
from django_aio_request.core.response import Response
from django_aio_request.core.retry_budget import RetryBudget
from django_aio_request.metrics.client import ClientMetrics
from django_aio_request.strategies import RequestStrategy, ResponseWithVerdict, SendAttempt
from django_aio_request.transport.base import Transport

#: How hedges are prioritised: None sends them with the call's priority; "lower" one step lower
#: (high -> normal -> low; low stays low); a Priority sends them with it, but never above the call's.
HedgePriority = Literal["lower"] | Priority | None

_LOWER = {Priority.HIGH: Priority.NORMAL, Priority.NORMAL: Priority.LOW, Priority.LOW: Priority.LOW}
_RANK = {Priority.LOW: 0, Priority.NORMAL: 1, Priority.HIGH: 2}


def hedge_priority_for(priority: Priority, hedge_priority: HedgePriority) -> Priority:
    """The priority a hedge of a call of ``priority`` is sent with."""
    if hedge_priority is None:
        return priority
    if hedge_priority == "lower":
        return _LOWER[priority]
    wanted = Priority(hedge_priority)
    return wanted if _RANK[wanted] < _RANK[priority] else priority


def validate_hedge_priority(value: object) -> HedgePriority:
    """``value`` if it is a valid ``hedge_priority``, else raise ValueError."""
    if value is None or value == "lower":
        return "lower" if value is not None else None
    parsed = Priority.parse(value) if isinstance(value, str) else None
    if parsed is None:
        raise ValueError(f"hedge_priority must be None, 'lower' or a priority (high, normal, low), not {value!r}")
    return parsed


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
        workers: AttemptThreadPool,
        transport: Transport,
        metrics: ClientMetrics | None = None,
        circuit_breaker: CircuitBreaker[str, Response] | None = None,
        retry_budget: RetryBudget | None = None,
        hedge_priority: HedgePriority = None,
    ) -> None:
        self.endpoint = endpoint
        self.strategy = strategy
        self.classifier = classifier
        self.timeout = timeout
        self.priority = priority
        self.transport = transport
        self.circuit_breaker = circuit_breaker  # the breaker given to setup(), or None
        self.retry_budget = retry_budget  # shared by all the client's strategies; None: no budget
        self.hedge_priority = validate_hedge_priority(hedge_priority)
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

        ``response.budget_exhausted`` is True when the client's retry budget refused an extra
        attempt (a retry or a hedge) that the call would have made.
        """
        context = get_context()
        if deadline is None:
            deadline = context.deadline if context.deadline is not None else Deadline.from_timeout(self.timeout)
        priority = (context.priority or self.priority) if priority is None else priority.within(context.priority)
        metrics = self._metrics
        call = None if self.retry_budget is None and self.hedge_priority is None else _Call(self)
        send: SendAttempt = self._send if call is None else call.send
        if metrics is None:
            result = (strategy or self.strategy).request(send, self._workers, request, deadline, priority)
        else:
            started = time.perf_counter()
            result = (strategy or self.strategy).request(send, self._workers, request, deadline, priority)
            response = result.response
            metrics.call(
                request.method,
                request.url,  # the template ("things/{id}"): a bounded label
                response.status,
                circuit_breaker=h.X_CIRCUIT_BREAKER in response.headers,
                attempt=result.attempt,
                elapsed=time.perf_counter() - started,
            )
        if call is not None and call.refused:
            result.response.budget_exhausted = True
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


class _Call:
    """One call's ``send``: spends the retry budget and lowers the priority of hedges.

    An attempt numbered > 0 is an extra one, which the budget may refuse (nothing is sent, and
    ``send`` returns None); a first attempt deposits. A hedge is an extra attempt sent while another
    attempt of the same call is still in flight: with ``hedge_priority`` it goes at a lower
    priority. A retry after a finished attempt keeps the call's priority.
    """

    __slots__ = ("_client", "_in_flight", "_lock", "refused")

    def __init__(self, client: Client) -> None:
        self._client = client
        self._in_flight = 0
        self._lock = threading.Lock() if client.hedge_priority is not None else None
        self.refused = False

    def send(
        self, request: Request, deadline: Deadline, priority: Priority, number: int, cancellation: Cancellation | None
    ) -> ResponseWithVerdict | None:
        client = self._client
        budget = client.retry_budget
        if budget is not None:
            if number == 0:
                budget.record_first()
            elif not budget.try_spend():
                self.refused = True
                if client._metrics is not None:
                    client._metrics.budget_exhausted()
                return None
        lock = self._lock
        if lock is None:
            return client._send(request, deadline, priority, number, cancellation)
        with lock:
            hedge = number > 0 and self._in_flight > 0
            self._in_flight += 1
        try:
            if hedge:
                priority = hedge_priority_for(priority, client.hedge_priority)
            return client._send(request, deadline, priority, number, cancellation)
        finally:
            with lock:
                self._in_flight -= 1
