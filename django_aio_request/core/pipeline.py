"""The stages one attempt passes through, each wrapping the next, as in aio-request:
low-timeout guard -> circuit breaker -> transport (which adds the system headers)."""

import abc
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence

from django_aio_request.breaker.circuit_breaker import CircuitBreaker
from django_aio_request.core import headers as h
from django_aio_request.core import status
from django_aio_request.core.cancellation import Cancellation
from django_aio_request.core.classifier import ResponseClassifier, ResponseVerdict
from django_aio_request.core.context import Context, _context
from django_aio_request.core.deadline import Deadline
from django_aio_request.core.priority import Priority
from django_aio_request.core.request import Request, check_headers
from django_aio_request.core.response import EmptyResponse, Response, UnsentResponse, is_abandoned
from django_aio_request.core.timeout_header import stamp
from django_aio_request.metrics.client import ClientMetrics
from django_aio_request.transport.base import Transport

RequestEnricher = Callable[[Request], Request]


@dataclasses.dataclass(frozen=True, slots=True)
class Attempt:
    endpoint: str
    request: Request
    deadline: Deadline
    priority: Priority
    number: int  # 0 for a call's first attempt
    cancellation: Cancellation | None


Next = Callable[[Attempt], Response]


class RequestModule(abc.ABC):
    @abc.abstractmethod
    def execute(self, next_: Next, attempt: Attempt) -> Response: ...


class LowTimeoutModule(RequestModule):
    """With less time left than ``threshold`` no request could finish: answer 408 without sending."""

    def __init__(self, threshold: float, metrics: ClientMetrics | None = None) -> None:
        self.threshold = threshold
        self.metrics = metrics  # counts every attempt here, the first stage, and the ones refused

    def execute(self, next_: Next, attempt: Attempt) -> Response:
        metrics = self.metrics
        if metrics is not None:
            metrics.attempt(attempt.request.method, attempt.number)
        if attempt.deadline.timeout < self.threshold or attempt.deadline.expired:
            if metrics is not None:
                metrics.deadline_rejected(
                    attempt.request.method, "expired" if attempt.deadline.expired else "low_timeout"
                )
            return UnsentResponse(status=status.TIMEOUT, headers={h.X_DO_NOT_RETRY: "1"})
        return next_(attempt)


class CircuitBreakerModule(RequestModule):
    """Counts outcomes per endpoint; an open circuit answers 502 without touching the network."""

    def __init__(self, breaker: CircuitBreaker[str, Response], classifier: ResponseClassifier) -> None:
        self.breaker = breaker
        self.classifier = classifier

    def execute(self, next_: Next, attempt: Attempt) -> Response:
        # What raises below is a programming error (a header HTTP cannot carry, an enricher that
        # fails: the transport never raises for the network's doing), not the endpoint's: counted as
        # its failure, three of them opened the circuit on a healthy server. The breaker is given no
        # verdict instead (a probe lets the next call probe), and the error is raised on.
        raised: list[Exception] = []

        def operation() -> Response:
            try:
                return next_(attempt)
            except Exception as error:
                raised.append(error)
                return _NO_VERDICT

        response = self.breaker.execute(
            scope=attempt.endpoint,
            operation=operation,
            fallback=_open_circuit_response,
            is_successful=self._is_successful,
        )
        if raised:
            error = raised.pop()
            try:
                raise error
            finally:
                del error  # no cycle through this frame, which the traceback holds
        return response

    def _is_successful(self, response: Response) -> bool | None:
        if is_abandoned(response) or response is _NO_VERDICT or isinstance(response, UnsentResponse):
            # abandoned by its strategy, raised, or never had one of this client's connections (a
            # burst past MAX_CONNECTIONS opened the circuit of a healthy endpoint): nothing of its own
            return None
        return self.classifier.classify(response) is ResponseVerdict.ACCEPT


_NO_VERDICT = EmptyResponse(status=status.CANCELLED)  # stands for a raised error inside the breaker only


def _open_circuit_response() -> Response:
    return UnsentResponse(status=status.CIRCUIT_BREAKER_OPEN, headers={h.X_CIRCUIT_BREAKER: "1", h.X_DO_NOT_RETRY: "1"})


