"""Admission at the concurrency limit: serve now, wait in the priority queue, or refuse at once.

A request that finds a free slot (fewer than the slots in flight, one it may take, and nobody of
its priority or higher waiting) is served. Otherwise it waits in the :class:`~.queue.WaitQueue`
for at most ``queue_timeout`` seconds, and never longer than its own deadline allows (its
remaining time less the time a request takes to serve here: the median of the last 15, or
``min_time_to_serve`` if that is more). A request whose deadline leaves no time to wait is refused
at once (reason ``deadline``). Each freed slot goes to
the best waiter: the highest priority, then the earliest deadline.

Low priority never takes the last slots: from 2 slots on, a tenth of them, rounded up (1 of 2 to
10, 2 of 11 to 20, ...), are kept for normal and high priority. Low is what a caller can do without
(this package's clients send their hedges at low priority), so when the process is busy enough that
only those slots are free, a low request waits or is refused like one that found none, and the
next normal or high request finds a slot at once. A queue alone shed low first only among requests
that meet in it; under a threaded server whose limit is near its threads most requests wait in the
server's own first-come queue instead, and a benchmark saw billing refuse 0-0.9% of the hedges it
got against 0-12.9% of first attempts (docs/benchmarks.md, ``benchmarks/hedge_safety.py``).
Rounded up, not down: an earlier share of the slots reserved per priority rounded to nothing at
the small sizes servers commonly run (4 x 0.2 = 0).

Threads. A sync request holds a worker thread while it waits, and the server (gunicorn's gthread,
for one) hands requests to threads in arrival order from a queue this process cannot see. If every
thread waited here, nobody would take the next request off that queue, and a high-priority request
behind a flood of low ones would wait for the flood. So at most one sync request per slot may wait,
and never more than half the threads the slots leave free (the server's threads counted as the most
sync requests ever in here at once): one waiter per slot keeps every slot refilled, and more would
only hold threads that should be pulling. A probe (``limit.py``) lowers the slots to the minimum for
a few requests' time: meanwhile as many threads may wait or be served as were held at the limit it
lowered, so the requests the process was serving on them wait their turn instead of being refused
at once (sized by the probe's one slot, two of four were, at every probe). Unless the slots were
all taken nine tenths of the time lately (a flood keeps them so), normal and high requests may
wait on every spare thread whatever the rest of this rule says (``Limiter._lightly_loaded``). Past that, the worst
of the waiters and the newcomer is refused at once (reason ``capacity``) unless it is of high
priority. The other threads keep pulling
requests in, lower priorities are refused fast instead of blocking the way, and callers that honour
``Retry-After`` step back, which empties the queue nobody here can see. An async request (ASGI)
waits on a future and holds no thread.

Reasons a request is refused, as counted in ``aio_request_server_shed_total``: ``capacity`` (no slot
it may take, low priority finding only the kept ones, and no thread to wait on; or displaced by a
better request), ``queue_timeout`` (waited the longest
allowed), ``deadline`` (could not be served before its deadline).
"""

import asyncio
import bisect
import collections
import dataclasses
import math
import sys
import threading
import time
from collections.abc import Callable

from django_aio_request.core.priority import Priority
from django_aio_request.metrics import server as metrics
from django_aio_request.server.shedding.green_threads import green_threads
from django_aio_request.server.shedding.limit import AdaptiveLimit, Limit
from django_aio_request.server.shedding.queue import RANK, Waiter, WaitQueue

__all__ = ["ADMITTED", "REASONS", "Admission", "Limiter"]

