"""``PriorityThreadPool`` (``server/shedding/priority_pool.py``), the queue of PriorityThreadWorker:
real threads, work held in flight by gates."""

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from django_aio_request.server.shedding.priority_pool import PriorityThreadPool, queued_for, ran_expired

NEVER = math.inf


def by_argument(args: tuple[Any, ...]) -> tuple[int, float]:
    """Items submitted as ``(name, rank, expires_at)``."""
    return args[1], args[2]


@pytest.fixture
def pools() -> Iterator[Callable[..., PriorityThreadPool]]:
    made: list[PriorityThreadPool] = []

    def make(workers: int = 1) -> PriorityThreadPool:
        pool = PriorityThreadPool(workers, by_argument)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.shutdown(wait=True, cancel_futures=True)


class Recorder:
    def __init__(self) -> None:
        self.order: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, name: str, rank: int, expires_at: float) -> str:
        with self.lock:
            self.order.append(name)
        return name


class Concurrency:
    """How many items run at once (``running``) and the most that ever did (``peak``)."""

    def __init__(self) -> None:
        self.running = self.peak = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def counted(self) -> Iterator[None]:
        with self._lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        try:
            yield
        finally:
            with self._lock:
                self.running -= 1


def hold(pool: PriorityThreadPool) -> threading.Event:
    """Occupy the pool's one thread until the returned gate opens."""
    gate, started = threading.Event(), threading.Event()

    def blocker(name: str, rank: int, expires_at: float) -> None:
        started.set()
        gate.wait(10)

    pool.submit(blocker, "blocker", 0, NEVER)
    assert started.wait(5)
    return gate


def test_a_freed_thread_takes_the_best_rank_then_the_earliest_arrival(pools: Any) -> None:
    pool, record = pools(1), Recorder()
    gate = hold(pool)
    sent = [("low-1", 2), ("normal-1", 1), ("low-2", 2), ("high-1", 0), ("normal-2", 1), ("high-2", 0)]
    futures = [pool.submit(record, name, rank, NEVER) for name, rank in sent]
    gate.set()
    assert [f.result(5) for f in futures] == ["low-1", "normal-1", "low-2", "high-1", "normal-2", "high-2"]
    assert record.order == ["high-1", "high-2", "normal-1", "normal-2", "low-1", "low-2"]


def test_an_item_whose_time_ran_out_while_it_waited_goes_first(pools: Any) -> None:
    pool, record = pools(1), Recorder()
    gate = hold(pool)
    soon = time.monotonic() + 0.05
    pool.submit(record, "high", 0, NEVER)
    pool.submit(record, "low, expires later", 2, time.monotonic() + 60)
    last = pool.submit(record, "low, expired", 2, soon)
    time.sleep(0.1)
    gate.set()
    last.result(5)
    assert record.order[0] == "low, expired"
    pool.shutdown(wait=True)
    assert record.order == ["low, expired", "high", "low, expires later"]


def test_an_item_that_expires_while_every_thread_is_busy_runs_then_on_a_thread_of_its_own(pools: Any) -> None:
    """It waited for the next free thread: a request's refusal came when a 3 s view ended, long after
    its QUEUE_TIMEOUT and its deadline (a review). It runs at its expiry now, told so (ran_expired)."""
    pool = pools(1)
    gate = hold(pool)
    seen: list[tuple[str, bool, float]] = []

    def item(name: str, rank: int, expires_at: float) -> None:
        seen.append((name, ran_expired(), time.monotonic()))

    submitted = time.monotonic()
    pool.submit(item, "expires", 2, submitted + 0.1).result(5)  # while the pool's thread is held
    assert seen[0][:2] == ("expires", True)
    assert 0.1 <= seen[0][2] - submitted < 1.0
    gate.set()
    pool.submit(item, "on a free thread", 2, time.monotonic() + 60).result(5)
    assert seen[1][:2] == ("on a free thread", False)


def test_at_most_max_workers_expired_items_run_beside_the_busy_threads(pools: Any) -> None:
    pool = pools(1)
    gate, release = hold(pool), threading.Event()
    beside = Concurrency()

    def item(name: str, rank: int, expires_at: float) -> None:
        with beside.counted():
            release.wait(10)

    futures = [pool.submit(item, f"expires {n}", 2, time.monotonic() + 0.05) for n in range(3)]
    time.sleep(0.3)
    assert (beside.running, pool.waiting()) == (1, 2)  # one beside the held thread; the others wait
    release.set()
    for future in futures:  # each the next, as the one before ends (or the held thread, once freed)
        future.result(5)
    gate.set()
    assert beside.peak == 1


def test_an_expired_item_left_waiting_for_a_refusal_thread_runs_when_that_thread_ends(pools: Any) -> None:
    """One refusal thread busy (max_workers 1), a second item expired behind it, and a later expiry
    that set the timer meanwhile: the second waited for that later expiry (a review: 4.0 s where
    1.8 s was due). It runs as the busy refusal thread ends."""
    pool = pools(1)
    gate, release = hold(pool), threading.Event()
    started: dict[str, float] = {}

    def item(name: str, rank: int, expires_at: float) -> None:
        started[name] = time.monotonic()
        if name == "first":
            release.wait(10)

    now = time.monotonic()
    first = pool.submit(item, "first", 2, now + 0.05)
    second = pool.submit(item, "second", 2, now + 0.1)
    time.sleep(0.2)
    later = pool.submit(item, "later", 2, time.monotonic() + 1.5)  # sets the timer for 1.5 s from now
    time.sleep(0.1)
    released = time.monotonic()
    release.set()
    first.result(5)
    second.result(5)
    assert started["second"] - released < 0.5  # not when "later" expires, 1.2 s after the release
    later.result(5)
    gate.set()


