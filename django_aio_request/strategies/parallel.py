import contextvars
import queue
import time
from collections.abc import Callable

from django_aio_request.core import headers as h
from django_aio_request.core import status
from django_aio_request.core.attempt_threads import AttemptThreadPool
from django_aio_request.core.cancellation import Cancellation
from django_aio_request.core.classifier import ResponseVerdict
from django_aio_request.core.deadline import Deadline
from django_aio_request.core.priority import Priority
from django_aio_request.core.request import Request
from django_aio_request.core.response import EmptyResponse, Response
from django_aio_request.strategies.base import RequestStrategy, ResponseWithVerdict, SendAttempt, first_attempt
from django_aio_request.strategies.delays import (
    DelaysProvider,
    RequestAttemptDelaysProvider,
    as_request_delays,
    linear_backoff_delays,
)

# How long past the deadline to wait for a worker's answer before making up a 408. The transport
# ends every attempt by its deadline; this only covers a pipeline stage that does not.
_GRACE_SECONDS = 0.05


class _HedgedCall:
    """The state of one parallel call: attempts in flight, their cancellations, finished results."""

    def __init__(
        self,
        send: SendAttempt,
        request: Request,
        deadline: Deadline,
        priority: Priority,
        observe: Callable[[Request, Response], None],
    ) -> None:
        self.send = send
        self.observe = observe
        self.request = request
        self.deadline = deadline
        self.priority = priority
        # None: an attempt the client's retry budget refused (it sent nothing)
        self.outcomes: queue.SimpleQueue[ResponseWithVerdict | BaseException | None] = queue.SimpleQueue()
        self.cancellations: list[Cancellation] = []
        self.finished: list[ResponseWithVerdict] = []
        self.in_flight = 0
        self.refused = False  # the retry budget refused an attempt: launch no more

    def launch(self, workers: AttemptThreadPool, attempt: int) -> ResponseWithVerdict | None:
        """Start ``attempt`` on a worker; with none free, run it here if nothing else is in flight.

        Returns the response when the attempt ran in this thread, else None (also when the retry
        budget refused it, which sets ``refused``).
        """
        cancellation = Cancellation()
        context = contextvars.copy_context()  # one copy per attempt: a context runs in one thread at a time

        def run() -> None:
            try:
                sent = self.send(self.request, self.deadline, self.priority, attempt, cancellation)
                result = sent if attempt else first_attempt(sent)
                if result is None:
                    self.refused = True  # before the put: the caller sees it once it hears of the attempt
                    self.outcomes.put(None)
                    return
                # Observed here, not by the caller: the caller has often moved on before a loser ends,
                # and losers are the slow attempts an adaptive delay most needs to hear about.
                self.observe(self.request, result.response)
                self.outcomes.put(result)
            except BaseException as error:
                self.outcomes.put(error)

        if workers.try_submit(lambda: context.run(run)) is not None:
            self.cancellations.append(cancellation)
            self.in_flight += 1
            return None
        if self.in_flight:
            return None  # the pool is full: skip this hedge, the attempts in flight may still win
        sent = self.send(self.request, self.deadline, self.priority, attempt, None)
        result = sent if attempt else first_attempt(sent)
        if result is None:
            self.refused = True
            return None
        self.observe(self.request, result.response)
        self.finished.append(result)
        return result

    def wait(self, timeout: float) -> ResponseWithVerdict | None:
        """The next finished attempt, or None if none finished within ``timeout`` (or it was refused)."""
        try:
            outcome = self.outcomes.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None
        self.in_flight -= 1
        if outcome is None:
            return None
        if isinstance(outcome, BaseException):
            raise outcome
        self.finished.append(outcome)
        return outcome

    def wait_accepted_until(self, until: float) -> ResponseWithVerdict | None:
        """Wait for a winning response until ``until`` or until nothing is in flight."""
        while self.in_flight and (left := until - time.monotonic()) > 0:
            result = self.wait(left)
            if result is not None and self.wins(result):
                return result
        return None

    def wins(self, result: ResponseWithVerdict) -> bool:
        """An accepted response ends the call, except an open circuit's fallback while attempts
        are still in flight: one of them may be the breaker's half-open probe, and aborting it
        for the fallback would keep the circuit from ever closing."""
        if not result.accepted:
            return False
        return not (self.in_flight and h.X_CIRCUIT_BREAKER in result.response.headers)

    def cancel_rest(self) -> None:
        for cancellation in self.cancellations:
            cancellation.cancel()


class ParallelStrategy(RequestStrategy):
    """Hedged attempts: attempt ``k`` starts ``delays(k)`` after the call started, unless an
    accepted response came first; the first accepted response wins and the others are aborted
    (an open circuit breaker's fallback wins only once no attempt is left in flight).

    Attempts run on the client's worker pool with a copy of the caller's context each. When every
    attempt in flight has been rejected, the next one starts at once rather than at its time
    (aio-request waits; waiting only adds latency). When the pool is full, a hedge is skipped, and
    a call with nothing in flight runs its attempt in the caller's own thread: a full pool degrades
    hedging, it never blocks a caller. When the client's retry budget refuses an attempt, no
    further one is launched; the attempts in flight may still win.
    """

    def __init__(self, *, attempts_count: int, delays_provider: DelaysProvider | RequestAttemptDelaysProvider) -> None:
        if attempts_count < 1:
            raise ValueError(f"attempts_count must be >= 1, not {attempts_count}")
        self.attempts_count = attempts_count
        self.delays = as_request_delays(delays_provider)

    def request(
        self, send: SendAttempt, workers: AttemptThreadPool, request: Request, deadline: Deadline, priority: Priority
    ) -> ResponseWithVerdict:
        call = _HedgedCall(send, request, deadline, priority, self.delays.observe)
        started = time.monotonic()
        try:
            for attempt in range(self.attempts_count):
                if attempt > 0:
                    due = min(started + self.delays(request, attempt), deadline.expires_at)
                    accepted = call.wait_accepted_until(due)
                    if accepted is not None:
                        return accepted
                    if deadline.expired or call.refused:
                        break
                inline = call.launch(workers, attempt)
                if inline is not None and inline.accepted:
                    return inline
                if call.refused:
                    break
            accepted = call.wait_accepted_until(deadline.expires_at + _GRACE_SECONDS)
            if accepted is not None:
                return accepted
            if call.finished:
                return call.finished[0]
            timeout = EmptyResponse(status=status.TIMEOUT, elapsed=time.monotonic() - started)
            return ResponseWithVerdict(timeout, ResponseVerdict.REJECT)
        finally:
            call.cancel_rest()

    def __repr__(self) -> str:
        return f"<ParallelStrategy attempts={self.attempts_count}>"


def parallel_strategy(
    *, attempts_count: int = 3, delays_provider: DelaysProvider | RequestAttemptDelaysProvider | None = None
) -> RequestStrategy:
    return ParallelStrategy(
        attempts_count=attempts_count,
        delays_provider=delays_provider if delays_provider is not None else linear_backoff_delays(),
    )
