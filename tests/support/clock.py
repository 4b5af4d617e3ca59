"""A clock tests move by hand, for code that takes one (``MemoryCircuitStore(clock=...)``)."""

import threading


class FakeClock:
    """Starts at ``start``; only :meth:`advance` moves it. Safe to read from many threads."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds
