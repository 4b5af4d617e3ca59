"""A thread pool whose waiting work is taken by rank (lowest first), then in arrival order.

The drop-in for ``concurrent.futures.ThreadPoolExecutor`` in gunicorn's gthread worker
(``server/priority_worker.py``): gunicorn submits one item per request and the pool's queue is where
requests wait for a thread. A first-come queue makes a high-priority request wait behind every
low-priority one that came before it, which nothing in the process can reorder once a thread has
taken them; this one hands a freed thread to the best-ranked item.

Each item runs with :func:`queued_for` telling how long it waited in this queue (the application
wrapper of the worker takes it off the request's ``X-Request-Timeout``), and :func:`ran_expired`
telling whether it was run because it expired while every thread was busy (see the class).
"""

import heapq
import itertools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

from django_aio_request.transport.deadline_timer import deadline_timer

__all__ = ["PriorityThreadPool", "queued_for", "ran_expired", "take_queued_for"]

logger = logging.getLogger(__name__)
_local = threading.local()


def queued_for() -> float:
    """Seconds the item running on this thread waited in its pool's queue (0 outside a pool item)."""
    return getattr(_local, "waited", 0.0)


def take_queued_for() -> float:
    """:func:`queued_for`, once: later calls in the same item get 0 (an HTTP/2 connection is one item
    serving many requests, and only its first waited in the queue)."""
    waited = getattr(_local, "waited", 0.0)
    _local.waited = 0.0
    return waited


def ran_expired() -> bool:
    """Whether the item running on this thread expired in the queue while every thread of the pool
    was busy, and runs on a thread of its own (:class:`PriorityThreadPool`): it must only be refused."""
    return getattr(_local, "expired", False)


def _done() -> None:
    pass


class _Item:
    __slots__ = ("args", "fn", "future", "kwargs", "queued_at", "rank", "taken")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], rank: int) -> None:
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.rank = rank
        self.future: Future[Any] = Future()
        self.queued_at = time.monotonic()
        self.taken = False