class TransportModule(RequestModule):
    """Adds the propagation headers, lets the enricher have its say, and sends."""

    def __init__(
        self,
        transport: Transport,
        *,
        emit_system_headers: bool,
        request_enricher: RequestEnricher | None,
        service_name: str | None,
        metrics: ClientMetrics | None = None,
    ) -> None:
        if service_name:
            check_headers({h.X_SERVICE_NAME: service_name})  # once: execute() adds it unchecked
        self.metrics = metrics
        self.transport = transport
        self.emit_system_headers = emit_system_headers
        self.request_enricher = request_enricher
        self.service_name = service_name

    def execute(self, next_: Next, attempt: Attempt) -> Response:
        request = attempt.request
        if self.emit_system_headers:
            system = {
                h.X_REQUEST_TIMEOUT: stamp(attempt.deadline.timeout),
                h.X_REQUEST_PRIORITY: str(attempt.priority),
            }
            if self.service_name:
                system[h.X_SERVICE_NAME] = self.service_name  # checked in __init__
            request = request._with_checked_headers(system)
        if self.request_enricher is not None:
            request = self._enrich(self.request_enricher, request, attempt)
        # The time left now, after the enricher had its (possibly slow) say: the attempt's deadline holds.
        if self.metrics is None:
            return self.transport.send(attempt.endpoint, request, attempt.deadline.timeout, attempt.cancellation)
        started = time.perf_counter()
        response = self.transport.send(attempt.endpoint, request, attempt.deadline.timeout, attempt.cancellation)
        if isinstance(response, UnsentResponse):
            # Not sent, so no transport latency: the deadline ran out while it waited for a connection
            # (or it was cancelled then, which the attempt's own counters tell).
            if response.status == status.TIMEOUT:
                self.metrics.deadline_rejected(request.method, "no_connection")
        else:
            self.metrics.transport(request.method, request.url, response.status, time.perf_counter() - started)
        return response

    def _enrich(self, enricher: RequestEnricher, request: Request, attempt: Attempt) -> Request:
        """``request`` as ``enricher`` has it, checked, and stamped again with the time left."""
        if request is attempt.request:
            # The caller's own (no system headers copied it): an enricher that edits in place would
            # write into it, and the next attempt or call would take what it set for the caller's.
            request = request.with_headers({})
        sent = _header(request.headers, h.X_REQUEST_TIMEOUT)
        before = {name.lower(): value for name, value in request.headers.items()}
        given = request  # a copy of our own: the enricher may edit it in place
        # Under the attempt's deadline and priority: a call the enricher makes (a token fetched)
        # ran under the context's, none outside a request, and held a call given 0.2 s for the
        # token service's 0.3 s (a review).
        token = _context.set(Context(attempt.deadline, attempt.priority))
        try:
            request = enricher(given)
        finally:
            _context.reset(token)
        if not isinstance(request, Request):  # it edited the request in place and returned nothing
            raise TypeError(
                f"the request enricher {enricher!r} returned {type(request).__name__},"
                " not a Request: it must return the request (request.with_headers(...) makes one)"
            )
        check_headers(request.headers)  # also what it set in place (request.headers[...] = ...)
        if sent is not None and _header(request.headers, h.X_REQUEST_TIMEOUT) == sent:
            # Stamped again after the enricher's (possibly slow: a token fetched) say, unless it set
            # its own: it promised the downstream the time left before the enricher ran. Its own may
            # be in any letter case, set in place beside ours (request.headers["x-request-timeout"]).
            request = request.with_headers({h.X_REQUEST_TIMEOUT: stamp(attempt.deadline.timeout)})
        enriched = _enriched(before, request.headers)
        if enriched:
            if request is not given:  # one of the enricher's own keeping: not ours to mark
                request = request.with_headers({})
            request.enricher_headers = enriched
        return request


_WIRE_FORMAT = frozenset(name.lower() for name in (h.X_REQUEST_TIMEOUT, h.X_REQUEST_PRIORITY, h.X_SERVICE_NAME))


def _enriched(before: Mapping[str, str], after: Mapping[str, str]) -> frozenset[str]:
    """The names (lowercase) of the headers in ``after`` that are not in ``before`` or differ: what
    the enricher set. The wire format's own headers are not among them: they are meant for every hop."""
    return frozenset(
        lowered
        for name, value in after.items()
        if (lowered := name.lower()) not in _WIRE_FORMAT and before.get(lowered) != value
    )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of ``name`` that goes out: names are case-insensitive, and of two spellings in one
    plain dict (one set in place beside another) the transport sends the last (requests merges
    them into a case-insensitive dict in order)."""
    found = None
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            found = value
    return found


def build_pipeline(modules: Sequence[RequestModule]) -> Next:
    def end(_attempt: Attempt) -> Response:
        raise RuntimeError("the pipeline must end with a module that sends")

    def link(module: RequestModule, next_: Next) -> Next:
        return lambda attempt: module.execute(next_, attempt)

    pipeline: Next = end
    for module in reversed(modules):
        pipeline = link(module, pipeline)
    return pipeline
