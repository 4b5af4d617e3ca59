import collections
import itertools
import math
import threading
import time

from django_aio_request.core import status
from django_aio_request.core.after_fork import renewed_in_forked_child
from django_aio_request.core.request import Request
from django_aio_request.core.response import EmptyResponse, Response, UnsentResponse, is_abandoned
from django_aio_request.strategies.arguments import finite, whole
from django_aio_request.strategies.delays import RequestAttemptDelaysProvider


def _nearest_rank(ordered: list[float], share: float) -> float:
    """The ``share`` percentile of ``ordered`` (sorted, not empty) by nearest rank: of 20 latencies
    the p95 is the 19th, not the slowest (``int(0.95 * 20)`` picked the 20th)."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def ran_out_of_time(response: Response) -> bool:
    """The attempt was sent and its deadline ended it before an answer (the 408 the transport makes,
    with the time it waited). The 408 of an attempt refused as too late to send waited nothing; one
    that never had a connection (:class:`UnsentResponse`) waited for this client, not the server."""
    return (
        response.status == status.TIMEOUT
        and isinstance(response, EmptyResponse)
        and not isinstance(response, UnsentResponse)
        and response.elapsed > 0
    )


class _Samples:
    __slots__ = (
        "baselines",
        "body",
        "cached",
        "cached_at",
        "held",
        "latencies",
        "learned",
        "recent_body",
        "since_cached",
    )

    def __init__(self, size: int) -> None:
        # (when, latency, whether the hedging percentile takes it: not a deadline's lower bound, not
        # learned while held for saturation); the body and saturation are judged on all of them
        self.latencies: collections.deque[tuple[float, float, bool]] = collections.deque(maxlen=size)
        self.cached: float | None = None
        self.body: float | None = None  # their 75th percentile (BODY), computed with ``cached``
        self.recent_body: float | None = None  # the same of the last RECENT_SECONDS only
        self.cached_at = 0.0
        self.since_cached = 0
        self.held = False  # the verdict of the last computation: saturated
        # The last hedging percentile taken from min_samples latencies it may take (see _compute).
        self.learned: float | None = None
        # The lowest ``body`` learned in each tenth of the window (its number, the body), oldest
        # first: their least is what the server does when not busy (see _baseline).
        self.baselines: collections.deque[tuple[int, float]] = collections.deque()


class PercentileDelaysProvider(RequestAttemptDelaysProvider):
    """Delays hedge ``k`` by ``k`` times a percentile of recent successful latencies of that request.

    Hedging after the 95th percentile sends about 5% more requests and takes away most of the tail
    above it. Latencies are kept per method and URL template over ``window_seconds`` (at most
    ``max_samples`` of them), for at most :attr:`MAX_TEMPLATES` templates (the ones past it share
    one record); until ``min_samples`` it may take are seen, ``min_delay_seconds`` is used. The
    percentile is recomputed at most every ``refresh_seconds`` or after 5% new samples, so
    asking for a delay costs a dictionary look-up.

    ``min_delay_seconds`` defaults to 10 ms, not aio-request's 50 ms: a 50 ms floor keeps a service
    answering in milliseconds from being hedged before 50 ms, which leaves most of its tail in place.

    ``saturation_ratio`` (None: off): when the 75th percentile of the latencies of the last two
    seconds (the body of them, :attr:`BODY`, :attr:`RECENT_SECONDS`) rises above this many times the
    baseline (the lowest body of the whole window learned within the last ``window_seconds``, kept
    per tenth of the window so that a body counts for one to 1.1 windows after it was learned, like
    the minimum RTT of Envoy's adaptive concurrency filter: a server slower for longer than a window
    is the server as it now is) and above half of ``min_delay_seconds`` (:attr:`BODY_FLOOR`), the
    server is taken to be saturated and the delay of that template is ``max_delay_seconds``: no
    hedges while a hedge would add load to a server that is slow because it has too much of it. They
    come back once it falls below again, at the delay learned without the latencies that came while
    they were held (the saturated ones, which would keep the delay at their level for a window; with
    fewer than ``min_samples`` others left, the delay learned before). With the ratio on, the window is at least
    :attr:`MIN_SATURATION_WINDOW`: a window little longer than the recent seconds judged against it
    has a baseline as recent as they are, and held nothing (10% of a 10 s saturation with 3 s).

    The floor is a share of the shortest delay, not the delay itself: a body that has grown from 4 ms
    to 20 ms is a server queueing, and queueing spreads latencies, so ever more attempts pass a 50 ms
    delay and are hedged (benchmarks/load.py stalled so, with the body judged against the whole
    50 ms); below half of it, a few times a small body is jitter (or queueing too short to matter)
    that sends few attempts past the delay. A quarter held hedges back at half load in
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
    MIN_SATURATION_WINDOW = 10 * RECENT_SECONDS  # the shortest window_seconds with saturation_ratio
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
        if min_samples > max_samples:
            # The record never held min_samples latencies: the delay stayed at its floor for ever.
            raise ValueError(f"min_samples ({min_samples}) must not be above max_samples ({max_samples})")
        if refresh_seconds < 0:
            raise ValueError(f"refresh_seconds must be >= 0, not {refresh_seconds!r}")
        if saturation_ratio is not None and not saturation_ratio > 1:
            raise ValueError(f"saturation_ratio must be above 1 or None, not {saturation_ratio!r}")
        if saturation_ratio is not None and window_seconds < self.MIN_SATURATION_WINDOW:
            raise ValueError(
                f"window_seconds must be at least {self.MIN_SATURATION_WINDOW:g} with saturation_ratio, not"
                f" {window_seconds!r}: the baseline is the least body of the window"
            )
        self.percentile = percentile
        self.saturation_ratio = saturation_ratio
        self.min_delay_seconds = min_delay_seconds
        self.max_delay_seconds = max_delay_seconds
        self._window = window_seconds
        self._max_samples = max_samples
        self._min_samples = min_samples
        self._refresh = refresh_seconds
        self._lock = threading.Lock()
        _renewed_in_forked_child(self)
        self._samples: dict[tuple[str, str], _Samples] = {}
        self._others = _Samples(max_samples)  # the templates past MAX_TEMPLATES, pooled
        self._swept_at = float("-inf")

    def __call__(self, request: Request, attempt: int) -> float:
        return self.delay(request) * attempt

    def delay(self, request: Request) -> float:
        """The current hedge delay for ``request`` (attempt 1)."""
        return self._delay(request)[0]

    def saturated(self, request: Request) -> bool:
        """Whether the delay for ``request`` is held at ``max_delay_seconds`` for saturation (not
        merely learned that long, nor floored there by ``min_delay_seconds``)."""
        return self.saturation_ratio is not None and self._delay(request)[1]

    def _delay(self, request: Request) -> tuple[float, bool]:
        key = (request.method, request.url)
        with self._lock:
            samples = self._samples.get(key)
            now = time.monotonic()
            if samples is None:
                if len(self._samples) < self.MAX_TEMPLATES or not self._others.latencies:
                    return self.min_delay_seconds, False
                samples = self._others  # may be where its latencies went (see observe)
            # A record never computed has all its latencies new (since_cached): computed at once.
            if now - samples.cached_at >= self._refresh or samples.since_cached * 20 >= len(samples.latencies):
                samples.cached, samples.body, samples.recent_body = self._compute(samples, now)
                if not samples.latencies and samples is not self._others:
                    del self._samples[key]  # every sample left the window: nothing to keep
                    return self.min_delay_seconds, False
                samples.cached_at = now
                samples.since_cached = 0
                baseline = self._track_baseline(samples, now)
                body = samples.recent_body
                held = (
                    body is not None
                    and self.saturation_ratio is not None
                    and baseline is not None
                    and body > self.saturation_ratio * baseline
                    and body > self.BODY_FLOOR * self.min_delay_seconds
                )
                if held and not samples.held:
                    self._hold_recent(samples, now)
                samples.held = held
            value, saturated = samples.cached, samples.held
        if saturated:
            return self.max_delay_seconds, True
        if value is None:
            return self.min_delay_seconds, False
        return min(self.max_delay_seconds, max(self.min_delay_seconds, value)), False

    def observe(self, request: Request, response: Response) -> None:
        """Learn from a successful response, from an attempt abandoned for a faster one, and from an
        attempt its deadline ended.

        The time of the last two is only a lower bound of their latency, but leaving them out would
        leave out exactly the slow tail: without abandoned ones the provider would hedge too early,
        and without the deadline's a server too slow to answer within it would never be seen as
        saturated (every call hedged into it, twice the load on a stalled server). The deadline's are
        for the body and saturation only, not the hedging percentile: a few percent of calls timing
        out (two such latencies each, attempt 0's and its hedge's) pushed the p95 to the deadline and
        stopped the hedges that would have cured the rest of the tail.

        A strategy passes an abandoned attempt only when another attempt of the same call settled
        it: one abandoned with its call (a caller that gave up) says nothing of the server; nor does
        an attempt that never had a connection (:class:`UnsentResponse`). A latency that is not a
        finite number of seconds >= 0 (a custom transport's) is not learned: one NaN made the
        baseline NaN and saturation never held.
        """
        elapsed = response.elapsed
        if not (isinstance(elapsed, int | float) and 0 <= elapsed < math.inf):
            return
        timed_out = ran_out_of_time(response)
        if not (timed_out or response.is_successful() or is_abandoned(response)) or isinstance(
            response, UnsentResponse
        ):
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
            samples.latencies.append((now, elapsed, not (timed_out or samples.held)))
            samples.since_cached += 1

    def _recent_count(self, samples: _Samples, now: float) -> int:
        """(Holding ``_lock``.) How many of the newest latencies are the recent ones (see _compute)."""
        latencies, since = samples.latencies, now - self.RECENT_SECONDS
        least = max(self.RECENT_SAMPLES, self._min_samples)
        count = 0
        for at, _, _ in reversed(latencies):
            if at < since and count >= least:
                break
            count += 1
        return count

    def _hold_recent(self, samples: _Samples, now: float) -> None:
        """(Holding ``_lock``.) Saturation was just seen in the recent latencies: count them among
        those learned while held, which the hedging percentile leaves out. Otherwise the ones that
        came before it was seen (up to a second of them at 100 calls a second, 10 s of them at 5)
        kept the delay after the saturation at their level for most of a window."""
        latencies = samples.latencies
        end = len(latencies)
        for index in range(end - self._recent_count(samples, now), end):
            at, latency, _ = latencies[index]
            latencies[index] = (at, latency, False)

    def _sweep(self, now: float) -> None:
        """(Holding ``_lock``.) Drop the records whose latest sample has left the window."""
        self._swept_at = now
        stale = [key for key, samples in self._samples.items() if not self._in_window(samples, now)]
        for key in stale:
            del self._samples[key]

    def _in_window(self, samples: _Samples, now: float) -> bool:
        return bool(samples.latencies) and now - samples.latencies[-1][0] <= self._window

    def _track_baseline(self, samples: _Samples, now: float) -> float | None:
        """(Holding ``_lock``.) Add the body just computed; the least body of the last window.

        A sliding minimum, in tenths of the window: a single minimum re-measured every window (as
        it was) could be re-measured in the middle of a saturation, which then became the baseline
        and hedges went back into it (a 10 minute saturation was held for its first 5 minutes at
        most, 11 s of it when it began 10 s before the re-measure)."""
        tenth = self._window / 10
        number = math.floor(now / tenth)
        baselines = samples.baselines
        while baselines and baselines[0][0] < number - 10:  # its tenth ended more than a window ago
            baselines.popleft()
        value = samples.body
        if value is not None:
            if baselines and baselines[-1][0] == number:
                if value < baselines[-1][1]:
                    baselines[-1] = (number, value)
            else:
                baselines.append((number, value))
        return min((least for _, least in baselines), default=None)

    def _compute(self, samples: _Samples, now: float) -> tuple[float | None, float | None, float | None]:
        """The percentile and the body (:attr:`BODY`) of the latencies in the window, and the body of
        the recent ones (:attr:`RECENT_SECONDS`, at least :attr:`RECENT_SAMPLES`); Nones: too few yet.

        The percentile leaves out the latencies that came while hedges were held for saturation and
        those a deadline ended (see :meth:`observe`): the delay after a saturation is the one learned
        before it, not the saturated latencies' for the rest of the window. With fewer than
        ``min_samples`` others it is the last one taken from enough of them (the floor, before any
        was): falling back on every latency put the delay at the deadline for a template whose
        first calls timed out, and at the saturated latencies for a second after a hold that had
        filled the window."""
        latencies = samples.latencies
        while latencies and now - latencies[0][0] > self._window:
            latencies.popleft()
        if len(latencies) < self._min_samples:
            return None, None, None
        ordered = sorted(latency for _, latency, _ in latencies)
        usable = ordered
        if not all(taken for _, _, taken in latencies):
            usable = sorted(latency for _, latency, taken in latencies if taken)
        if len(usable) >= self._min_samples:
            samples.learned = _nearest_rank(usable, self.percentile)
        recent = sorted(
            latency for _, latency, _ in itertools.islice(reversed(latencies), self._recent_count(samples, now))
        )
        return samples.learned, _nearest_rank(ordered, self.BODY), _nearest_rank(recent, self.BODY)


def _new_lock(provider: PercentileDelaysProvider) -> None:
    """A lock a parent thread held at the fork stays held in the child, whose every hedged call then
    waited on it (the delays are worked out in the caller's thread): a new one. What was learned stays."""
    provider._lock = threading.Lock()


_renewed_in_forked_child = renewed_in_forked_child(_new_lock)