REASON_CAPACITY = "capacity"
REASON_QUEUE_TIMEOUT = "queue_timeout"
REASON_DEADLINE = "deadline"
REASONS = (REASON_CAPACITY, REASON_QUEUE_TIMEOUT, REASON_DEADLINE)
_RTT_WEIGHT = 0.2  # of the newest sample in the moving mean of service times
_RECENT = 15  # service times whose median is what a request takes here (see Limiter._typical)
_KEPT_FROM_LOW = 0.1  # of the slots (rounded up, from 2 slots on) that low priority may not take
# Below this share of the time with every slot taken (a moving mean), a normal or high sync request
# that finds every slot taken may wait on a spare thread even where the room rule leaves none (see
# _room). In a flood the slots are never free (a freed one goes to the request waiting for it at
# once), so the mean climbs to 1 whatever the flood's size; at light load a slot is free most of the
# time. A count of arrivals (tried first: light under half the slots' capacity) was noisy at the
# rates a small service sees: with 2 threads, views computing 5 ms that took 20 ms on a busy machine
# and 20 requests a second, a random cluster of them read as load, and the requests overlapping it
# were refused (CI, 2026-12-03: 9 of 120).
_SATURATED = 0.9
# Once taken for a flood, the process stays so until the slots were taken under 0.8 of the time: while
# requests are refused at once nobody waits for a freed slot, and it stays free while a thread takes
# the next request in, so a flood of views of a few milliseconds keeps the mean at about 0.9 itself
# (a review: 66-80% of a flood's arrivals after the first saturation saw under 0.9, and normal
# requests waited on the spare thread again).
_CALM = 0.8
# The busy time is averaged over a span of about this many mean service times (an exponential
# moving mean), at least _MIN_BUSY_SPAN seconds, and at least _SPAN_LONGEST times the longest recent
# request (or the time since the last admission, while every slot is taken). A flood is taken for one
# after about 2.3 spans: 0.6 s for views of up to 50 ms, 1.2 s for 100 ms views, longer where some
# requests take far more than the rest. A stall is not: the process's CPU taken by others for 0.4 s
# while a request runs, or two slow requests in a row at light load (3% of requests taking 300 ms
# instead of 5 ms, 20 a second on 2 threads, the slot taken 28% of the time: read as a flood with
# the span of the mean alone, and up to 29 of about 200 refused, a review; none in 6 runs with
# three times the longest, 7 of 231 in one of 4 runs with twice), keep the slot taken for under a
# span of their own length. Capping what a long request counts for instead (tried) hid
# floods of such mixes: 5% of requests at 100 ms counted for 20 ms each, and a flood of them never
# reached 0.9 (a review). Not a span in mean service times alone: for views of a few milliseconds
# that is a few tens of milliseconds, and any stall read as a flood.
_SPAN_SERVICES = 5
_MIN_BUSY_SPAN = 0.25
_SPAN_LONGEST = 3
_LONGEST_MEMORY = 2.0  # seconds over which the longest recent request's time decays (by e)
# A request that has run this many typical service times (the median of the last _RECENT; at least
# _STALL_MIN seconds) is stalled: with a learned limit, it lends its slot to the next request (at
# most as many as the slots, so twice the limit at most run at once). A learned limit is what the
# process serves well at once, not a promise to run no more: at a limit of 1 (views that compute),
# one request stuck on a lock or a slow report held the only slot, and every other request, high
# priority too, waited QUEUE_TIMEOUT and was refused, for as long as it ran (a review: 0 of 26
# answered in 8 s, 4 to 8 threads idle), and a probe at a worker's start, or every PROBE_INTERVAL,
# did the same behind any long request in flight. MAX_CONCURRENCY (a FixedLimit) is the user's own
# bound: never lent.
_STALL_SERVICES = 4
_STALL_MIN = 0.1
_STALL_RECHECK = 0.05  # how often a waiter looks again, at most, under a learned limit (see _next_lend)
_RECHECKING = 20  # waiters who look again that often; with more, each looks less often (all: 400 times a second)
# A request that runs long because the CPU is saturated is no stall, and lending let such requests
# run two at once: with 2 threads and four callers of 200 ms CPU views beside eight of 5 ms ones, no
# fast request answered in time (a review; 20-25 a second, 86-90% of high priority, without
# lending). So nothing is lent while the process's threads took _CPU_SATURATED CPU seconds a second
# or more lately (measured over _CPU_SPAN at least), but by a sync request whose own thread took
# less than _LENDS_BELOW of its fair share of that CPU (the process's share over the requests in
# flight) over the last _OWN_SPAN to 2 * _OWN_SPAN seconds and since it was admitted: it waits (a
# lock, a query, a downstream) while the others compute; and then to normal and high priority only.
# Judged by the process's CPU alone, the borrowers' own work stopped the lending: at 0.8 CPU and
# more it went on and off a span at a time, and one request stuck on I/O halved what the process
# served (a review: 4 threads, 20 ms views, 73 answered and 124 refused in 3 s against 137 and 2
# without it). A twentieth: a thread that waits takes next to nothing, and under the GIL a thread
# that computes now and then gets no turn for a while (with a fifth, 8 requests computing at once
# lent a slot in 12 of 103 looks, a review). An async request shares the event loop's thread, whose
# CPU says nothing of it: the process's CPU alone decides.
_LENDS_BELOW = 0.05
_OWN_SPAN = 0.25
_LOOK_EVERY = 0.05  # seconds between two looks at the stalled requests' threads (_lent), at most
_CPU_SATURATED = 0.8
_CPU_SPAN = 0.25


