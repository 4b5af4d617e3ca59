"""How many requests a process serves at once: a fixed number, or one learned from latency.

:class:`AdaptiveLimit` is a gradient controller in the family of Envoy's adaptive concurrency filter
and the Vegas and Gradient2 limits of Netflix's concurrency-limits:

* the *no-load latency* (``min_rtt``) is measured by a *probe*: for a few requests the limit drops
  to its minimum, so those run (nearly) alone, and their median time is the latency of the view
  without queueing inside the process. The probe runs first at start and again every
  ``probe_interval`` seconds (with jitter, so the workers of a server do not probe together),
  because the view's own cost changes (a slower database, a bigger table). Between probes nothing
  lowers it: a process serves views of different costs, and the fastest one (a health check, a
  ``/metrics`` scrape) is no measure of the others; a single fast request once set it, and every
  window of the usual views then looked slow and the limit fell to 1.
* the served requests are gathered in *windows* of about half a limit of samples (at least 10); at
  the end of a window its latency is compared with ``tolerance x min_rtt``. The latency is the
  median of the requests that ended at the window's busiest (the most in flight at once): a
  concurrency is judged by the requests that ran at it (under a threaded server whose threads mostly
  run one at a time, a window's plain mean is made of requests that ran alone, and hides that every
  one run beside another took twice as long), and a rare slow request (a slow query) does not
  decide. A sync request that reported its CPU time counts without the others' turns on the GIL
  (about its own CPU time for each other request in flight, and one switch interval): those are the
  ceiling's business (below), and what is left is waiting that concurrency crowds (locks, a
  connection pool). Below it the process has room: if the window used the limit (its busiest reached
  it), the limit grows by its square root (at least 1). Above it, requests queue inside the process:
  the limit shrinks in proportion to what ran, ``min(limit, busiest) x tolerance x min_rtt /
  latency``, by at most half a window; so a limit above what the server's threads can ever reach
  still comes down.
* the time a request waited on another service through this package's clients is no queueing here
  (the downstream sheds its own load; the call's deadline, breaker and retry budget bound what it
  is sent): the probe and the windows judge a request without it. Judged with it, a window in
  which a slow downstream's answers came in together looked like queueing, the limit halved, the
  slots left filled with requests waiting on the downstream, and a caller refused 4.8% of its
  calls at 58% CPU (``benchmarks/load.py --caller-shedding``).
* a growth that the next used window undoes was a failed try: the limit then waits twice as many
  good windows (up to ``MAX_PATIENCE``) before trying to grow again, and goes back to growing after
  every good window once a growth holds. With CPU views under the GIL the limit thus stays at the
  size where latency holds (often 1) and tries one more only now and then, leaving the server's
  other threads free to take requests in and order them by priority.
* a *ceiling* from CPU time: a sync request reports the CPU time its thread spent on it
  (``time.thread_time()``). Under the GIL one thread runs Python at a time. A request is busy, on
  average, its CPU time plus its own waiting (I/O; its time less its CPU and the others' turns on
  the GIL, a moving mean, so a 150 ms query in one request of twenty counts for 7.5 ms), and by
  Little's law ``busy / cpu`` requests at once keep the CPU busy on average
  (:attr:`~AdaptiveLimit.needed`); at ``tolerance x busy / cpu`` latency reaches the tolerance. How
  many wait at a time varies, so two spreads of that count are added (``2 x sqrt(busy / cpu - 1)``,
  none for views that barely wait): the limit stays at or below that, rounded down (1 for views that
  only compute; 8 for 3 ms of CPU with 5% of requests waiting 150 ms, where a ceiling from the
  no-load latency alone said 1 and every slow request held the only slot). Latency alone tells this
  late, or not at all when a threaded server's threads rarely run at once; and a limit at or above
  the server's threads leaves no thread free to take requests in, so they wait in the server's own
  first-come queue where priority cannot order them. Free-threaded builds and async requests (whose
  thread runs many) set no ceiling.

With views that wait (I/O), latency does not grow with concurrency, so the limit climbs to what
the threads allow (it only grows while it is used). With views that use CPU under the GIL, the
ceiling keeps the limit at what keeps the CPU busy from the first requests on; without a reported
CPU time (async), latency grows with every request run at once, and the limit settles where it is
about ``tolerance`` times the no-load latency (1 or 2 requests at the default ``tolerance`` of 1.5).

Not thread-safe on its own: the limiter calls it under its lock.
"""

import math
import random
import statistics
import sys

__all__ = ["AdaptiveLimit", "FixedLimit", "Limit"]


class FixedLimit:
    """``MAX_CONCURRENCY``: the same limit whatever the latency."""

    __slots__ = ("current",)

    adaptive = False

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the limit must be >= 1, not {limit}")
        self.current = limit

    def sample(
        self,
        rtt: float,
        in_flight: int,
        admitted_at: float,
        now: float,
        cpu: float | None = None,
        *,
        downstream: float = 0.0,
    ) -> None:
        """A fixed limit learns nothing."""

    def held_back(self) -> None:
        """A fixed limit learns nothing."""


