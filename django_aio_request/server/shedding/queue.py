"""Requests waiting for a slot, best first: the highest priority, then the earliest deadline.

A waiter is woken exactly once, by whoever decides its fate (the limiter, under its lock): granted
a slot, or evicted to make room. A sync waiter (a thread) waits on an event; an async one on a
future of its event loop, set through ``call_soon_threadsafe`` because the slot may be freed on
another thread. Not thread-safe on its own: the limiter holds its lock around every call.
"""

import asyncio
import bisect
import contextlib
import itertools
import threading

from django_aio_request.core.priority import Priority

__all__ = ["RANK", "WaitQueue", "Waiter"]

RANK = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}
_sequence = itertools.count()


class Waiter:
    __slots__ = ("_event", "_future", "_loop", "deadline", "evicted", "granted", "key", "priority", "since")

    def __init__(self, priority: Priority, deadline: float, since: float, *, loop: asyncio.AbstractEventLoop | None):
        self.priority = priority
        self.deadline = deadline
        self.since = since
        # Sorted by key: priority rank, then deadline, then arrival (first come, first served).
        self.key = (RANK[priority], deadline, next(_sequence))
        self.granted = False
        self.evicted = False
        self._loop = loop
        self._event: threading.Event | None = None
        self._future: asyncio.Future[None] | None = None
        if loop is None:
            self._event = threading.Event()
        else:
            self._future = loop.create_future()

    def __lt__(self, other: "Waiter") -> bool:
        return self.key < other.key

    def wait(self, timeout: float) -> None:
        """Block this thread until woken or ``timeout`` seconds passed (then neither flag may be set yet)."""
        assert self._event is not None
        self._event.wait(timeout)

    async def await_(self, timeout: float) -> None:
        assert self._future is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._future), timeout)

    def wake(self) -> None:
        if self._event is not None:
            self._event.set()
        else:
            assert self._loop is not None
            assert self._future is not None
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                self._loop.call_soon_threadsafe(_resolve, self._future)


def _resolve(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)


class WaitQueue:
    """Waiters in order, best first."""

    __slots__ = ("_waiters", "counts")

    def __init__(self) -> None:
        self._waiters: list[Waiter] = []
        self.counts = dict.fromkeys(Priority, 0)

    def __len__(self) -> int:
        return len(self._waiters)

    def push(self, waiter: Waiter) -> None:
        bisect.insort(self._waiters, waiter)
        self.counts[waiter.priority] += 1

    def best(self) -> Waiter | None:
        return self._waiters[0] if self._waiters else None

    def pop_best(self) -> Waiter:
        waiter = self._waiters.pop(0)
        self.counts[waiter.priority] -= 1
        return waiter

    def worst(self) -> Waiter:
        return self._waiters[-1]

    def remove(self, waiter: Waiter) -> None:
        index = bisect.bisect_left(self._waiters, waiter)
        if index < len(self._waiters) and self._waiters[index] is waiter:
            del self._waiters[index]
            self.counts[waiter.priority] -= 1