# Linux: a thread's CPU clock, readable from any thread of the process, is a clock id made from its
# kernel id (what pthread_getcpuclockid() returns). Not pthread_getcpuclockid(threading.get_ident())
# itself: under gevent's patching get_ident() is a greenlet's number, which glibc would take for a
# pointer to a thread. A kernel id that is no thread of this process's is refused (EINVAL). Not read elsewhere.
_THREAD_CLOCKS = sys.platform.startswith("linux")


def _thread_clock() -> int:
    """The calling thread's CPU clock id (Linux's MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED))."""
    return (~threading.get_native_id() << 3) | 6


class _ThreadCpu:
    """What a sync request's thread has taken of the CPU (see _LENDS_BELOW): its CPU clock, the clock
    and ``time.monotonic()`` when it was admitted, and two later marks, the later moved on once
    _OWN_SPAN old."""

    __slots__ = ("admitted", "clock", "earlier", "later")

    def __init__(self, clock: int, cpu: float, wall: float) -> None:
        self.clock = clock
        self.admitted = self.earlier = self.later = (cpu, wall)

    def share(self) -> float | None:
        """The larger of its CPU seconds a second lately (since the earlier mark) and since it was
        admitted: a thread that computes gets no turn under the GIL for a while now and then, but
        not since it was admitted (with the recent share alone, 12 requests computing at once lent up
        to 2 slots in 11 of 65 looks). None when the marks are too young to tell, or the clock cannot
        be read (the thread ended)."""
        try:
            cpu = time.clock_gettime(self.clock)
        except OSError:
            return None
        wall = time.monotonic()
        if wall - self.later[1] >= 2 * _OWN_SPAN:
            # Not asked for that long (the CPU was not saturated meanwhile): marks that old would
            # average a request that waited and now computes over its wait, and it lent (a review).
            self.earlier = self.later = (cpu, wall)
            return None
        if wall - self.later[1] >= _OWN_SPAN:
            self.earlier, self.later = self.later, (cpu, wall)
        (since_cpu, since), (admitted_cpu, admitted) = self.earlier, self.admitted
        if wall - since < _OWN_SPAN:
            return None  # too short a time to tell (just admitted, or just marked again)
        return max((cpu - since_cpu) / (wall - since), (cpu - admitted_cpu) / (wall - admitted))


@dataclasses.dataclass(frozen=True, slots=True)
class Admission:
    """The limiter's answer: admitted (at ``admitted_at``), or refused with why and whether retrying can help."""

    admitted: bool
    reason: str | None = None
    retry_after: int = 0
    do_not_retry: bool = False
    admitted_at: float = 0.0
    waited: bool = False  # admitted after waiting for a slot (its caller may have gone meanwhile)


ADMITTED = Admission(True)


