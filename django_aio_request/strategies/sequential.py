from django_aio_request.core.attempt_threads import AttemptThreadPool
from django_aio_request.core.cancellation import pause
from django_aio_request.core.deadline import Deadline
from django_aio_request.core.priority import Priority
from django_aio_request.core.request import Request
from django_aio_request.core.response import is_abandoned, retry_after
from django_aio_request.strategies.arguments import whole
from django_aio_request.strategies.base import (
    MAX_ATTEMPTS,
    RequestStrategy,
    ResponseWithVerdict,
    SendAttempt,
    claim_learner,
    first_attempt,
    too_late_to_send,
)
from django_aio_request.strategies.deadline_providers import DeadlineProvider, pass_deadline_through
from django_aio_request.strategies.delays import (
    DelaysProvider,
    RequestAttemptDelaysProvider,
    as_request_delays,
    asked,
    linear_backoff_delays,
)


class SequentialStrategy(RequestStrategy):
    """Attempts one after another, in the caller's thread, until one is accepted.

    Attempt ``k`` waits ``delays(k)`` after attempt ``k-1`` ended, or longer when that attempt's 503
    or 429 asked for it (``Retry-After``); when the time left after that
    wait would be too short for attempt ``k`` to be sent (its deadline passed, or less than the
    client's low-timeout threshold left), the call ends with the last rejected response instead of
    sleeping in vain. It ends with it too when the client's retry budget refuses the next attempt.
    """

    def __init__(
        self,
        *,
        attempts_count: int,
        delays_provider: DelaysProvider | RequestAttemptDelaysProvider,
        deadline_provider: DeadlineProvider,
    ) -> None:
        if not 1 <= whole("attempts_count", attempts_count) <= MAX_ATTEMPTS:
            raise ValueError(f"attempts_count must be from 1 to {MAX_ATTEMPTS}, not {attempts_count}")
        self.attempts_count = int(attempts_count)
        self.delays = as_request_delays(delays_provider)
        self.deadline_provider = deadline_provider

    def claim(self, endpoint: str) -> None:
        claim_learner(self.delays, endpoint)

    def first_attempt_deadline(self, deadline: Deadline) -> Deadline:
        return self.deadline_provider(deadline, 0, self.attempts_count)

    def request(
        self, send: SendAttempt, workers: AttemptThreadPool, request: Request, deadline: Deadline, priority: Priority
    ) -> ResponseWithVerdict:
        responses: list[ResponseWithVerdict] = []
        try:
            for attempt in range(self.attempts_count):
                attempt_deadline = self.deadline_provider(deadline, attempt, self.attempts_count)
                result = send(request, attempt_deadline, priority, attempt, None)
                if result is None:  # the retry budget is spent: no more attempts
                    break
                responses.append(result)
                if result.accepted or attempt + 1 == self.attempts_count:
                    break
                # At least what a 503 or 429 asked for (Retry-After): a shedding server's callers step back.
                delay = max(asked(self.delays, request, attempt + 1), retry_after(result.response))
                # The deadline the retry would get after the pause: when it leaves too little time
                # to send it, the call ends now rather than pausing for a retry refused after it.
                after_pause = Deadline(deadline.expires_at - delay)
                if too_late_to_send(self.deadline_provider(after_pause, attempt + 1, self.attempts_count)):
                    break
                pause(delay)
            return responses[-1] if responses else first_attempt(None)
        finally:
            self.observe(request, responses)

    def observe(self, request: Request, responses: list[ResponseWithVerdict]) -> None:
        for result in responses:
            # An attempt abandoned here was abandoned with its call (no other attempt runs beside
            # it): no latency of the server's, and a learning provider must not take it for one.
            if not is_abandoned(result.response):
                self.delays.observe(request, result.response)

    def __repr__(self) -> str:
        return f"<SequentialStrategy attempts={self.attempts_count}>"


def sequential_strategy(
    *,
    attempts_count: int = 3,
    delays_provider: DelaysProvider | RequestAttemptDelaysProvider | None = None,
    deadline_provider: DeadlineProvider | None = None,
) -> RequestStrategy:
    return SequentialStrategy(
        attempts_count=attempts_count,
        delays_provider=delays_provider if delays_provider is not None else linear_backoff_delays(),
        deadline_provider=deadline_provider if deadline_provider is not None else pass_deadline_through(),
    )