class AdaptiveLimit:
    """The concurrency limit learned from the latency of served requests (see the module docstring)."""

    __slots__ = (
        "_gil",
        "_good",
        "_grew",
        "_jitter",
        "_limit",
        "_next_probe",
        "_patience",
        "_probe_began",
        "_probe_samples",
        "_window",
        "_window_busiest",
        "_window_held",
        "cpu",
        "current",
        "io",
        "maximum",
        "min_rtt",
        "minimum",
        "probe_interval",
        "tolerance",
    )

    adaptive = True
    PROBE_SAMPLES = 5  # requests measured at the minimum limit; their median is the no-load latency
    SMALLEST_WINDOW = 10  # so that a rare slow request among them does not move the median
    MAX_PATIENCE = 16  # good windows waited, at most, before trying again a growth that failed
    CPU_WEIGHT = 0.1  # of the newest request in the moving mean of CPU time
    IO_WEIGHT = 0.01  # of the newest request in the moving mean of off-CPU time (a rare slow one counts)
    COMPUTING = 1.5  # busy / cpu under which the views are taken to mostly compute

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
        gil: bool | None = None,
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
        # Free-threaded builds run Python on several cores at once: CPU time then sets no ceiling.
        self._gil = getattr(sys, "_is_gil_enabled", lambda: True)() if gil is None else gil
        self.cpu: float | None = None  # moving mean of the CPU time of requests served on threads
        self.io: float | None = None  # moving mean of their off-CPU time, the GIL's turns taken out
        start = max(minimum, min(maximum, 4 if initial is None else initial))
        self._limit = float(start)  # the learned limit; ``current`` is what applies now (the minimum while probing)
        self.min_rtt: float | None = None
        # (time taken, requests in flight as it ended, whether the GIL's turns were taken out of it)
        self._window: list[tuple[float, int, bool]] = []
        self._window_busiest = 0  # the most in flight as a request of the window ended
        self._window_held = False  # a low-priority request found only the slots kept from it
        self._patience = 1  # good, used windows needed before the next growth
        self._good = 0  # good, used windows since the last change
        self._grew = False  # the last change was a growth not yet judged by a used window
        self._probe_samples: list[float] = []
        self._next_probe = now
        self._probe_began: float | None = None
        self.current = start
        self._begin_probe(now)

    @property
    def learned(self) -> int:
        """The limit learned so far (``current`` is the minimum while a probe runs)."""
        return max(self.minimum, min(self.maximum, self.ceiling, int(self._limit)))

    @property
    def needed(self) -> int:
        """How many requests at once keep the CPU busy under the GIL: ``busy / cpu``, rounded down (at least 1).

        A request is busy ``busy`` seconds, ``cpu`` of them on the CPU (both means, so a rare slow
        wait counts as often as it happens): by Little's law ``busy / cpu`` of them at once keep one
        CPU busy. ``busy`` is the mean CPU time plus the mean wait that was not the others' turns on
        the GIL (estimated as about its own CPU time for each other request in flight), and at
        least the latency without queueing. ``maximum`` until requests served on threads were
        measured (or without a GIL).
        """
        ratio = self._busy_per_cpu()
        return self.maximum if ratio is None else max(1, min(self.maximum, int(ratio)))

    @property
    def computes(self) -> bool:
        """Whether the views mostly compute: measured busy under 1.5 times their CPU time (under the GIL).

        Then one request at a time keeps the CPU about as busy as several (:attr:`needed` is 1).
        """
        ratio = self._busy_per_cpu()
        return ratio is not None and ratio < self.COMPUTING

    @property
    def ceiling(self) -> int:
        """The most requests worth running at once under the GIL: ``tolerance x busy / cpu``, rounded down.

        Only one thread runs Python at a time: past ``busy / cpu`` (:attr:`needed`) more requests at
        once only wait for the GIL inside the process, where priority cannot order them, and at
        ``tolerance`` times that their latency reaches the tolerance.
        """
        ratio = self._busy_per_cpu()
        if ratio is None:
            return self.maximum
        # How many wait at once varies (roughly as a Poisson count of mean ``ratio - 1``): with only
        # the mean's worth of slots, the CPU idles whenever more than usual wait; two spreads more,
        # rounded down, keep it busy then (none for views that barely wait).
        spread = int(2 * math.sqrt(ratio - 1))
        return max(1, min(self.maximum, int(self.tolerance * ratio) + spread))

    def _busy_per_cpu(self) -> float | None:
        cpu, min_rtt = self.cpu, self.min_rtt
        if not self._gil or cpu is None or min_rtt is None or cpu <= 0:
            return None
        busy = max(min_rtt, cpu + self.io) if self.io is not None else min_rtt
        return busy / cpu

    @property
    def probing(self) -> bool:
        return self._probe_began is not None

    def _begin_probe(self, now: float) -> None:
        self._probe_began = now
        self._probe_samples = []
        self.current = self.minimum

    def _end_probe(self, now: float) -> None:
        before, self.min_rtt = self.min_rtt, statistics.median(self._probe_samples)
        if before is not None and not before / self.tolerance <= self.min_rtt <= self.tolerance * before:
            # Other views now: the growths that failed against the old latency say nothing of these,
            # and waiting out their patience kept a limit of 1 for 8-16 windows (a review: 4-12 s of
            # 100 ms views refused after a start served 10 ms ones, high priority included).
            self._patience, self._good, self._grew = 1, 0, False
        self._probe_began = None
        self._begin_window()
        self.current = self.learned
        self._next_probe = now + self.probe_interval * self._jitter.uniform(0.8, 1.2)

    def sample(
        self,
        rtt: float,
        in_flight: int,
        admitted_at: float,
        now: float,
        cpu: float | None = None,
        *,
        downstream: float = 0.0,
    ) -> None:
        """A served request took ``rtt`` seconds from admission; ``in_flight`` counts it and the others running.

        ``cpu``: the CPU time its thread spent on it (None when unknown: an async request).
        ``downstream``: the part of ``rtt`` it waited, off the CPU, on calls made through this
        package's clients (:mod:`~django_aio_request.core.downstream_wait`). That wait is no
        queueing here, and the latency is judged without it; the CPU ceiling counts it (a request
        waiting on another service leaves the CPU to the others).
        """
        downstream = min(max(0.0, downstream), rtt)
        rtt -= downstream  # what the request spent here: its own work, and waiting for this process
        if cpu is not None:
            previous = self.cpu
            self.cpu = cpu if previous is None else previous + self.CPU_WEIGHT * (cpu - previous)
            # What was neither its own CPU time nor the others' turns on the GIL (about as much each)
            # was the view's own waiting (I/O, a sleep, a downstream call); exact for a request that ran alone.
            waited = downstream + max(0.0, rtt - cpu * max(1, in_flight))
            io = self.io
            self.io = waited if io is None else io + self.IO_WEIGHT * (waited - io)
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
        window = self._window
        net = cpu is not None and self._gil  # the GIL's turns can be taken out of this sample
        if cpu is not None and net and in_flight > 1:  # (cpu repeated for the type checker)
            # Under the GIL the others' CPU time is spent while this request waits: take out what
            # they could have spent (about this request's own, each, and one switch interval, the
            # longest a thread that wants the GIL waits before asking for it; the server's other
            # threads take turns too) and judge the rest, the waiting that concurrency adds besides
            # the GIL (locks, a connection pool). The GIL's own share is the CPU ceiling's business.
            rtt = max(min(cpu, rtt), rtt - cpu * (in_flight - 1) - sys.getswitchinterval())
        window.append((rtt, in_flight, net))
        self._window_busiest = max(self._window_busiest, in_flight)
        if len(window) >= max(self.SMALLEST_WINDOW, math.ceil(self._limit / 2)):
            self._end_window(min_rtt, now)

    def held_back(self) -> None:
        """A low-priority request found free only the slots kept for higher priorities.

        The limit counts as reached in this window: otherwise a process that serves mostly low
        priority would never reach its limit and never grow it.
        """
        self._window_held = True

    def _end_window(self, min_rtt: float, now: float) -> None:
        """Grow, keep or shrink the limit by the window's latency (see the module docstring)."""
        window = self._window
        busiest = self._window_busiest
        used = busiest >= self.current or self._window_held  # the window reached the limit: only then may it grow
        # Samples with the GIL's turns taken out compare at any concurrency; the others only at the busiest.
        judged = [sample for sample, running, net in window if net or running >= busiest]
        latency = statistics.median(judged)  # a rare slow request (a slow query, a sleep) does not decide
        if busiest <= 1 and not min_rtt / self.tolerance <= latency <= self.tolerance * min_rtt:
            # Every request of the window ran alone, so none queued here, and still its latency is
            # not the probe's: the probe measured other views (the first requests after a start were
            # a cheaper page's, or a slower page's came and went). Judged against it, a limit of 1
            # never grew until the next probe (30 s of a demo's shedding page refusing 98% of normal
            # priority). Measured again now, from the requests that come next; taking this window's
            # latency instead let one window of a slow page raise it until the next probe, and the
            # cheap page's requests then queued tenfold.
            self._begin_window()
            self._begin_probe(now)
            return
        limit = self._limit
        gradient = self.tolerance * min_rtt / latency if latency > 0 else 1.0
        if gradient < 1:
            # From what ran at once, not from a limit the window never reached (with fewer threads
            # than the limit, the limit is never reached and would otherwise never shrink).
            limit = min(limit, float(busiest)) * max(0.5, gradient)
            if self._grew:  # the last growth did not hold: wait longer before the next
                self._patience = min(self.MAX_PATIENCE, self._patience * 2)
            self._grew = False
            self._good = 0
        elif used:  # grow only a limit that was used
            if self._grew:  # the last growth held
                self._patience = 1
                self._grew = False
            self._good += 1
            if self._good >= self._patience:
                limit += max(1.0, math.sqrt(limit))
                self._grew = True
                self._good = 0
        self._limit = max(float(self.minimum), min(float(self.maximum), float(self.ceiling), limit))
        self.current = self.learned
        self._begin_window()

    def _begin_window(self) -> None:
        self._window = []
        self._window_busiest = 0
        self._window_held = False


Limit = FixedLimit | AdaptiveLimit
