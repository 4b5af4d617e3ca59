"""One timer entry for the first hedges of all of a parallel strategy's calls in flight.

Most hedged calls are answered before their first hedge is due. With an entry of its own on the
process-wide timer (transport/deadline_timer.py), each of them paid for a heap push and a cancel,
and the heap filled with the cancelled entries of the last hedge delay's calls (thousands for a
one-second delay): about 6 µs of a 300 µs loopback call (docs/benchmarks.md). The clock keeps
the calls waiting for their first hedge in a dict, and one timer entry at the earliest of their
times: a call joins with a dict store under a lock, and leaves with a dict pop. When the entry
fires, the clock hands each call whose time has come its due function (the call then decides
whether the hedge goes: strategies/parallel.py) and sets the entry again for the earliest left.
"""

import functools
import logging
import math
import threading
import time
from collections.abc import Callable

from django_aio_request.core.after_fork import renewed_in_forked_child
from django_aio_request.transport.deadline_timer import deadline_timer

__all__ = ["HedgeClock"]

logger = logging.getLogger(__name__)


class HedgeClock:
    """Runs functions at their times, each unless it was taken back first, on one timer entry."""

    __slots__ = ("__weakref__", "_armed_at", "_cancel_entry", "_due", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # What runs -> when. Stored under the lock; taken back without it (a dict pop is one step).
        self._due: dict[Callable[[], None], float] = {}
        self._armed_at = math.inf  # when the timer entry fires; inf: none is set
        self._cancel_entry: Callable[[], None] | None = None
        _renewed_in_forked_child(self)

    def add(self, due: float, run: Callable[[], None]) -> Callable[[], object]:
        """Run ``run`` on the timer's thread at ``due`` (``time.monotonic()`` clock), or soon after;
        returns the function that takes it back, from any thread. A function object is added once:
        ``run`` is its own key."""
        waiting = self._due
        waiting[run] = due
        # Stored first, then the entry's time read: a _ring() that began before this read still
        # finds ``run`` in its look at the dict (it sets _armed_at before it looks), and one that
        # began after it leaves _armed_at at its earliest, or inf, which this then sees. So the
        # lock is taken only to set the entry earlier, and most calls, due after the earliest, skip it.
        if due < self._armed_at:
            with self._lock:
                if due < self._armed_at and run in waiting:
                    self._arm(due)
        return functools.partial(waiting.pop, run, None)

    def __len__(self) -> int:
        """How many functions wait for their time."""
        return len(self._due)

    def _arm(self, due: float) -> None:
        """(Holding the lock.) Set the timer entry for ``due``, and drop the later one set before."""
        cancel = self._cancel_entry
        self._armed_at = due
        self._cancel_entry = deadline_timer.schedule(due, self._ring)
        if cancel is not None:
            cancel()

    def _ring(self) -> None:
        """On the timer's thread: run what is due, and set the entry for the earliest left."""
        with self._lock:
            self._armed_at, self._cancel_entry = math.inf, None
            now, due_now, earliest = time.monotonic(), [], math.inf
            waiting = self._due
            for run, due in list(waiting.items()):  # one step: a caller's pop cannot change it meanwhile
                if due > now:
                    earliest = min(earliest, due)
                elif waiting.pop(run, None) is not None:  # not taken back meanwhile
                    due_now.append(run)
            if earliest < math.inf:
                self._arm(earliest)
        for run in due_now:
            try:
                run()
            except Exception:
                logger.exception("a hedge's timer callback failed")


def _renew(clock: HedgeClock) -> None:
    """The parent's calls are not the child's, and the parent's timer entry is not on the child's timer:
    kept, the clock would believe an entry set that never fires, and no call of the child's would be
    hedged. A lock a parent thread held at the fork would stay held."""
    clock._lock = threading.Lock()
    clock._due = {}
    clock._armed_at = math.inf
    clock._cancel_entry = None


_renewed_in_forked_child = renewed_in_forked_child(_renew)
