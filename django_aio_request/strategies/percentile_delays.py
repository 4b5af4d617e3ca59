import collections
import threading
import time

from django_aio_request.core.request import Request
from django_aio_request.core.response import Response, is_abandoned
from django_aio_request.strategies.arguments import finite, whole
from django_aio_request.strategies.delays import RequestAttemptDelaysProvider


class _Samples:
    __slots__ = ("baseline", "baseline_at", "body", "cached", "cached_at", "latencies", "recent_body", "since_cached")

    def __init__(self, size: int) -> None:
        self.latencies: collections.deque[tuple[float, float]] = collections.deque(maxlen=size)
        self.cached: float | None = None
        self.body: float | None = None  # their 75th percentile (BODY), computed with ``cached``
        self.recent_body: float | None = None  # the same of the last RECENT_SECONDS only
        self.cached_at = 0.0
        self.since_cached = 0
        # The lowest ``body`` learned since ``baseline_at``: what the server does when not busy.
        self.baseline: float | None = None
        self.baseline_at = 0.0


class PercentileDelaysProvider(RequestAttemptDelaysProvider):
    """Delays hedge ``k`` by ``k`` times a percentile of recent successful latencies of that request.

    Hedging after the 95th percentile sends about 5% more requests and takes away most of the tail
    above it. Latencies are kept per method and URL template over ``window_seconds`` (at most
    ``max_samples`` of them), for at most :attr:`MAX_TEMPLATES` templates (the ones past it share
    one record); until ``min_samples`` are seen, ``min_delay_seconds`` is used. The
    percentile is recomputed at most every ``refresh_seconds`` or after 5% new samples, so
    asking for a delay costs a dictionary look-up.

    ``min_delay_seconds`` defaults to 10 ms, not aio-request's 50 ms: a 50 ms floor keeps a service
    answering in milliseconds from being hedged before 50 ms, which leaves most of its tail in place.

    ``saturation_ratio`` (None: off): when the 75th percentile of the latencies of the last two
    seconds (the body of them, :attr:`BODY`, :attr:`RECENT_SECONDS`) rises above this many times the
    baseline (the lowest body of the whole window learned within the last ``window_seconds``,
    re-measured every window, like the minimum RTT of Envoy's adaptive concurrency filter) and above
    half of ``min_delay_seconds`` (:attr:`BODY_FLOOR`), the server
    is taken to be saturated and the delay is ``max_delay_seconds``: no hedges while a hedge would add
    load to a server that is slow because it has too much of it. They come back once it falls below
    again. The floor is a share of the shortest delay, not the delay itself: a body that has grown
    from 4 ms to 20 ms is a server queueing, and queueing spreads latencies, so ever more attempts
    pass a 50 ms delay and are hedged (benchmarks/load.py stalled so, with the body judged against the
    whole 50 ms); below half of it, a few times a small body is jitter (or queueing too short to
    matter) that sends few attempts past the delay. A quarter held hedges back at half load in
    benchmarks/hedge_safety.py (31% of the samples in one run of two).
    The body, not the hedging percentile: a saturated server queues most requests, which moves the
    body of the latencies; a percentile near a rare slow tail (the p90 of a service whose slowest
    5-10% take 150 ms) jumps whenever that tail grows a little, and judged by it hedges stopped in
    60-100% of the samples of a half-loaded server (docs/benchmarks.md). The 75th and not the
    median: queueing moves it sooner, and a tail a service lives with is well under a quarter.
    """

    BODY = 0.75  # the percentile of the latencies that saturation is judged by
    # A body under this share of min_delay_seconds is never saturation. If latencies spread like a
    # queue's (exponentially), a p75 at half the delay sends 6% of attempts past it (4 ** -2): as many
    # hedges from queueing alone as a 5% slow tail sends; at a quarter, 0.4%.
    BODY_FLOOR = 0.5
    # Saturation is judged by the body of the last RECENT_SECONDS of latencies (at least RECENT_SAMPLES
    # of them), against a baseline from the whole window. The body of the whole window (2,000 samples:
    # 20 s at 100 calls/s) moved only once the slow samples were a quarter of it: a 4 s stall after 12
    # calm seconds held hedges back from 3.4 s into it until 3.9 s after it (0.5 s and 1.9 s now).
    RECENT_SECONDS = 2.0
    RECENT_SAMPLES = 50
    # At most this many method and URL template records (as the stragglers rule's paces): templates
    # built from data (get(f"things/{id}"), which docs/metrics.md asks callers not to write) kept one
    # per URL sent, 100,000 of them 113 MiB. Past the bound, new templates share one record, their
    # latencies pooled. A record whose samples have all left the window is dropped when it is read,
    # and, once the bound is reached, by a sweep (at most every SWEEP_SECONDS) that makes room.
    MAX_TEMPLATES = 1000
    SWEEP_SECONDS = 1.0

    def __init__(
        self,
        *,
        percentile: float = 0.95,
        min_delay_seconds: float = 0.01,
        max_delay_seconds: float = 10.0,
        window_seconds: float = 300.0,
        max_samples: int = 2000,
        min_samples: int = 20,
        refresh_seconds: float = 1.0,
        saturation_ratio: float | None = None,
    ) -> None:
        # Numbers that are finite, and counts that are whole: NaN passed every range check below.
        percentile = finite("percentile", percentile)
        min_delay_seconds = finite("min_delay_seconds", min_delay_seconds)
        max_delay_seconds = finite("max_delay_seconds", max_delay_seconds)
        window_seconds = finite("window_seconds", window_seconds)
        refresh_seconds = finite("refresh_seconds", refresh_seconds)
        max_samples = whole("max_samples", max_samples)
        min_samples = whole("min_samples", min_samples)
        if saturation_ratio is not None:
            saturation_ratio = finite("saturation_ratio", saturation_ratio)
        if not 0 < percentile < 1:
            raise ValueError(f"percentile must be between 0 and 1 (exclusive), not {percentile!r}")
        if not 0 <= min_delay_seconds <= max_delay_seconds:
            raise ValueError("need 0 <= min_delay_seconds <= max_delay_seconds")
        if window_seconds <= 0 or max_samples < 1 or min_samples < 1:
            raise ValueError("window_seconds, max_samples and min_samples must be positive")
        if refresh_seconds < 0:
            raise ValueError(f"refresh_seconds must be >= 0, not {refresh_seconds!r}")
        if saturation_ratio is not None and not saturation_ratio > 1:
            raise ValueError(f"saturation_ratio must be above 1 or None, not {saturation_ratio!r}")
        self.percentile = percentile
        self.saturation_ratio = saturation_ratio
        self.min_delay_seconds = min_delay_seconds
        self.max_delay_seconds = max_delay_seconds
        self._window = window_seconds
        self._max_samples = max_samples
        self._min_samples = min_samples
        self._refresh = refresh_seconds
        self._lock = threading.Lock()
        self._samples: dict[tuple[str, str], _Samples] = {}
        self._others = _Samples(max_samples)  # the templates past MAX_TEMPLATES, pooled
        self._swept_at = float("-inf")

    def __call__(self, request: Request, attempt: int) -> float:
        return self.delay(request) * attempt

    def delay(self, request: Request) -> float:
        """The current hedge delay for ``request`` (attempt 1)."""
        key = (request.method, request.url)
        with self._lock:
            samples = self._samples.get(key)
            now = time.monotonic()
            if samples is None:
                if len(self._samples) < self.MAX_TEMPLATES or not self._others.latencies:
                    return self.min_delay_seconds
                samples = self._others  # may be where its latencies went (see observe)
            if (
                samples.cached is None
                or now - samples.cached_at >= self._refresh
                or (samples.since_cached * 20 >= len(samples.latencies))
            ):
                samples.cached, samples.body, samples.recent_body = self._compute(samples, now)
                if not samples.latencies and samples is not self._others:
                    del self._samples[key]  # every sample left the window: nothing to keep
                    return self.min_delay_seconds
                samples.cached_at = now
                samples.since_cached = 0
                self._track_baseline(samples, now)
            value, body = samples.cached, samples.recent_body
            saturated = (
                body is not None
                and self.saturation_ratio is not None
                and samples.baseline is not None
                and body > self.saturation_ratio * samples.baseline
                and body > self.BODY_FLOOR * self.min_delay_seconds
            )
        if value is None:
            return self.min_delay_seconds
        if saturated:
            return self.max_delay_seconds
        return min(self.max_delay_seconds, max(self.min_delay_seconds, value))

    def observe(self, request: Request, response: Response) -> None:
        """Learn from a successful response, or from an attempt abandoned for a faster one.

        An abandoned attempt's time is only a lower bound of its latency, but leaving it out
        would leave out exactly the slow tail and teach the provider to hedge too early.
        """
        if not (response.is_successful() or is_abandoned(response)):
            return
        key = (request.method, request.url)
        with self._lock:
            now = time.monotonic()
            samples = self._samples.get(key)
            if samples is None:
                if len(self._samples) >= self.MAX_TEMPLATES and now - self._swept_at >= self.SWEEP_SECONDS:
                    self._sweep(now)
                if len(self._samples) < self.MAX_TEMPLATES:
                    samples = self._samples[key] = _Samples(self._max_samples)
                else:
                    samples = self._others
            samples.latencies.append((now, response.elapsed))
            samples.since_cached += 1

    def _sweep(self, now: float) -> None:
        """(Holding ``_lock``.) Drop the records whose latest sample has left the window."""
        self._swept_at = now
        stale = [key for key, samples in self._samples.items() if not self._in_window(samples, now)]
        for key in stale:
            del self._samples[key]

    def _in_window(self, samples: _Samples, now: float) -> bool:
        return bool(samples.latencies) and now - samples.latencies[-1][0] <= self._window

    def _track_baseline(self, samples: _Samples, now: float) -> None:
        value = samples.body
        if value is None:
            return
        if samples.baseline is None or now - samples.baseline_at >= self._window:
            samples.baseline, samples.baseline_at = value, now  # re-measured every window
        elif value < samples.baseline:
            samples.baseline = value

    def saturated(self, request: Request) -> bool:
        """Whether the delay for ``request`` is held at ``max_delay_seconds`` for saturation."""
        return self.saturation_ratio is not None and self.delay(request) == self.max_delay_seconds

    def _compute(self, samples: _Samples, now: float) -> tuple[float | None, float | None, float | None]:
        """The percentile and the body (:attr:`BODY`) of the latencies in the window, and the body of
        the recent ones (:attr:`RECENT_SECONDS`, at least :attr:`RECENT_SAMPLES`); Nones: too few yet."""
        latencies = samples.latencies
        while latencies and now - latencies[0][0] > self._window:
            latencies.popleft()
        if len(latencies) < self._min_samples:
            return None, None, None
        ordered = sorted(latency for _, latency in latencies)
        index = min(len(ordered) - 1, int(self.percentile * len(ordered)))
        since, least = now - self.RECENT_SECONDS, max(self.RECENT_SAMPLES, self._min_samples)
        recent: list[float] = []
        for at, latency in reversed(latencies):
            if at < since and len(recent) >= least:
                break
            recent.append(latency)
        recent.sort()
        return ordered[index], ordered[int(self.BODY * len(ordered))], recent[int(self.BODY * len(recent))]
