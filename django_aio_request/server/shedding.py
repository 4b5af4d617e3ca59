"""Priority-aware load shedding: a per-process concurrency limit with shares kept for higher priorities.

:class:`ConcurrencyLimiter` counts the requests in flight. Each priority may start a request only
while fewer than its own limit are in flight:

* ``high``: up to ``max_concurrency``;
* ``normal``: up to ``max_concurrency`` minus the high-priority reserve;
* ``low``: up to that minus the normal-priority reserve as well.

So when the process fills up, low-priority requests are refused first, then normal ones, and high
ones only when every slot is taken; the reserves are capacity lower priorities can never take.
A request with less time left than ``min_time_to_serve`` cannot be served usefully: it is refused as
soon as low ones are (in-flight at or above the low limit), whatever its priority.

No Django here: :class:`AioRequestMiddleware` calls :meth:`ConcurrencyLimiter.try_acquire` and, for an
admitted request, :meth:`ConcurrencyLimiter.release` in a ``finally``.
"""

import dataclasses
import math
import threading

from django_aio_request.core.priority import Priority

__all__ = ["ADMITTED", "Admission", "ConcurrencyLimiter", "SheddingSettings"]

REASON_CAPACITY = "capacity"  # the priority's share of the limit is taken
REASON_DEADLINE = "deadline"  # too little time left to be served, and the process is under pressure
REASONS = (REASON_CAPACITY, REASON_DEADLINE)


@dataclasses.dataclass(frozen=True, slots=True)
class Admission:
    """The limiter's answer: admitted, or shed with why, ``Retry-After`` and whether retrying can help."""

    admitted: bool
    reason: str | None = None
    retry_after: int = 0
    do_not_retry: bool = False


ADMITTED = Admission(True)


class ConcurrencyLimiter:
    """Thread-safe in-flight counter with per-priority limits (see the module docstring)."""

    __slots__ = ("_in_flight", "_limits", "_lock", "_low_limit", "max_concurrency", "min_time_to_serve", "retry_after")

    def __init__(
        self,
        max_concurrency: int,
        *,
        high_priority_reserve: float = 0.2,
        normal_priority_reserve: float = 0.2,
        min_time_to_serve: float = 0.0,
        retry_after: int = 1,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, not {max_concurrency}")
        if (
            min(high_priority_reserve, normal_priority_reserve) < 0
            or high_priority_reserve + normal_priority_reserve >= 1
        ):
            raise ValueError("the reserves must be >= 0 and add up to less than 1")
        self.max_concurrency = max_concurrency
        self.min_time_to_serve = min_time_to_serve
        self.retry_after = retry_after
        normal = max_concurrency - math.floor(max_concurrency * high_priority_reserve)
        low = normal - math.floor(max_concurrency * normal_priority_reserve)
        self._limits = {Priority.HIGH: max_concurrency, Priority.NORMAL: normal, Priority.LOW: low}
        self._low_limit = low
        self._in_flight = 0
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def limit(self, priority: Priority) -> int:
        """How many requests may be in flight when one of ``priority`` is admitted."""
        return self._limits[priority]

    def try_acquire(self, priority: Priority, remaining: float | None) -> Admission:
        """Take a slot for a request of ``priority`` with ``remaining`` seconds left (None: unknown).

        An admitted request must be :meth:`release`\\ d exactly once.
        """
        with self._lock:
            in_flight = self._in_flight
            if remaining is not None and remaining < self.min_time_to_serve and in_flight >= self._low_limit:
                reason = REASON_DEADLINE
            elif in_flight < self._limits[priority]:
                self._in_flight = in_flight + 1
                return ADMITTED
            else:
                reason = REASON_CAPACITY
        # Retrying cannot help when the caller's deadline ends before it may retry, or is too short anyway.
        do_not_retry = reason == REASON_DEADLINE or (remaining is not None and remaining < self.retry_after)
        return Admission(False, reason, self.retry_after, do_not_retry)

    def release(self) -> None:
        with self._lock:
            if self._in_flight <= 0:
                raise RuntimeError("release() without an admitted request")
            self._in_flight -= 1


@dataclasses.dataclass(frozen=True)
class SheddingSettings:
    """``AIO_REQUEST["SHEDDING"]``, validated; ``limiter`` is the process's limiter for these settings."""

    max_concurrency: int
    high_priority_reserve: float = 0.2
    normal_priority_reserve: float = 0.2
    min_time_to_serve: float = 0.0
    retry_after: int = 1
    limiter: ConcurrencyLimiter = dataclasses.field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        limiter = ConcurrencyLimiter(
            self.max_concurrency,
            high_priority_reserve=self.high_priority_reserve,
            normal_priority_reserve=self.normal_priority_reserve,
            min_time_to_serve=self.min_time_to_serve,
            retry_after=self.retry_after,
        )
        object.__setattr__(self, "limiter", limiter)