class PriorityThreadPool(Executor):
    """At most ``max_workers`` threads, started as work arrives and none is idle.

    ``rank(args)`` gives an item's rank (lower runs first) and when it expires (``time.monotonic()``;
    ``math.inf``: never) from its positional arguments. An item that expired while it waited is
    taken before any other: for a request that is the caller's deadline gone, and serving it means
    a quick refusal, where leaving it would hold a caller that did not give up for as long as
    better-ranked work keeps coming. ``on_length(rank, count)`` is told each time the number of
    waiting items of a rank changes (with the pool's lock held: it must be quick and never call the
    pool), ``on_start(rank, waited)`` when an item starts (PriorityThreadWorker's metrics).

    An item still waiting when it expires (every thread busy all that time) does not wait for a
    thread either: it is run then on a thread of its own, with :func:`ran_expired` true, so that the
    refusal it stands for is answered at its time. Taken only by the next free thread, a request with
    a 2 s deadline was refused 2.8 s after it came, when a 3 s view ended (a review). At most
    ``max_workers`` such threads run at once; beyond them an expired item waits for a thread as before.
    Like ``ThreadPoolExecutor``: :meth:`shutdown` lets the threads finish what is queued unless
    ``cancel_futures``; the threads are not daemons, so the interpreter waits for the work in hand.
    """

    def __init__(
        self,
        max_workers: int,
        rank: Callable[[tuple[Any, ...]], tuple[int, float]],
        name: str = "priority-pool",
        *,
        on_length: Callable[[int, int], None] | None = None,
        on_start: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, not {max_workers!r}")
        self._max_workers = max_workers
        self._rank = rank
        self._name = name
        self._on_length = on_length  # (rank, items of that rank waiting), called with the lock held
        self._on_start = on_start  # (rank, seconds waited), called on the item's thread before it runs
        self._by_rank_count: dict[int, int] = {}
        self._by_rank: list[tuple[int, int, _Item]] = []
        self._by_expiry: list[tuple[float, int, _Item]] = []  # only items that expire
        self._waiting = 0
        self._arrivals = itertools.count()
        self._lock = threading.Lock()  # held only to push and pop: nobody waits under it
        # One token per item submitted (None: a thread is to end): threads block on this C queue, as
        # ThreadPoolExecutor's do, then take the best item from the heaps.
        self._tokens: queue.SimpleQueue[bool | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)  # released by each thread that waits for work
        self._threads: list[threading.Thread] = []
        self._closed = False
        # The deadline timer's entry at the earliest expiry of the items waiting (one at a time).
        self._armed_at = math.inf
        self._disarm: Callable[[], None] | None = None
        self._expired_running = 0  # items run on threads of their own because they expired

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> "Future[Any]":
        rank, expires_at = self._rank(args)  # outside the lock: it may read a socket
        item = _Item(fn, args, kwargs, rank)  # its expiry is kept in the heap it is pushed on
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            arrival = next(self._arrivals)
            heapq.heappush(self._by_rank, (rank, arrival, item))
            if expires_at != math.inf:
                heapq.heappush(self._by_expiry, (expires_at, arrival, item))
                if expires_at < self._armed_at:
                    self._arm(expires_at)
            self._waiting += 1
            self._counted(rank, 1)
        self._tokens.put(True)
        # An idle thread takes it; else a new thread, up to max_workers (as ThreadPoolExecutor).
        if not self._idle.acquire(timeout=0):
            with self._lock:
                if len(self._threads) < self._max_workers:
                    thread = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads)}")
                    self._threads.append(thread)
                    thread.start()
        return item.future

    def waiting(self) -> int:
        """How many items wait for a thread."""
        with self._lock:
            return self._waiting

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            if self._disarm is not None:
                self._disarm()
                self._disarm, self._armed_at = None, math.inf
            if cancel_futures:
                for _, _, item in self._by_rank:
                    if not item.taken:
                        item.taken = True
                        self._counted(item.rank, -1)
                        item.future.cancel()
                self._by_rank.clear()
                self._by_expiry.clear()
                self._waiting = 0
            threads = list(self._threads)
        for _ in threads:  # after the items' tokens: what is queued is run first
            self._tokens.put(None)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()

    def _counted(self, rank: int, change: int) -> None:
        count = self._by_rank_count[rank] = self._by_rank_count.get(rank, 0) + change
        if self._on_length is not None:
            try:
                self._on_length(rank, count)
            except Exception:  # a metric that failed must not cost the request, nor the caller's loop
                logger.exception("%s: on_length failed", self._name)

    def _arm(self, due: float) -> None:
        """(Holding the lock.) The timer's entry at ``due``, in place of the later one set before."""
        if self._disarm is not None:
            self._disarm()
        self._armed_at = due
        self._disarm = deadline_timer.schedule(due, self._ring)

    def _ring(self) -> None:
        """On the deadline timer's thread (which must not wait): run each item that expired while it
        waited on a thread of its own, and set the entry for the next expiry."""
        expired = []
        with self._lock:
            self._armed_at, self._disarm = math.inf, None
            if self._closed:
                return
            expiring, now = self._by_expiry, time.monotonic()
            while expiring and (expiring[0][2].taken or expiring[0][0] <= now):
                item = heapq.heappop(expiring)[2]
                if item.taken:
                    continue
                if self._expired_running >= self._max_workers:
                    # Taken first by the next free thread, as before, or by a ring when one of those threads ends.
                    heapq.heappush(expiring, (now, next(self._arrivals), item))
                    break
                self._expired_running += 1
                self._mark_taken(item)
                expired.append(item)
            if expiring and expiring[0][0] > now:
                self._arm(expiring[0][0])
        for item in expired:
            thread = threading.Thread(target=self._run_expired, args=(item,), name=f"{self._name}-expired")
            thread.daemon = True  # a refusal: nothing to wait for at exit
            thread.start()

    def _run_expired(self, item: _Item) -> None:
        _local.expired = True
        try:
            self._run(item)
        finally:
            _local.expired = False
            with self._lock:
                self._expired_running -= 1
                if self._by_expiry and self._by_expiry[0][0] < self._armed_at and not self._closed:
                    # One left waiting for this thread rings at once: also when a later expiry has
                    # armed the timer meanwhile (it waited for that one, a review).
                    self._arm(self._by_expiry[0][0])

    def _mark_taken(self, item: _Item) -> None:
        """(Holding the lock.) ``item`` leaves the queue."""
        item.taken = True
        self._waiting -= 1
        self._counted(item.rank, -1)

    def _take(self) -> _Item:
        """The item to run next (called with the lock held and something waiting)."""
        expiring = self._by_expiry
        while expiring and expiring[0][2].taken:
            heapq.heappop(expiring)
        if expiring and expiring[0][0] <= time.monotonic():
            item = heapq.heappop(expiring)[2]
        else:
            while True:
                item = heapq.heappop(self._by_rank)[2]
                if not item.taken:
                    break
        self._mark_taken(item)
        # An item is in both heaps and leaves one of them when taken: drop the stale entries before
        # they outnumber the live ones (under a steady overload the other heap might never reach them).
        if len(self._by_rank) + len(self._by_expiry) > 4 * self._waiting + 64:
            self._by_rank = [entry for entry in self._by_rank if not entry[2].taken]
            self._by_expiry = [entry for entry in self._by_expiry if not entry[2].taken]
            heapq.heapify(self._by_rank)
            heapq.heapify(self._by_expiry)
        return item

    def _work(self) -> None:
        while True:
            if self._tokens.get() is None:
                return
            with self._lock:
                item = self._take() if self._waiting else None  # None: cancelled by shutdown
            if item is None:
                continue
            try:
                self._run(item)
            finally:
                self._idle.release()
            del item  # not kept alive while this thread waits for more

    def _run(self, item: _Item) -> None:
        if not item.future.set_running_or_notify_cancel():
            return
        _local.waited = waited = time.monotonic() - item.queued_at
        if self._on_start is not None:
            try:
                self._on_start(item.rank, waited)
            except Exception:  # a metric that failed must not cost the request
                logger.exception("%s: on_start failed", self._name)
        try:
            result = item.fn(*item.args, **item.kwargs)
        except BaseException as error:
            item.future.set_exception(error)
        else:
            item.future.set_result(result)
        finally:
            _local.waited = 0.0
            item.fn, item.args, item.kwargs = _done, (), {}  # its entry may linger in the other heap
