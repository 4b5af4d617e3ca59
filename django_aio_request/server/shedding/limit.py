"""How many requests a process serves at once: a fixed number, or one learned from latency.

:class:`AdaptiveLimit` is a gradient controller in the family of Envoy's adaptive concurrency filter
and the Vegas and Gradient2 limits of Netflix's concurrency-limits:

* the *no-load latency* (``min_rtt``) is measured by a *probe*: for a few requests the limit drops
  to its minimum, so those run (nearly) alone, and their median time is the latency of the view
  without queueing inside the process. The probe runs first at start and again every
  ``probe_interval`` seconds (with jitter, so the workers of a server do not probe together),
  because the view's own cost changes (a slower database, a bigger table). Between probes a faster
  sample lowers it at once.
* the served requests are gathered in *windows* of about half a limit of samples; at the end of a
  window its mean latency is compared with ``tolerance x min_rtt``. Below it the process has room:
  if the window used the limit (its busiest moment reached it), the limit grows by its square root
  (at least 1). Above it, requests queue for CPU, locks or connections inside the process: the
  limit shrinks in proportion, ``limit x tolerance x min_rtt / latency``, by at most half a window.

With views that wait (I/O), latency does not grow with concurrency, so the limit climbs to what
the threads allow (it only grows while it is used). With views that use CPU under the GIL, latency
grows with every request run at once, so the limit settles where latency is about ``tolerance``
times the no-load latency (2 to 3 requests at the default ``tolerance`` of 2).

Not thread-safe on its own: the limiter calls it under its lock.
"""

import math
import random
import statistics

__all__ = ["AdaptiveLimit", "FixedLimit", "Limit"]


class FixedLimit:
    """``MAX_CONCURRENCY``: the same limit whatever the latency."""

    __slots__ = ("current",)

    adaptive = False

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the limit must be >= 1, not {limit}")
        self.current = limit

    def sample(self, rtt: float, in_flight: int, admitted_at: float, now: float) -> None:
        """A fixed limit learns nothing."""


class AdaptiveLimit:
    """The concurrency limit learned from the latency of served requests (see the module docstring)."""

    __slots__ = (
        "_jitter",
        "_limit",
        "_next_probe",
        "_probe_began",
        "_probe_samples",
        "_window",
        "_window_busiest",
        "current",
        "maximum",
        "min_rtt",
        "minimum",
        "probe_interval",
        "tolerance",
    )

    adaptive = True
    PROBE_SAMPLES = 5  # requests measured at the minimum limit; their median is the no-load latency
    SMALLEST_WINDOW = 3

    def __init__(
        self,
        *,
        minimum: int = 1,
        maximum: int = 1000,
        initial: int | None = None,
        tolerance: float = 1.5,
        probe_interval: float = 30.0,
        now: float = 0.0,
        jitter: random.Random | None = None,
    ) -> None:
        if not 1 <= minimum <= maximum:
            raise ValueError(f"need 1 <= minimum <= maximum, not {minimum} and {maximum}")
        if tolerance <= 1:
            raise ValueError(f"the tolerance must be > 1, not {tolerance}")
        self.minimum = minimum
        self.maximum = maximum
        self.tolerance = tolerance
        self.probe_interval = probe_interval
        self._jitter = jitter or random.Random()
        start = max(minimum, min(maximum, 4 if initial is None else initial))
        self._limit = float(start)  # the learned limit; ``current`` is what applies now (the minimum while probing)
        self.min_rtt: float | None = None
        self._window: list[float] = []
        self._window_busiest = 0
        self._probe_samples: list[float] = []
        self._next_probe = now
        self._probe_began: float | None = None
        self.current = start
        self._begin_probe(now)

    @property
    def learned(self) -> int:
        """The limit learned so far (``current`` is the minimum while a probe runs)."""
        return max(self.minimum, min(self.maximum, int(self._limit)))

    @property
    def probing(self) -> bool:
        return self._probe_began is not None

    def _begin_probe(self, now: float) -> None:
        self._probe_began = now
        self._probe_samples = []
        self.current = self.minimum

    def _end_probe(self, now: float) -> None:
        self.min_rtt = statistics.median(self._probe_samples)
        self._probe_began = None
        self._window = []
        self._window_busiest = 0
        self.current = self.learned
        self._next_probe = now + self.probe_interval * self._jitter.uniform(0.8, 1.2)

    def sample(self, rtt: float, in_flight: int, admitted_at: float, now: float) -> None:
        """A served request took ``rtt`` seconds from admission; ``in_flight`` counts it and the others running."""
        if self._probe_began is not None:
            if admitted_at >= self._probe_began:  # admitted under the probe's limit: (nearly) alone
                self._probe_samples.append(rtt)
                if len(self._probe_samples) >= self.PROBE_SAMPLES:
                    self._end_probe(now)
            return
        if now >= self._next_probe:
            self._begin_probe(now)
            return
        min_rtt = self.min_rtt
        assert min_rtt is not None  # set by the first probe, before any window
        if rtt < min_rtt:
            self.min_rtt = min_rtt = rtt
        self._window.append(rtt)
        self._window_busiest = max(self._window_busiest, in_flight)
        if len(self._window) < max(self.SMALLEST_WINDOW, math.ceil(self._limit / 2)):
            return
        latency = sum(self._window) / len(self._window)
        limit = self._limit
        gradient = self.tolerance * min_rtt / latency if latency > 0 else 1.0
        if gradient >= 1:
            if self._window_busiest >= int(limit):  # grow only a limit that was used
                limit += max(1.0, math.sqrt(limit))
        else:
            limit *= max(0.5, gradient)
        self._limit = max(float(self.minimum), min(float(self.maximum), limit))
        self.current = self.learned
        self._window = []
        self._window_busiest = 0


Limit = FixedLimit | AdaptiveLimit
