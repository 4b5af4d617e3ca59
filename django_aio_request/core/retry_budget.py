"""A retry budget, as in Finagle and Envoy: extra attempts (retries and hedges) may add at most a
share of a client's first attempts, plus a small floor, over a sliding window.

This module imports no Django.
"""

import decimal
import math
import threading
import time
from collections.abc import Callable

from django_aio_request.core.after_fork import renewed_in_forked_child

DEFAULT_RATIO = 0.2
DEFAULT_MIN_PER_SECOND = 10.0
DEFAULT_WINDOW_SECONDS = 10.0
DEFAULT_BUCKETS = 10


_LARGEST = 999_999_999  # conf/reader.py's LARGEST: the core imports nothing of the Django layer
_SHORTEST_WINDOW = 1e-6  # conf/reader.py's SMALLEST_SECONDS
# Enough digits for any ratio (17 significant) times any count of first attempts, exactly.
_EXACT = decimal.Context(prec=60)


class RetryBudget:
    """Allows an extra attempt only while, over the last ``window_seconds``::

        extras + 1 <= ratio * firsts + min_per_second * window_seconds

    ``record_first()`` deposits a first attempt; ``try_spend()`` asks for an extra one and records
    it when allowed. The window is a ring of ``buckets`` buckets of ``window_seconds / buckets``
    each (one second with the defaults): a call costs O(1), amortised over the buckets it expires.

    What it guarantees: over any run, the extras it allows are at most
    ``ratio * firsts + min_per_second * window_seconds * k``, where ``k`` is the number of disjoint
    windows the run spans (``ceil(buckets touched / buckets)``; 1 or 2 for a run shorter than the
    window). An extra is always recorded no earlier than the firsts that paid for it, so it stays
    in every window they are in: the same firsts never pay twice.

    Thread-safe: one lock, held for a few arithmetic operations. One budget is shared by all the
    strategies of a client; several clients may share one too.
    """

    __slots__ = (
        "__weakref__",
        "_bucket_seconds",
        "_clock",
        "_current",
        "_extras",
        "_firsts",
        "_floor_decimal",
        "_lock",
        "_ratio_decimal",
        "_ring",
        "_size",
        "min_per_second",
        "ratio",
        "refused",
        "window_seconds",
    )

    def __init__(
        self,
        ratio: float = DEFAULT_RATIO,
        min_per_second: float = DEFAULT_MIN_PER_SECOND,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        *,
        buckets: int = DEFAULT_BUCKETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # At most _LARGEST each (the settings' own bound): ratio * firsts and the floor stay finite,
        # where 1e308 overflowed to inf and available() raised OverflowError.
        if not _finite(ratio) or not 0 <= ratio <= _LARGEST:
            raise ValueError(f"ratio must be a number from 0 to {_LARGEST:,}, not {ratio!r}")
        if not _finite(min_per_second) or not 0 <= min_per_second <= _LARGEST:
            raise ValueError(f"min_per_second must be a number from 0 to {_LARGEST:,}, not {min_per_second!r}")
        # At least the settings' shortest number of seconds: 1e-300 passed, 1e-310 raised OverflowError
        # and 5e-324 ZeroDivisionError as the budget was made.
        if not _finite(window_seconds) or not _SHORTEST_WINDOW <= window_seconds <= _LARGEST:
            raise ValueError(
                f"window_seconds must be a number from {_SHORTEST_WINDOW:g} to {_LARGEST:,}, not {window_seconds!r}"
            )
        if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
            raise ValueError(f"buckets must be a whole number >= 1, not {buckets!r}")
        self.ratio = float(ratio)
        self.min_per_second = float(min_per_second)
        self.window_seconds = float(window_seconds)
        # The rule in decimal arithmetic, of the numbers as written (their repr): binary floats
        # refused the 29th extra of 0.29 x 100 firsts, and rounding them to 9 decimals allowed the
        # one extra of 0.9999999999 x 1 first the rule refuses.
        self._ratio_decimal = decimal.Decimal(repr(self.ratio))
        self._floor_decimal = _EXACT.multiply(
            decimal.Decimal(repr(self.min_per_second)), decimal.Decimal(repr(self.window_seconds))
        )
        self._size = buckets
        self._bucket_seconds = self.window_seconds / buckets
        self._clock = clock
        self._lock = threading.Lock()
        _renewed_in_forked_child(self)
        # Per bucket: [bucket index (time // bucket_seconds), firsts, extras]; totals kept alongside.
        self._ring: list[list[int]] = [[-1, 0, 0] for _ in range(buckets)]
        self._current = self._index()
        self._firsts = 0
        self._extras = 0
        self.refused = 0  # extra attempts refused since the budget was made

    def record_first(self) -> None:
        """Deposit a first attempt."""
        with self._lock:
            bucket = self._advance()
            bucket[1] += 1
            self._firsts += 1

    def try_spend(self) -> bool:
        """Ask for an extra attempt: True (and recorded) when the budget allows it, else False."""
        with self._lock:
            bucket = self._advance()
            if self._extras + 1 > self._allowed():
                self.refused += 1
                return False
            bucket[2] += 1
            self._extras += 1
            return True

    def give_back(self) -> None:
        """Undo one ``try_spend()`` whose attempt sent nothing (the client's own open circuit answered
        it): taken from the newest bucket holding an extra, where that spend was recorded."""
        with self._lock:
            self._advance()
            for back in range(self._size):
                bucket = self._ring[(self._current - back) % self._size]
                if bucket[0] == self._current - back and bucket[2] > 0:
                    bucket[2] -= 1
                    self._extras -= 1
                    return

    def available(self) -> int:
        """How many extra attempts the budget would allow right now."""
        with self._lock:
            self._advance()
            return max(0, math.floor(self._allowed()) - self._extras)

    def _allowed(self) -> decimal.Decimal:
        """``ratio * firsts + floor`` in decimal arithmetic (see __init__)."""
        return _EXACT.add(_EXACT.multiply(self._ratio_decimal, self._firsts), self._floor_decimal)

    def _index(self) -> int:
        return math.floor(self._clock() / self._bucket_seconds)

    def _advance(self) -> list[int]:
        """Expire the buckets that left the window; the current bucket. Call with the lock held."""
        now = self._index()
        if now > self._current:
            # Each bucket is reset at most once per window; past a whole window, every one is.
            for index in range(max(self._current + 1, now - self._size + 1), now + 1):
                bucket = self._ring[index % self._size]
                if bucket[0] != index:
                    self._firsts -= bucket[1]
                    self._extras -= bucket[2]
                    bucket[0], bucket[1], bucket[2] = index, 0, 0
            self._current = now
        bucket = self._ring[self._current % self._size]
        if bucket[0] != self._current:  # the first use of the very first bucket
            self._firsts -= bucket[1]
            self._extras -= bucket[2]
            bucket[0], bucket[1], bucket[2] = self._current, 0, 0
        return bucket

    def __repr__(self) -> str:
        return (
            f"<RetryBudget ratio={self.ratio:g} min_per_second={self.min_per_second:g} "
            f"window_seconds={self.window_seconds:g}>"
        )


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _new_lock(budget: RetryBudget) -> None:
    # A budget's lock held by another thread at fork() stays held in the child, whose first retry then
    # waits for ever: each child gets a new one. The first attempts the parent deposited are the
    # parent's to spend: kept, every child forked spent them again (gunicorn --preload with a client
    # that had served: 4 children of a parent of 1,000 calls sent 1,360 retries where 760 were due,
    # a review). The extra attempts spent are kept: counted twice, they only make the child stricter.
    budget._lock = threading.Lock()
    for bucket in budget._ring:
        bucket[1] = 0
    budget._firsts = 0


_renewed_in_forked_child = renewed_in_forked_child(_new_lock)
