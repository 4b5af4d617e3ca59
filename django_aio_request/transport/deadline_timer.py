"""One daemon thread that runs callbacks at given times on the monotonic clock.

Each attempt needs a wake-up at its deadline; a ``threading.Timer`` per attempt would start a
thread per call. This keeps a heap of due times instead and costs one heap push per attempt.
"""

import functools
import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

# Condition.wait() overflows past threading.TIMEOUT_MAX; far deadlines are simply waited for in steps.
_MAX_WAIT = 3600.0

# An entry is [due, sequence, callback]; a cancelled entry has callback None and is dropped lazily.
_Entry = list[object]


class DeadlineTimer:
    def __init__(self) -> None:
        # schedule() and the cancel it returns, on every attempt's path, take the lock itself: through
        # the condition, each acquire and release is a Python-level call of threading.Condition's.
        self._lock = threading.Lock()
        self._condition = threading.Condition(self._lock)
        self._heap: list[_Entry] = []
        self._cancelled = 0
        self._sequence = itertools.count()
        self._thread: threading.Thread | None = None
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

    def schedule(self, due: float, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` at ``due`` (``time.monotonic()`` clock); returns a function that cancels it."""
        entry: _Entry = [due, next(self._sequence), callback]
        with self._lock:
            if self._thread is None:
                self._start()
            heapq.heappush(self._heap, entry)
            if self._heap[0] is entry:
                self._condition.notify()
        return functools.partial(self._cancel, entry)

    def _cancel(self, entry: _Entry) -> None:
        with self._lock:
            if entry[2] is None:
                return
            entry[2] = None
            self._cancelled += 1
            if self._cancelled > 1024 and self._cancelled * 2 > len(self._heap):
                self._heap = [e for e in self._heap if e[2] is not None]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def _start(self) -> None:
        # Kept only once started: a thread that failed to start (a pids limit) was kept as the timer's,
        # and no callback of the process ever ran again (a review); the next schedule() tries again.
        thread = threading.Thread(target=self._run, name="django-aio-request-deadline-timer", daemon=True)
        thread.start()
        self._thread = thread

    def _run(self) -> None:
        while True:
            with self._condition:
                callback = self._next_due()
            try:
                callback()
            except Exception:
                logger.exception("deadline callback failed")
            # Not kept until the next entry is due, which on an idle process may be never: a callback
            # holds what it acts on (the database bound's holds a driver connection, kept open).
            del callback

    def _next_due(self) -> Callable[[], None]:
        """Wait (holding the condition) until an entry is due, pop it and return its callback."""
        while True:
            while self._heap and self._heap[0][2] is None:
                heapq.heappop(self._heap)
                self._cancelled -= 1
            if not self._heap:
                self._condition.wait()
                continue
            wait = float(self._heap[0][0]) - time.monotonic()  # type: ignore[arg-type]
            if wait > 0:
                self._condition.wait(min(wait, _MAX_WAIT))
                continue
            entry = heapq.heappop(self._heap)
            callback = entry[2]
            entry[2] = None
            return callback  # type: ignore[return-value]

    def _after_fork(self) -> None:
        # The thread does not survive fork(); the child starts its own on first use.
        self._lock = threading.Lock()
        self._condition = threading.Condition(self._lock)
        self._heap = []
        self._cancelled = 0
        self._thread = None


deadline_timer = DeadlineTimer()
