import time
from collections.abc import Callable

from django_aio_request.core.attempt_threads import AttemptThreadPool
from django_aio_request.core.cancellation import Cancellation, pause
from django_aio_request.core.deadline import Deadline
from django_aio_request.core.priority import Priority
from django_aio_request.core.request import Request
from django_aio_request.core.response import Response, is_abandoned, retry_after
from django_aio_request.strategies.base import (
    RequestStrategy,
    ResponseWithVerdict,
    SendAttempt,
    claim_learner,
    claim_strategy,
    too_late_to_send,
)
from django_aio_request.strategies.delays import (
    DelaysProvider,
    RequestAttemptDelaysProvider,
    as_request_delays,
    asked,
    linear_backoff_delays,
)


class _Refused(Exception):
    """A round's first attempt was refused by the retry budget."""


class _Rounds:
    """The ``send`` each round's strategy gets: it numbers attempts on from the earlier rounds', so
    the client sees every round's first attempt as the extra attempt it is (which the retry budget
    may refuse: that ends the call)."""

    def __init__(self, send: SendAttempt, observe: Callable[[Request, Response], None]) -> None:
        self._send = send
        self._observe = observe  # the rounds' delays provider learns from every attempt (percentile)
        self.offset = 0  # attempts numbered by the rounds before this one
        self.highest = -1  # the highest number the current round used
        self.refused = False  # the retry budget refused an attempt: no more rounds
        # time.monotonic() before which no round goes: the latest a rejected 503 or 429 of any attempt
        # asked in Retry-After. A parallel round returns one attempt's answer (its first rejection),
        # and a hedge's 503 asking for 2 s was followed by the next round 50 ms later. Plain float
        # writes from the attempts' threads: a race keeps one of the times, a bound the server asked for.
        self.not_before = 0.0

    def next_round(self) -> None:
        self.offset += self.highest + 1
        self.highest = -1

    def send(
        self, request: Request, deadline: Deadline, priority: Priority, number: int, cancellation: Cancellation | None
    ) -> ResponseWithVerdict | None:
        self.highest = max(self.highest, number)
        result = self._send(request, deadline, priority, self.offset + number, cancellation)
        if result is None:
            self.refused = True
            if number == 0:
                raise _Refused
        elif not is_abandoned(result.response):
            # Abandoned, it lost to another attempt of the round or went with the call: this level
            # cannot tell which, and the second is no latency of the server's (see parallel.py).
            self._observe(request, result.response)
            if not result.accepted and (wait := retry_after(result.response)) > 0:
                self.not_before = max(self.not_before, time.monotonic() + wait)
        return result


class RetryUntilDeadlineExpiredStrategy(RequestStrategy):
    """Runs ``strategy`` again and again, ``delays(k)`` apart, until it is accepted or time is up
    (or the client's retry budget refuses an attempt: the call ends with the last response it got).

    Attempts are numbered across rounds: the first attempt of the second round is attempt ``n``
    when the first round made ``n``.
    """

    def __init__(
        self, strategy: RequestStrategy, delays_provider: DelaysProvider | RequestAttemptDelaysProvider
    ) -> None:
        self.strategy = strategy
        self.delays = as_request_delays(delays_provider)

    def request(
        self, send: SendAttempt, workers: AttemptThreadPool, request: Request, deadline: Deadline, priority: Priority
    ) -> ResponseWithVerdict:
        rounds = _Rounds(send, self.delays.observe)
        round_ = 0
        result = self.strategy.request(rounds.send, workers, request, deadline, priority)
        while True:
            if result.accepted or deadline.expired or rounds.refused:
                return result
            round_ += 1
            # As sequential.py, and what any attempt of the round asked for (rounds.not_before).
            wait = max(retry_after(result.response), rounds.not_before - time.monotonic())
            delay = max(asked(self.delays, request, round_), wait)
            # The deadline the next round's first attempt would get after the pause (a third of what
            # is left, for a sequential strategy splitting it over three): when that is too short to
            # send it, the call ends now rather than pausing for a round refused after it.
            if too_late_to_send(self.strategy.first_attempt_deadline(Deadline(deadline.expires_at - delay))):
                return result
            pause(delay)
            rounds.next_round()
            try:
                result = self.strategy.request(rounds.send, workers, request, deadline, priority)
            except _Refused:
                return result

    def claim(self, endpoint: str) -> None:
        claim_strategy(self.strategy, endpoint)
        claim_learner(self.delays, endpoint)

    def first_attempt_deadline(self, deadline: Deadline) -> Deadline:
        return self.strategy.first_attempt_deadline(deadline)

    def __repr__(self) -> str:
        return f"<RetryUntilDeadlineExpiredStrategy {self.strategy!r}>"


def retry_until_deadline_expired(
    strategy: RequestStrategy,
    *,
    delays_provider: DelaysProvider | RequestAttemptDelaysProvider | None = None,
) -> RequestStrategy:
    return RetryUntilDeadlineExpiredStrategy(
        strategy,
        delays_provider if delays_provider is not None else linear_backoff_delays(),
    )