class Limiter:
    """The process's admission control for one ``SHEDDING`` setting (thread-safe, sync and async)."""

    def __init__(
        self,
        limit: Limit,
        *,
        queue_timeout: float = 0.5,
        min_time_to_serve: float = 0.01,
        retry_after: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.queue_timeout = queue_timeout
        self.min_time_to_serve = min_time_to_serve
        self.retry_after = retry_after
        self._clock = clock
        self._lock = threading.Lock()
        self._queue = WaitQueue()
        self._in_flight = 0
        self._running: list[float] = []  # when each admitted request was admitted, in order (see _lent)
        # Admitted at -> {thread ident: (its CPU clock, its CPU time and time.monotonic() then)}, for
        # the sync requests whose thread's CPU clock could be had: what _lent asks whether they compute.
        self._thread_cpu: dict[float, dict[int, _ThreadCpu]] = {}
        self._threads_looked_at = -math.inf  # time.monotonic() when _lent last looked at their CPU
        self._lenders = 0  # sync requests it found waiting then, of the first _lenders_of stalled
        self._lenders_of = 0
        self._threads = 0  # sync requests in the limiter now (admitted or waiting)
        self._threads_peak = 0  # the most there ever were: the server's threads, once it was busy
        self._service_time: float | None = None
        # The median of the last _RECENT service times: what a request takes here, for its deadline
        # (_bound) and for when it counts as stalled (_stall_after). Not the moving mean, which one
        # 10 s report among 5 ms views took to 2 s: the next requests with 0.3 s left were refused
        # at once as unservable in time (reason deadline, X-Do-Not-Retry) while the slot was free
        # again in 5 ms (a review: 9 in a row).
        self._recent: collections.deque[float] = collections.deque(maxlen=_RECENT)
        self._typical: float | None = None
        self._cpu_mark = (time.monotonic(), time.process_time())  # where the CPU share's current span began
        self._cpu_share = 0.0  # the process's CPU seconds per second over the last span (see _CPU_SATURATED)
        self._busy = 0.0  # the share of the time every slot was taken, a moving mean over _span()
        self._busy_at: float | None = None  # when _busy was brought up to date (None: nothing served yet)
        self._flooded = False  # _busy reached _SATURATED and has not come down to _CALM since
        self._last_admitted = 0.0  # when a request was last admitted (or granted a slot)
        self._longest = 0.0  # the longest recent service time, decaying over _LONGEST_MEMORY
        self._longest_at = 0.0
        self._published_limit = -1
        #: Whether a sync request's thread is its own: not under gevent or eventlet (green_threads.py),
        #: where its CPU is not measured (``release(cpu=None)``) nor its thread's clock read (_lent).
        self.measures_thread_cpu = not green_threads()

        metrics.shedding_limit.set(limit.current)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def slots(self) -> int:
        """How many requests may be served at once now (the limit, or one less than the server's threads)."""
        with self._lock:
            return self._slots()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def service_time(self) -> float | None:
        """The moving mean of the time admitted requests took, or None before the first."""
        return self._service_time

    # Sync requests (one thread each).

    def acquire(self, priority: Priority, deadline: float) -> Admission:
        """A slot for a sync request with ``deadline`` (``time.monotonic()`` seconds); blocks while it waits.

        ``deadline`` is when its caller stops waiting; ``math.inf`` when that is not known (no
        ``X-Request-Timeout``): it then waits up to ``queue_timeout``, after those of its priority
        that have one, and is never refused for its deadline nor told not to retry.

        An admitted request must be :meth:`release`\\ d exactly once, with ``thread=True``.
        """
        now = self._clock()
        with self._lock:
            self._threads += 1
            self._threads_peak = max(self._threads_peak, self._threads)
            outcome = self._enter(priority, deadline, now, None)
            if isinstance(outcome, Admission):
                if outcome.admitted:
                    self._note_thread(outcome.admitted_at)
                else:
                    self._threads -= 1
                return outcome
        waiter, bound, reason = outcome
        ends, gives_up = now + bound, time.monotonic() + bound  # the latter: a test's clock may stand still
        while True:
            timeout, lends_at = self._next_wait(ends)
            waiter.wait(timeout)
            if self._done_waiting(waiter, ends, lends_at, gives_up):
                break
        with self._lock:
            admission = self._leave(waiter, reason)
            if admission.admitted:
                self._note_thread(admission.admitted_at)
            else:
                self._threads -= 1
        return admission

    # Async requests (ASGI).

    async def aacquire(self, priority: Priority, deadline: float) -> Admission:
        """As :meth:`acquire`, waiting without blocking the event loop; release with ``thread=False``."""
        now = self._clock()
        with self._lock:
            outcome = self._enter(priority, deadline, now, asyncio.get_running_loop())
        if isinstance(outcome, Admission):
            return outcome
        waiter, bound, reason = outcome
        ends, gives_up = now + bound, time.monotonic() + bound  # the latter: a test's clock may stand still
        try:
            while True:
                timeout, lends_at = self._next_wait(ends)
                await waiter.await_(timeout)
                if self._done_waiting(waiter, ends, lends_at, gives_up):
                    break
        except BaseException:  # cancelled (the client went away): give back what was granted
            with self._lock:
                if waiter.granted:
                    self._give_back(waiter.since)
                elif not waiter.evicted:
                    self._queue.remove(waiter)
                    self._published_queue(waiter.priority)
            raise
        with self._lock:
            return self._leave(waiter, reason)

    def release(self, admitted_at: float, *, thread: bool, cpu: float | None = None, downstream: float = 0.0) -> None:
        """The admitted request admitted at ``admitted_at`` is done: learn from its time, give its slot on.

        ``cpu``: the CPU time the request's thread spent serving it (``time.thread_time()``), if known;
        ``downstream``: the time it waited on calls made through this package's clients.
        """
        now = self._clock()
        with self._lock:
            if self._in_flight <= 0:
                raise RuntimeError("release() without an admitted request")
            if thread:
                self._threads -= 1
                self._forget_thread(admitted_at)
            self._tally(now, self._slots())
            rtt = now - admitted_at
            try:
                self.limit.sample(rtt, self._in_flight, admitted_at, now, cpu, downstream=downstream)
            finally:  # whatever learning does, the slot is given back (a lost one is never found again)
                self._in_flight -= 1
                self._forget(admitted_at)
                previous = self._service_time
                self._service_time = rtt if previous is None else previous + _RTT_WEIGHT * (rtt - previous)
                recent = self._recent
                recent.append(rtt)
                ordered, middle = sorted(recent), len(recent) // 2  # statistics.median, without its overhead
                self._typical = ordered[middle] if len(recent) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
                self._measure_cpu()
                if self._busy_at is None:  # the first request served: the busy time is counted from here on
                    self._busy_at = now  # (and its time, a cold start's, is no measure of the longest)
                else:
                    decayed = self._longest * math.exp(-(now - self._longest_at) / _LONGEST_MEMORY)
                    self._longest = max(rtt, decayed)
                    self._longest_at = now
                self._grant(now)

    def give_back(self, admitted_at: float, *, thread: bool) -> None:
        """A slot granted at ``admitted_at`` goes unused (the caller went away while the request
        waited for it): given on, and nothing learned from it, since no view ran in it."""
        with self._lock:
            if self._in_flight <= 0:
                raise RuntimeError("give_back() without an admitted request")
            if thread:
                self._threads -= 1
                self._forget_thread(admitted_at)
            self._give_back(admitted_at)

    # Under the lock.

    def _give_back(self, admitted_at: float) -> None:
        now = self._clock()
        self._tally(now, self._slots())
        self._in_flight -= 1
        self._forget(admitted_at)
        self._grant(now)

    def _enter(
        self, priority: Priority, deadline: float, now: float, loop: asyncio.AbstractEventLoop | None
    ) -> Admission | tuple[Waiter, float, str]:
        """Admitted or refused now, or the waiter queued with how long it may wait and why it would be refused."""
        slots = self._slots()
        self._tally(now, slots)
        if self._queue.best() is not None:
            self._grant(now)  # a request in flight may have stalled since the queue was last served
        counted = self._in_flight - self._lent(now, slots, priority)
        if counted < slots:
            best = self._queue.best()
            open_to = self._open_to(priority, slots)
            # Nobody as good waits for a slot.
            if counted < open_to and (best is None or RANK[priority] < RANK[best.priority]):
                self._in_flight += 1
                self._last_admitted = now
                bisect.insort(self._running, now)
                return Admission(True, admitted_at=now)
            if counted >= open_to:
                self._held_back(slots)  # also behind a low request waiting already (ASGI: a review)
        bound, reason = self._bound(deadline, now)
        if bound <= 0:  # no time to wait: the deadline's doing, or QUEUE_TIMEOUT 0's (no queue at all)
            return self._refuse(priority, reason, deadline - now)
        waiter = Waiter(priority, deadline, now, loop=loop)
        queue = self._queue
        queue.push(waiter)
        if loop is None:
            slots = self._slots()
            room = self._room(slots)
            light_room = self._threads_peak - slots  # every spare thread
            if priority is not Priority.LOW and room < light_room and self._lightly_loaded():
                room = light_room
            while len(queue) > room and (worst := queue.worst()).priority is not Priority.HIGH:
                queue.remove(worst)
                self._published_queue(worst.priority)
                if worst is waiter:
                    return self._refuse(priority, REASON_CAPACITY, deadline - now)
                worst.evicted = True
                worst.wake()
        self._published_queue(priority)
        return waiter, bound, reason

    def _slots(self) -> int:
        """How many may be served at once now: the limit, but one thread short of the server's threads
        when the learned limit reaches them and the views mostly compute.

        At a limit of every thread no thread is left to take the next request off the server's own
        first-come queue, and priority orders nothing (measured with 2 threads and CPU views: the
        limit reached 2, and the high-priority p99 went from 1.1x to 3.5x the unloaded one). For views
        that compute, one request at a time keeps the CPU as busy, so the thread costs nothing.
        Views that also wait keep every thread: one left idle cost a fifth of the goodput with 2 and
        4 threads when 5% of requests wait 150 ms (each wait held one of the fewer slots).
        """
        return self._slots_at(self.limit.current)

    def _slots_at(self, current: int) -> int:
        """The slots a limit of ``current`` gives (see :meth:`_slots`)."""
        limit = self.limit
        threads = self._threads_peak
        if isinstance(limit, AdaptiveLimit) and 2 <= threads <= current and limit.computes:
            return max(limit.minimum, threads - 1)
        return current

    def _room(self, slots: int) -> int:
        """How many sync requests may wait for ``slots`` (see the module docstring).

        One waiter per slot refills every slot once; more would only hold threads that should be
        pulling requests in, and at least half the spare threads do. During a probe the slots are
        the probe's few for a few requests' time, not what the process can serve: as many threads
        as it held at the limit the probe lowered (serving, or waiting as above) are held now,
        serving or waiting, so that a probe makes requests wait instead of refusing at once what
        the process was serving before it (with 4 threads and 4 callers, a limit of 1 left room for
        1 waiter and refused 2 of 4 requests at every probe).
        """
        threads = self._threads_peak
        # Rounded down on purpose: a single spare thread keeps pulling (measured: with 2 threads
        # letting it wait instead took the high-priority p99 from 1.9x to 7x the unloaded one).
        room = min(slots, (threads - slots) // 2)
        limit = self.limit
        if isinstance(limit, AdaptiveLimit) and limit.probing:
            before = self._slots_at(limit.learned)
            held = before + max(0, min(before, (threads - before) // 2))
            room = max(room, held - max(slots, self._in_flight))  # those admitted before it still run
        return room

    def _lightly_loaded(self) -> bool:
        """Whether every slot was taken less than nine tenths of the time over the last five service
        times or so (and at least a quarter of a second), by the requests served so far; once it
        was, until they are taken less than 0.8 of the time (see _CALM).

        Then normal and high requests may wait for a slot on every spare thread (bounded by their
        deadline and ``queue_timeout`` as ever), even where :meth:`_room` keeps half of them or all
        pulling requests in: that is for a flood, when requests waiting here keep the next ones in
        the server's queue. At light load it refused the requests that happened to overlap another
        (with 2-4 threads and views that compute 5 ms, a learned limit of 1 and 10-20 requests a
        second: 4-10% of them, answered 503 at 7-15% CPU), and one waiter per slot still refused
        clusters of three or four on 4 threads; a request coming while every thread waits here
        waits in the server's queue for a request's time or two. Before the first request was
        served, too: the requests that queued in the server while a worker started come in
        together, and the room rule refused them (8-16 threads, 50 ms views, 60 requests a second:
        15-26 answered 503 in the first 0.4 s, a review). Low priority (what a caller can do without: hedges)
        keeps the rule: the first moments of a flood after a quiet spell look like light load here
        (see _SATURATED), and lows waiting then held the spare thread while high-priority
        requests queued behind them in the server.
        """
        return not self._flooded

    def _tally(self, now: float, slots: int) -> None:
        """Bring the moving mean of the busy time up to ``now``: call before ``_in_flight`` changes.

        Every slot counts as taken while ``_in_flight`` is at ``slots`` or more, or every thread
        serves (a probe lowers the slots below what runs; a learned limit may rise above the
        server's threads, and a flood then left no slot ever taken and was taken for light load,
        a review). Counting starts with the first request served: before, the
        process's first request (imports, a cold cache: half a second and more under gunicorn on a
        busy machine) would read as a flood.
        """
        since = self._busy_at
        if since is None:  # nothing served yet (see release())
            return
        elapsed = now - since
        if elapsed <= 0:
            return
        threads = self._threads_peak
        # Anyone waiting found no slot it may take (the last slots are kept from low priority, and
        # stay free while only lows wait): that counts as full too.
        full = self._in_flight >= (min(slots, threads) if threads else slots) or len(self._queue) > 0
        span = self._span(now - self._last_admitted if full else 0.0)
        taken = 1.0 if full else 0.0
        self._busy = busy = taken + (self._busy - taken) * math.exp(-elapsed / span)
        self._busy_at = now
        self._flooded = busy >= (_CALM if self._flooded else _SATURATED)

    def _span(self, running: float) -> float:
        """Seconds over which the busy time is averaged (see _SPAN_SERVICES); ``running``: how long
        every slot has been taken without a new admission."""
        longest = max(running, self._longest)
        return max(_MIN_BUSY_SPAN, _SPAN_SERVICES * (self._service_time or 0.0), _SPAN_LONGEST * longest)

    @staticmethod
    def _open_to(priority: Priority, slots: int) -> int:
        """How many of ``slots`` a request of ``priority`` may find taken and still be admitted."""
        if priority is Priority.LOW and slots >= 2:
            return slots - math.ceil(slots * _KEPT_FROM_LOW)
        return slots

    def _bound(self, deadline: float, now: float) -> tuple[float, str]:
        """How long a request may wait, and the reason it is refused if it waited that long for nothing."""
        need = max(self.min_time_to_serve, self._typical or 0.0)
        budget = deadline - now - need
        if budget < self.queue_timeout:
            return budget, REASON_DEADLINE
        return self.queue_timeout, REASON_QUEUE_TIMEOUT

    def _leave(self, waiter: Waiter, reason: str) -> Admission:
        now = self._clock()
        if waiter.granted:
            return Admission(True, admitted_at=waiter.since, waited=True)  # since: set to the grant's time
        if waiter.evicted:
            reason = REASON_CAPACITY
        else:
            self._queue.remove(waiter)
            self._published_queue(waiter.priority)
        return self._refuse(waiter.priority, reason, waiter.deadline - now)

    def _refuse(self, priority: Priority, reason: str, remaining: float) -> Admission:
        # Retrying cannot help when the deadline is the reason, or it ends before the caller may retry.
        do_not_retry = reason == REASON_DEADLINE or remaining < self.retry_after
        return Admission(False, reason, self.retry_after, do_not_retry)

    def _grant(self, now: float) -> None:
        queue = self._queue
        slots = self._slots()
        lent = 0
        while (best := queue.best()) is not None and self._in_flight - (
            lent := self._lent(now, slots, best.priority)
        ) < self._open_to(best.priority, slots):
            waiter = queue.pop_best()
            self._in_flight += 1
            self._last_admitted = now
            bisect.insort(self._running, now)
            waiter.granted = True
            waited = now - waiter.since
            waiter.since = now  # from here on: when it was admitted
            metrics.shedding_waited(waiter.priority.value, waited)
            self._published_queue(waiter.priority)
            waiter.wake()
        if best is not None and self._in_flight - lent < slots:
            self._held_back(slots)  # the best waiting is low, and only the slots kept from low are free
        current = slots
        if current != self._published_limit:
            self._published_limit = current
            metrics.shedding_limit.set(current)

    def _held_back(self, slots: int) -> None:
        """A low request finds free only the slots kept from low: the limit counts as reached (see
        :meth:`AdaptiveLimit.held_back`), however many low ones wait already. Not when a thread is kept
        free below the limit (``_slots``): that limit was not reached."""
        if slots == self.limit.current:
            self.limit.held_back()

    def _stall_after(self) -> float:
        """How long a request runs before it counts as stalled (see _STALL_SERVICES)."""
        return max(_STALL_MIN, _STALL_SERVICES * (self._typical or 0.0))

    def _measure_cpu(self) -> None:
        """Bring the CPU share up to date once a span has passed (real time: the limiter's clock may be a test's)."""
        wall = time.monotonic()
        began, used = self._cpu_mark
        if wall - began >= _CPU_SPAN:  # the process's CPU clock read once a span, not at every release
            cpu = time.process_time()
            self._cpu_share = (cpu - used) / (wall - began)
            self._cpu_mark = (wall, cpu)

    def _lent(self, now: float, slots: int, priority: Priority) -> int:
        """How many slots stalled requests lend a request of ``priority`` now: none under a fixed
        limit, nor while the CPU is saturated but those of sync requests that wait (see
        _LENDS_BELOW), and those to normal and high priority only; at most ``slots``.

        The CPU share is brought up to date here too, not only as requests end: during a stall none
        ends, and the share of a busy spell before it (0.99) kept every slot from being lent for the
        whole stall while the CPU was idle (every request meanwhile refused after QUEUE_TIMEOUT)."""
        if not isinstance(self.limit, AdaptiveLimit):
            return 0
        stalled = bisect.bisect_right(self._running, now - self._stall_after())
        if not stalled:
            return 0
        self._measure_cpu()
        # The stalled requests' threads are looked at once in a while, not at every look: each look
        # reads every stalled thread's CPU clock, under the lock, and with 400 requests stalled a
        # refusal took 0.6-0.7 ms instead of 2-3 µs (a review).
        wall = time.monotonic()
        if self._cpu_share < _CPU_SATURATED:
            # Their marks kept current all the same: left as they were, the first look once the CPU
            # was saturated found them old (_ThreadCpu.share) and lent nothing for a span, the CPU
            # eased, lending went on again, and on and off it went as before.
            if wall - self._threads_looked_at >= _LOOK_EVERY:
                self._threads_looked_at = wall
                self._waiting_threads(stalled, math.inf)
            return min(stalled, slots)
        # Saturated: only the sync requests whose own thread waits while the others compute, and not
        # to low priority: requests that wait (stuck ones, what a caller can do without) borrowed the
        # slots stuck requests lent and held them, and high priority was refused where nothing lent
        # had served all of it (a review: 6 low callers of 4 s sleeps beside 20 ms views, 77-80% of high
        # answered in time against 100%).
        if priority is Priority.LOW:
            return 0
        if stalled != self._lenders_of or wall - self._threads_looked_at >= _LOOK_EVERY:
            self._threads_looked_at, self._lenders_of = wall, stalled
            self._lenders = self._waiting_threads(stalled, _LENDS_BELOW * self._cpu_share / max(1, self._in_flight))
        return min(self._lenders, slots)

    def _waiting_threads(self, stalled: int, below: float) -> int:
        """How many of the first ``stalled`` requests in flight are sync requests whose thread took
        less than ``below`` CPU seconds a second (_ThreadCpu.share, which also moves their marks)."""
        waiting = 0
        for admitted_at in sorted(set(self._running[:stalled])):  # each time once: requests admitted together
            for thread in self._thread_cpu.get(admitted_at, {}).values():
                share = thread.share()
                if share is not None and share < below:
                    waiting += 1
        return waiting

    def _note_thread(self, admitted_at: float) -> None:
        """The calling thread's request was admitted at ``admitted_at``: note its CPU clock (see _lent)."""
        if not (_THREAD_CLOCKS and self.measures_thread_cpu):
            return
        ident = threading.get_ident()
        try:
            clock = _thread_clock()
            cpu = time.clock_gettime(clock)
        except OSError:
            return
        self._thread_cpu.setdefault(admitted_at, {})[ident] = _ThreadCpu(clock, cpu, time.monotonic())

    def _forget_thread(self, admitted_at: float) -> None:
        """The request admitted at ``admitted_at`` is over: the calling thread's note of it goes (any
        such note if the thread that released it is not the one that was admitted)."""
        known = self._thread_cpu.get(admitted_at)
        if known is None:
            return
        if known.pop(threading.get_ident(), None) is None and known:
            known.popitem()
        if not known:
            del self._thread_cpu[admitted_at]

    def _next_lend(self, now: float) -> float:
        """When a waiter should look again whether a stalled request lends it a slot: when the next
        request in flight stalls, and at least every _STALL_RECHECK seconds, since a request served
        meanwhile moves the threshold (``math.inf`` under a fixed limit, which never lends)."""
        running = self._running
        if not isinstance(self.limit, AdaptiveLimit) or not running:
            return math.inf
        after = self._stall_after()
        stalled = bisect.bisect_right(running, now - after)
        # Thousands of async waiters each looking 20 times a second took 1.3 s of CPU in 1.75 s (a review).
        recheck = now + _STALL_RECHECK * max(1.0, len(self._queue) / _RECHECKING)
        if stalled >= len(running) or stalled >= self._slots():
            return recheck
        return min(recheck, running[stalled] + after)

    def _next_wait(self, ends: float) -> tuple[float, float]:
        """How long a waiter whose wait ends at ``ends`` waits now, and when it looks again for a lent slot."""
        with self._lock:
            lends_at = self._next_lend(self._clock())
        return max(0.0, min(ends, lends_at) - self._clock()), lends_at

    def _done_waiting(self, waiter: Waiter, ends: float, lends_at: float, gives_up: float) -> bool:
        """After a wait: whether it is over (granted, evicted, or its time is up); if not, a request in
        flight may have stalled meanwhile, and its slot is lent to the best waiter (_lent)."""
        if waiter.granted or waiter.evicted or lends_at >= ends or self._clock() >= ends:
            return True
        if time.monotonic() >= gives_up:
            return True
        with self._lock:
            self._grant(self._clock())
        return False

    def _forget(self, admitted_at: float) -> None:
        """A request admitted at ``admitted_at`` is no longer in flight."""
        running = self._running
        index = bisect.bisect_left(running, admitted_at)
        if index < len(running) and running[index] == admitted_at:
            del running[index]

    def _published_queue(self, priority: Priority) -> None:
        metrics.shedding_queue_length.labels(priority.value).set(self._queue.counts[priority])
