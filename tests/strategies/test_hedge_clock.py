"""One timer entry for the first hedges of a parallel strategy's calls (strategies/hedge_clock.py), on
its own, on the real process-wide timer thread. The hedges it launches are tested against a real
server in test_parallel_strategy.py."""

import os
import random
import threading
import time
from collections.abc import Callable

import pytest

from django_aio_request.strategies.hedge_clock import HedgeClock
from tests.support.steps import run_with_step


def _recorder(ran: list[tuple[str, float]], name: str, event: threading.Event | None = None) -> Callable[[], None]:
    def run() -> None:
        ran.append((name, time.monotonic()))
        if event is not None:
            event.set()

    return run


def test_each_runs_at_its_time_whatever_the_order_they_were_added_in() -> None:
    clock, ran, last = HedgeClock(), list[tuple[str, float]](), threading.Event()
    start = time.monotonic()
    clock.add(start + 0.15, _recorder(ran, "late", last))
    clock.add(start + 0.05, _recorder(ran, "early"))  # sooner than the entry set: the entry moves
    clock.add(start + 0.10, _recorder(ran, "middle"))
    assert last.wait(2)
    assert [name for name, _ in ran] == ["early", "middle", "late"]
    for (_, at), due in zip(ran, (0.05, 0.10, 0.15), strict=True):
        assert due <= at - start < due + 0.05
    assert len(clock) == 0


def test_one_taken_back_never_runs_and_the_others_still_do() -> None:
    clock, ran, done = HedgeClock(), list[tuple[str, float]](), threading.Event()
    start = time.monotonic()
    take_back = clock.add(start + 0.05, _recorder(ran, "taken back"))
    clock.add(start + 0.1, _recorder(ran, "kept", done))
    take_back()
    take_back()  # twice: nothing
    assert done.wait(2)
    time.sleep(0.05)
    assert [name for name, _ in ran] == ["kept"]


def test_one_added_after_the_earliest_was_taken_back_is_not_lost() -> None:
    """The entry was set for a call that ended: when it fires it finds nothing due and is set again
    for the earliest left, which must still run at its own time."""
    clock, ran, done = HedgeClock(), list[tuple[str, float]](), threading.Event()
    start = time.monotonic()
    clock.add(start + 0.03, _recorder(ran, "ended"))()
    clock.add(start + 0.12, _recorder(ran, "later", done))
    assert done.wait(2)
    assert [name for name, _ in ran] == ["later"]
    assert ran[0][1] - start >= 0.12


def test_a_function_that_raises_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    clock, ran, done = HedgeClock(), list[tuple[str, float]](), threading.Event()
    start = time.monotonic()

    def broken() -> None:
        raise RuntimeError("a hedge's bug")

    clock.add(start + 0.02, broken)
    clock.add(start + 0.02, _recorder(ran, "other", done))
    assert done.wait(2)
    assert [name for name, _ in ran] == ["other"]
    assert "a hedge's timer callback failed" in caplog.text


def test_many_threads_adding_and_taking_back_lose_none() -> None:
    """32 threads, each adding functions due 0-60 ms ahead and taking back a random half at once:
    every one kept runs once, none taken back in time runs."""
    clock = HedgeClock()
    kept: set[int] = set()
    ran: list[int] = []
    lock = threading.Lock()

    def work(thread: int) -> None:
        rng = random.Random(thread)
        for i in range(50):
            key = thread * 1000 + i

            def run(key: int = key) -> None:
                with lock:
                    ran.append(key)

            take_back = clock.add(time.monotonic() + rng.uniform(0, 0.06), run)
            # Taken back too late (this thread kept off the CPU past the function's time, on a
            # loaded CI machine: 1 of 1,600 once), it has run or is running: take_back says so.
            if rng.random() >= 0.5 or take_back() is None:
                with lock:
                    kept.add(key)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    deadline = time.monotonic() + 3
    while len(clock) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert sorted(ran) == sorted(kept)
    assert len(ran) == len(set(ran))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX-only")
def test_a_forked_child_runs_its_own_not_its_parents() -> None:
    """Kept, the parent's pending functions and its entry (not on the child's timer) left the child's
    clock believing an entry set that never fires: no call of the child's would be hedged."""
    clock, ran = HedgeClock(), list[tuple[str, float]]()
    clock.add(time.monotonic() + 0.3, _recorder(ran, "parent's"))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own function runs, the parent's does not
        try:
            done = threading.Event()
            clock.add(time.monotonic() + 0.05, _recorder(ran, "child's", done))
            ok = done.wait(2) and [name for name, _ in ran] == ["child's"]
            time.sleep(0.4)  # past the parent's time
            ok = ok and [name for name, _ in ran] == ["child's"]
            os.write(write, b"ok" if ok else b"no")
        finally:
            os._exit(0)
    os.close(write)
    try:
        assert os.read(read, 2) == b"ok"
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    deadline = time.monotonic() + 2
    while not ran and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [name for name, _ in ran] == ["parent's"]  # and the parent's own still runs in the parent


# A call joins the clock without its lock when it is due after the entry set (most are): a ring
# coming in between any two steps of that, or a join between any two steps of a ring, loses nothing.


def _runs(clock: HedgeClock, joined: threading.Event) -> bool:
    """Whether what joined the clock ran at its time (on the real timer) within a second."""
    try:
        return joined.wait(1.0)
    finally:
        if clock._cancel_entry is not None:
            clock._cancel_entry()


def _ring_inside_add(step: int | None) -> tuple[bool, int]:
    clock, joined = HedgeClock(), threading.Event()
    # A call due now, the entry set for it (as if by the timer thread, which this test plays).
    clock._due[lambda: None] = clock._armed_at = time.monotonic()

    rang = []

    def ring() -> None:
        if not clock._lock.locked():  # a thread would wait for it: the step after the release tries that
            clock._ring()
            rang.append(True)

    steps = run_with_step(lambda: clock.add(time.monotonic() + 0.01, joined.set), HedgeClock.add.__code__, step, ring)
    if not rang:
        clock._ring()  # the entry set for the call due now rings after the add, then
    return _runs(clock, joined), steps


def _add_inside_ring(step: int | None) -> tuple[bool, int]:
    clock, joined = HedgeClock(), threading.Event()
    clock._due[lambda: None] = clock._armed_at = time.monotonic()
    adders: list[threading.Thread] = []

    def add() -> None:
        # On a thread: when the ring holds the lock the add needs, it waits, as it would.
        adder = threading.Thread(target=clock.add, args=(time.monotonic() + 0.01, joined.set))
        adders.append(adder)
        adder.start()
        adder.join(0.05)

    steps = run_with_step(clock._ring, HedgeClock._ring.__code__, step, add)
    for adder in adders:
        adder.join()
    if step is None:
        add()
    return _runs(clock, joined), steps


@pytest.mark.parametrize("between", [_ring_inside_add, _add_inside_ring], ids=["ring inside add", "add inside ring"])
def test_a_call_joining_while_the_entry_rings_runs_at_its_time(
    between: Callable[[int | None], tuple[bool, int]],
) -> None:
    ran, steps = between(None)
    assert ran
    assert steps > 5
    lost = [step for step in range(steps) if not between(step)[0]]
    assert not lost, f"joined at these steps of {steps}, a call never ran: {lost}"