def test_under_a_steady_flood_of_better_work_an_expiring_item_waits_only_until_it_expires(pools: Any) -> None:
    pool, record = pools(1), Recorder()
    stop = threading.Event()
    gate = hold(pool)
    expires = time.monotonic() + 0.2
    low = pool.submit(record, "low", 2, expires)

    def flood() -> None:  # always a high item waiting
        while not stop.is_set():
            pool.submit(lambda *a: time.sleep(0.01), "high", 0, NEVER).result(5)

    flooders = [threading.Thread(target=flood) for _ in range(3)]
    for thread in flooders:
        thread.start()
    time.sleep(0.05)
    gate.set()
    try:
        assert low.result(5) == "low"
        # At its expiry, on a thread of its own (the timer's clock: not before it; measured from after
        # submit() returned, it ran 3 ms "early" once), or at most one high item after it.
        assert expires <= time.monotonic() < expires + 0.4
    finally:
        stop.set()
        for thread in flooders:
            thread.join()


def test_each_item_knows_how_long_it_queued(pools: Any) -> None:
    pool = pools(1)
    gate = hold(pool)
    waited = pool.submit(lambda *a: queued_for(), "x", 1, NEVER)
    time.sleep(0.15)
    gate.set()
    assert 0.15 <= waited.result(5) < 2
    assert pool.submit(lambda *a: queued_for(), "y", 1, NEVER).result(5) < 0.1  # a free thread: no wait
    assert queued_for() == 0.0  # outside any pool item


def test_at_most_max_workers_threads_run_and_a_thread_starts_for_each_item_beyond_the_idle(pools: Any) -> None:
    pool = pools(3)
    threads, gate = Concurrency(), threading.Event()

    def work(*args: Any) -> None:
        with threads.counted():
            gate.wait(5)

    futures = [pool.submit(work, str(i), 1, NEVER) for i in range(8)]
    deadline = time.monotonic() + 5
    while threads.running < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert (threads.running, pool.waiting()) == (3, 5)  # three at once, without waiting for one to end
    gate.set()
    for future in futures:
        future.result(5)
    assert threads.peak == 3
    assert len([t for t in threading.enumerate() if t.name.startswith("priority-pool")]) <= 3


def test_an_exception_reaches_the_future_and_the_thread_goes_on(pools: Any) -> None:
    pool = pools(1)

    def fail(*args: Any) -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError):
        pool.submit(fail, "x", 1, NEVER).result(5)
    assert pool.submit(lambda *a: "after", "y", 1, NEVER).result(5) == "after"


def test_shutdown_finishes_what_is_queued_unless_told_to_cancel_it(pools: Any) -> None:
    pool, record = pools(1), Recorder()
    gate = hold(pool)
    kept = pool.submit(record, "queued", 1, NEVER)
    pool.shutdown(wait=False)
    with pytest.raises(RuntimeError):
        pool.submit(record, "late", 1, NEVER)
    gate.set()
    assert kept.result(5) == "queued"

    other, record = pools(1), Recorder()
    gate = hold(other)
    dropped = other.submit(record, "queued", 1, NEVER)
    other.shutdown(wait=False, cancel_futures=True)
    gate.set()
    other.shutdown(wait=True)
    assert dropped.cancelled()
    assert record.order == []


def test_many_threads_submitting_at_once_each_item_runs_exactly_once(pools: Any) -> None:
    pool = pools(4)
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def count(name: str, rank: int, expires_at: float) -> None:
        with lock:
            counts[name] = counts.get(name, 0) + 1

    def submit_many(thread: int) -> None:
        soon = time.monotonic() + 0.001
        futures = [pool.submit(count, f"{thread}-{i}", i % 3, soon if i % 2 else NEVER) for i in range(500)]
        for future in futures:
            future.result(10)

    submitters = [threading.Thread(target=submit_many, args=(t,)) for t in range(16)]
    for thread in submitters:
        thread.start()
    for thread in submitters:
        thread.join()
    assert len(counts) == 16 * 500
    assert set(counts.values()) == {1}
    assert pool.waiting() == 0


def test_entries_left_behind_in_the_other_heap_do_not_pile_up(pools: Any) -> None:
    """Items taken because they expired leave an entry in the by-rank heap (and the reverse); under a
    steady overload that heap may never reach them: they are dropped before they outnumber the live."""
    pool = pools(1)
    gate = hold(pool)
    for i in range(2000):  # a live high item beside each expired low one: the low are taken by expiry
        pool.submit(lambda *a: None, f"high-{i}", 0, NEVER)
        pool.submit(lambda *a: None, f"low-{i}", 2, time.monotonic() - 1)
    gate.set()
    deadline = time.monotonic() + 10
    while pool.waiting() > 1000 and time.monotonic() < deadline:
        time.sleep(0.001)
    # The items waiting first, then the entries: the worker goes on taking items meanwhile, which never
    # adds an entry, so the bound holds between the two; read the other way round it failed whenever
    # a loaded machine let the worker take many items in between (a CI run: 2,949 entries against 645).
    waiting = pool.waiting()
    entries = len(pool._by_rank) + len(pool._by_expiry)
    assert entries <= 4 * waiting + 64 + 2


def test_max_workers_below_one_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PriorityThreadPool(0, by_argument)
