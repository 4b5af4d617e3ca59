"""The rule that tells a straggler from calls slow together (strategies/stragglers.py), on its own.

The hedging it decides is tested against a real server in test_parallel_strategy.py (TestStragglers)."""

import collections
import heapq
import itertools
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from django_aio_request.strategies.stragglers import _ANSWERED_KEPT, _KEPT, _NOTED_KEPT, Pace, Paces


def test_with_no_younger_call_there_is_nothing_to_compare_with_and_the_hedge_goes() -> None:
    pace = Pace()
    number = pace.start(10.0)
    assert not pace.holds_back(number, now=10.05, age=0.025)


def test_a_younger_call_that_just_started_holds_nothing_back_yet() -> None:
    pace = Pace()
    older = pace.start(10.0)
    pace.start(10.04)
    assert not pace.holds_back(older, now=10.05, age=0.025)  # in flight 10 ms: too soon to tell
    assert pace.holds_back(older, now=10.07, age=0.025)  # 30 ms and unanswered: slow together


def test_an_answered_younger_call_makes_the_older_one_a_straggler() -> None:
    pace = Pace()
    older = pace.start(10.0)
    younger = pace.start(10.01)
    pace.start(10.02)
    assert pace.holds_back(older, now=10.05, age=0.025)
    pace.answer(younger)
    assert not pace.holds_back(older, now=10.05, age=0.025)
    pace.answer(older)  # an older answer does not take it back
    assert not pace.holds_back(older, now=10.05, age=0.025)


def test_only_younger_answers_count() -> None:
    pace = Pace()
    oldest = pace.start(10.0)
    older = pace.start(10.0)
    pace.start(10.0)
    pace.answer(oldest)
    assert pace.holds_back(older, now=10.05, age=0.025)


def answered_after(pace: Pace, seconds: list[float], *, by_end: bool = False) -> None:
    """Calls of ``pace``, each answered now, having started ``seconds[i]`` ago."""
    now = time.monotonic()
    for took in seconds:
        number = pace.start(now - took)
        if by_end:
            pace.end(number, answered=True)
        else:
            pace.answer(number)


@pytest.mark.parametrize("by_end", [False, True], ids=["answer", "end"])
def test_when_half_the_calls_answered_lately_took_the_delay_no_call_is_a_straggler(by_end: bool) -> None:
    """A queue or a pause of the caller: most calls are as slow as the one whose hedge is due."""
    pace = Pace()
    answered_after(pace, [0.01] * 8 + [0.06] * 8, by_end=by_end)
    assert pace.crowded(time.monotonic(), delay=0.05)  # the median is 60 ms: slow together
    assert not pace.crowded(time.monotonic(), delay=0.07)  # a hedge later than most calls take

    pace = Pace()
    answered_after(pace, [0.01] * 9 + [0.06] * 7, by_end=by_end)  # 7 of 16 slow: a tail, not most calls
    assert not pace.crowded(time.monotonic(), delay=0.05)


def test_only_the_last_answers_count_and_the_newest_decide() -> None:
    pace = Pace()
    answered_after(pace, [0.06] * _ANSWERED_KEPT)
    assert pace.crowded(time.monotonic(), delay=0.05)
    answered_after(pace, [0.01] * (_ANSWERED_KEPT // 2 + 1))  # the stall is over
    assert not pace.crowded(time.monotonic(), delay=0.05)


def test_a_service_called_now_and_then_is_never_judged_crowded() -> None:
    """Fewer than half of the kept answers within the last 10 seconds: too few to say all calls are
    slow, and the rest of the rule decides as before."""
    pace = Pace()
    answered_after(pace, [0.5] * (_ANSWERED_KEPT // 2 - 1))
    assert not pace.crowded(time.monotonic(), delay=0.05)
    answered_after(pace, [0.5])
    assert pace.crowded(time.monotonic(), delay=0.05)
    # A few calls a second are enough: 8 answers over the last 9 s still tell (with one second, a
    # downstream called twice a second was never judged, and each of its calls hedged: a review).
    assert pace.crowded(time.monotonic() + 9.0, delay=0.05)
    assert not pace.crowded(time.monotonic() + 10.1, delay=0.05)  # ten seconds later they are old news


def test_a_call_that_ended_unanswered_tells_nothing_of_how_long_calls_take() -> None:
    pace = Pace()
    now = time.monotonic()
    for _ in range(_ANSWERED_KEPT):
        pace.end(pace.start(now - 0.5))  # 408s made here, cancelled calls
    assert not pace.crowded(time.monotonic(), delay=0.05)


def test_more_younger_calls_than_are_kept_hold_the_hedge_back_by_the_oldest_kept() -> None:
    pace = Pace()
    number = pace.start(10.0)
    for _ in range(_KEPT + 3):
        pace.start(10.01)  # so many in flight for 40 ms, none answered: a stall
    assert pace.holds_back(number, now=10.05, age=0.025)


def test_a_younger_call_that_ended_without_an_answer_holds_nothing_back() -> None:
    """A younger call answered 408 without being sent (its deadline spent), or cancelled by its
    caller, is over: it held the older call's hedge back until that call's own answer (2 s)."""
    pace = Pace()
    older = pace.start(10.0)
    younger = pace.start(10.01)
    assert pace.holds_back(older, now=10.05, age=0.025)
    pace.end(younger)  # no answer: a made-up 408, a cancellation
    assert not pace.holds_back(older, now=10.05, age=0.025)


def test_the_oldest_younger_call_still_in_flight_decides() -> None:
    pace = Pace()
    older = pace.start(10.0)
    pace.end(pace.start(10.005))  # over, without an answer
    pace.start(10.02)  # in flight for 30 ms at 10.05
    pace.start(10.04)
    assert pace.holds_back(older, now=10.05, age=0.025)
    assert not pace.holds_back(older, now=10.05, age=0.035)


def test_an_answer_wakes_the_older_calls_held_and_only_those() -> None:
    pace = Pace()
    first, second, third, fourth = (pace.start(10.0) for _ in range(4))
    woken: list[int] = []
    assert pace.wait(first, fourth, lambda: woken.append(first))
    assert pace.wait(second, fourth, lambda: woken.append(second))
    pace.answer(second)  # older than the third, younger than the first
    assert woken == [first]
    pace.end(second)  # over: never woken after
    pace.answer(third)
    assert woken == [first]


def test_an_end_with_an_answer_is_an_answer_and_an_end_in_one_step() -> None:
    """What a hedged call answered before its hedge was due does (strategies/parallel.py)."""
    pace = Pace()
    first, second, third, fourth, fifth = (pace.start(10.0) for _ in range(5))
    woken: list[int] = []
    assert pace.wait(first, fifth, lambda: woken.append(first))  # older than third: a straggler now
    assert pace.wait(second, third, lambda: woken.append(second))  # held back by third itself
    assert pace.wait(third, fifth, lambda: woken.append(third))  # third's own: dropped, not woken
    assert pace.wait(fourth, fifth, lambda: woken.append(fourth))  # younger: still held
    pace.end(third, answered=True)
    assert sorted(woken) == [first, second]
    assert pace.answered == third
    assert list(pace._waiting) == [fourth]
    assert not pace.holds_back(second, now=10.05, age=0.025)  # a younger call was answered
    assert pace.holds_back(fourth, now=10.05, age=0.025)  # fifth, in flight and unanswered
    pace.end(second, answered=True)  # an older answer does not take it back
    assert pace.answered == third


def test_the_end_of_the_call_that_holds_a_hedge_back_wakes_it() -> None:
    pace = Pace()
    older, younger = pace.start(10.0), pace.start(10.01)
    woken: list[int] = []
    assert pace.holder(older, now=10.05, age=0.025) == younger
    assert pace.wait(older, younger, lambda: woken.append(older))
    pace.end(younger)  # a 408 made here, a cancelled call: no answer
    assert woken == [older]
    assert not pace.holds_back(older, now=10.05, age=0.025)


def test_waiting_on_a_call_that_already_ended_or_after_an_answer_holds_nothing() -> None:
    pace = Pace()
    older, younger, youngest = pace.start(10.0), pace.start(10.01), pace.start(10.02)
    pace.end(younger)
    assert not pace.wait(older, younger, lambda: None)
    pace.answer(youngest)
    assert not pace.wait(older, youngest, lambda: None)
    assert not pace._waiting


def test_numbers_are_unique_across_threads() -> None:
    pace, numbers, lock = Pace(), [], threading.Lock()

    def starts() -> None:
        mine = [pace.start(1.0) for _ in range(2000)]
        with lock:
            numbers.extend(mine)

    threads = [threading.Thread(target=starts) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(numbers) == list(range(16000))


def test_each_method_and_url_template_has_its_own_pace() -> None:
    paces = Paces()
    assert paces.of("GET", "orders/{id}") is paces.of("GET", "orders/{id}")
    assert paces.of("GET", "orders/{id}") is not paces.of("HEAD", "orders/{id}")
    assert paces.of("GET", "orders/{id}") is not paces.of("GET", "items/{id}")


def test_templates_past_the_bound_share_one_pace() -> None:
    """A template built from data (get(f"things/{id}")) makes a new URL per call: the paces kept stay
    bounded."""
    paces = Paces()
    kept = [paces.of("GET", f"things/{n}") for n in range(Paces.MAX_TEMPLATES)]
    assert len({id(pace) for pace in kept}) == Paces.MAX_TEMPLATES
    others = {id(paces.of("GET", f"things/{n}")) for n in range(Paces.MAX_TEMPLATES, Paces.MAX_TEMPLATES + 500)}
    assert len(others) == 1
    assert paces.of("GET", "things/0") is kept[0]
    assert len(paces._paces) == Paces.MAX_TEMPLATES


@pytest.mark.parametrize("answer_how", ["answer", "end with an answer"])
def test_answers_at_once_from_many_threads_leave_the_youngest_answered(answer_how: str) -> None:
    # answered = max(answered, n) without the lock: two answers at once left the older number (332
    # of 1,264 runs of four threads), and a hedge that answer woke could be held back again.
    import sys

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(30):
            pace = Pace()
            numbers = [pace.start(0.0) for _ in range(2000)]
            barrier = threading.Barrier(4)

            def answer(
                k: int, pace: Pace = pace, numbers: list[int] = numbers, barrier: threading.Barrier = barrier
            ) -> None:
                barrier.wait()
                for number in numbers[k::4]:
                    if answer_how == "answer":
                        pace.answer(number)
                    else:
                        pace.end(number, answered=True)

            threads = [threading.Thread(target=answer, args=(k,)) for k in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert pace.answered == numbers[-1]
    finally:
        sys.setswitchinterval(interval)


def test_a_forked_child_does_not_judge_its_calls_crowded_by_its_parent_s_answers() -> None:
    """The parent's calls all took 300 ms; the child's go as they go. Kept, the parent's answers held
    the child's stragglers' hedges for up to a second (until it had 9 answers of its own)."""
    from tests.support.forking import in_child

    pace = Pace()
    answered_after(pace, [0.3] * _ANSWERED_KEPT)
    assert pace.crowded(time.monotonic(), delay=0.2)
    assert in_child(lambda: pace.crowded(time.monotonic(), delay=0.2)) is None


def test_a_forked_child_keeps_neither_the_parents_held_hedges_nor_a_lock_held_at_the_fork() -> None:
    # The child woke the parent's held hedges at its first answer and sent them, for the parent's
    # calls, aborting the parent's attempt on the socket both shared; a lock a parent thread held at
    # the fork stopped the child's hedge timer for ever.
    from tests.support.forking import held_by_another_thread, in_child

    pace = Pace()
    older, holder = pace.start(0.0), pace.start(0.1)
    woken: list[int] = []
    assert pace.wait(older, holder, lambda: woken.append(older))

    def child() -> object:
        done = threading.Event()

        def answer() -> None:
            pace.answer(pace.start(1.0))
            done.set()

        threading.Thread(target=answer, daemon=True).start()
        return {"answered": done.wait(2), "woken": woken, "in flight": pace.holder(older, 2.0, 0.0)}

    with held_by_another_thread(pace._lock):
        assert in_child(child) == {"answered": True, "woken": [], "in flight": None}
    pace.answer(holder + 1)  # in the parent, the held hedge is still there and goes
    assert woken == [older]


def test_starts_and_ends_nobody_judges_are_applied_by_the_callers_before_they_pile_up() -> None:
    # Most hedged calls are answered before their hedge is due: nothing judges, and what they noted
    # must not grow without end (memory), nor be lost (the youngest answer, the answers' times).
    pace = Pace()
    for _ in range(10_000):
        number = pace.start(time.monotonic())
        pace.end(number, answered=True)
        assert len(pace._noted) < 2 * _KEPT
    assert pace.answered == 9_999
    # the last answers, each a few microseconds after its start: the rule sees them
    took = pace.crowded(now=time.monotonic(), delay=1e-9)
    assert took is not None
    assert took < 0.01
    assert pace.crowded(now=time.monotonic(), delay=1.0) is None


def test_a_start_noted_by_one_thread_holds_back_a_hedge_judged_on_another() -> None:
    pace = Pace()
    older = pace.start(10.0)
    younger: list[int] = []
    thread = threading.Thread(target=lambda: younger.append(pace.start(10.02)))
    thread.start()
    thread.join()
    assert pace.holder(older, now=10.05, age=0.025) == younger[0]  # in flight for 30 ms, unanswered
    pace.end(younger[0], answered=False)
    assert pace.holder(older, now=10.05, age=0.025) is None


def on_another_thread(work: Callable[[], object]) -> None:
    thread = threading.Thread(target=work)
    thread.start()
    thread.join(5)
    assert not thread.is_alive()


class _BeforeAnEndIsNoted(collections.deque):  # type: ignore[type-arg]
    """A pace's queue of notes that runs ``then`` once, just before the first end is appended."""

    def __init__(self, noted: Iterable[Any], then: Callable[[], None]) -> None:
        super().__init__(noted)
        self.then: Callable[[], None] | None = then

    def append(self, event: Any) -> None:
        if len(event) == 3 and self.then is not None:
            then, self.then = self.then, None
            then()
        super().append(event)


@pytest.mark.parametrize("answered", [False, True], ids=["ended", "answered"])
def test_a_hedge_held_while_its_holder_s_end_is_being_noted_is_woken(answered: bool) -> None:
    # end() notes first and looks at _waiting after; looked at first, a hedge held in between (on the
    # hedge timer's thread) was never woken: held until its look-again, its holder long over.
    pace = Pace()
    older, holder = pace.start(10.0), pace.start(10.0)
    woken: list[int] = []
    held: list[bool] = []

    def hold() -> None:
        assert pace.holder(older, now=10.05, age=0.025) == holder
        held.append(pace.wait(older, holder, lambda: woken.append(older)))

    pace._noted = _BeforeAnEndIsNoted(pace._noted, lambda: on_another_thread(hold))
    pace.end(holder, answered=answered)
    assert held == [True]  # judged before the end was noted: held back
    assert woken == [older]
    assert not pace._waiting
    assert pace.holder(older, now=10.05, age=0.025) is None


class _ThenOnRelease:
    """A pace's lock that runs ``then`` once, after the thread that armed it next releases it."""

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self.then: Callable[[], None] | None = None
        self.armed_by: int | None = None

    def arm(self, then: Callable[[], None]) -> None:
        self.then, self.armed_by = then, threading.get_ident()

    def __enter__(self) -> None:
        self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()
        if self.then is not None and threading.get_ident() == self.armed_by:
            then, self.then = self.then, None
            then()


@pytest.mark.parametrize("answered", [False, True], ids=["ended", "answered"])
def test_a_holder_that_ends_while_the_hedge_is_being_held_never_leaves_it_waiting(answered: bool) -> None:
    # wait() registers and then applies what was noted, in one step under the lock: an end noted
    # right after that step finds the hedge registered, and wakes it, or wait() sees the end.
    pace = Pace()
    older, holder = pace.start(10.0), pace.start(10.0)
    assert pace.holder(older, now=10.05, age=0.025) == holder
    woken: list[int] = []
    pace._lock = lock = _ThenOnRelease(pace._lock)  # type: ignore[assignment]
    lock.arm(lambda: on_another_thread(lambda: pace.end(holder, answered=answered)))
    held = pace.wait(older, holder, lambda: woken.append(older))
    assert len(woken) <= 1
    assert woken == [older] or not held  # woken, or not held back: never left waiting
    assert not pace._waiting


def _held_and_woken_on_many_threads(rng: random.Random, threads: int) -> None:
    """One round of the test below: calls started, half the threads judging their hedges, half ending
    and answering them; then what was held, woken, and answered, checked."""
    pace = Pace()
    numbers = [pace.start(0.0) for _ in range(rng.choice([20, 80, 200]))]
    over = dict.fromkeys(numbers, False)
    # As _HedgedCall.lock: the timer judges a call under it; its end stops the timer first.
    call_locks = {number: threading.Lock() for number in numbers}
    waits: list[tuple[int, int, bool, list[int]]] = []  # (held, holder, wait(), its wakes)
    ended, answered = set[int](), set[int]()
    record, most_noted = threading.Lock(), [0]
    actions = [(rng.choice(["end", "answer", "end answered", None]), number) for number in numbers]
    rng.shuffle(actions)
    judged = rng.sample(numbers, len(numbers))
    barrier = threading.Barrier(threads)

    def judge(k: int) -> None:
        barrier.wait()
        for number in judged[k :: threads // 2]:
            with call_locks[number]:
                if over[number]:
                    continue
                while (holder := pace.holder(number, 1.0, 0.0)) is not None:
                    wakes: list[int] = []
                    held = pace.wait(number, holder, lambda wakes=wakes: wakes.append(1))  # type: ignore[misc]
                    with record:
                        waits.append((number, holder, held, wakes))
                    if held:
                        break

    def act(k: int) -> None:
        barrier.wait()
        for i, (how, number) in enumerate(actions[k :: threads // 2]):
            if how in ("end", "end answered"):
                with call_locks[number]:
                    over[number] = True
                with record:  # before: the end may wake hedges at once
                    ended.add(number)
                    if how == "end answered":
                        answered.add(number)
                pace.end(number, answered=how == "end answered")
            elif how == "answer":
                with record:
                    answered.add(number)
                pace.answer(number)
            if i % 5 == 0:  # a call of its own: with the others', 128 notes a caller applies
                own = pace.start(0.0)
                with record:
                    ended.add(own)
                pace.end(own)
            most_noted[0] = max(most_noted[0], len(pace._noted))

    workers = [threading.Thread(target=judge, args=(k,)) for k in range(threads // 2)]
    workers += [threading.Thread(target=act, args=(k,)) for k in range(threads // 2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    _check_held_and_woken(pace, waits, ended, max(answered, default=-1))
    assert most_noted[0] < _NOTED_KEPT + threads


def _check_held_and_woken(
    pace: Pace, waits: list[tuple[int, int, bool, list[int]]], ended: set[int], youngest_answered: int
) -> None:
    for number, holder, held, wakes in waits:
        due = holder in ended or youngest_answered > number
        assert len(wakes) <= 1, (number, holder)
        assert not wakes or due, (number, holder)  # woken for nothing
        if held and due and number not in ended:
            assert wakes, (number, holder)  # left waiting
    for number, (holder, _) in pace._waiting.items():
        assert holder not in ended, (number, holder)
        assert youngest_answered <= number, number
    assert pace.answered == youngest_answered


def test_held_hedges_are_woken_once_their_holder_ends_or_a_younger_call_is_answered_on_many_threads() -> None:
    # Half the threads judge hedges as the hedge timer does (held while a younger call is in flight),
    # the other half end calls, answer them, or end them answered, and start and end calls of their
    # own. A hedge held is woken once, when its holder ends or a younger call is answered, and only
    # then; the youngest answer is kept; the notes stay bounded. (A hedge woken while wait() saw the
    # end itself and returned False is allowed, as before the notes: the call's _wake ignores it.)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    rng = random.Random(19)
    try:
        for _ in range(250):
            _held_and_woken_on_many_threads(rng, threads=12)
    finally:
        sys.setswitchinterval(interval)


def test_an_end_with_an_answer_applied_after_its_call_s_slot_was_taken_is_still_an_answer() -> None:
    # _KEPT younger calls started (noted, none applied) before the call's end with an answer was
    # noted: its slot is another call's when the end is applied, and the answer still counts (as it
    # did applied at once): the older call waiting is a straggler.
    pace = Pace()
    oldest, answered = pace.start(10.0), pace.start(10.0)
    for _ in range(_KEPT):
        pace.start(10.0)
    pace.end(answered, answered=True)
    assert len(pace._noted) == _KEPT + 3  # nothing applied yet
    assert pace.holder(oldest, now=10.05, age=0.025) is None
    assert pace.answered == answered


def test_a_forked_child_does_not_apply_what_its_parent_noted_and_never_applied() -> None:
    """The parent's calls all took 300 ms, answered before anything judged: their ends are only noted.
    Applied in the child, they were its answers too and judged its calls crowded."""
    from tests.support.forking import in_child

    pace = Pace()
    now = time.monotonic()
    for _ in range(_ANSWERED_KEPT):
        pace.end(pace.start(now - 0.3), answered=True)
    assert len(pace._noted) == 2 * _ANSWERED_KEPT  # fewer than _NOTED_KEPT: nothing applied yet

    def child() -> object:
        return {"noted": len(pace._noted), "crowded": pace.crowded(time.monotonic(), delay=0.2)}

    assert in_child(child) == {"noted": 0, "crowded": None}
    assert pace.crowded(time.monotonic(), delay=0.2)  # in the parent, they are its answers


# After a lasting shift: the straggler rule and the percentile delays, on one clock


class _Clock:
    """The time both rules read (``time.monotonic()`` in their modules), moved by the test alone."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def _after_a_lasting_shift(monkeypatch: pytest.MonkeyPatch, rate: int) -> list[dict[str, Any]]:
    """Calls at ``rate`` a second to a server answering in 7-9 ms that answers in 50-70 ms for good
    from 25 s on (a review's figures: p90, a 20 s window, saturation ratio on), on a clock the test
    moves: each call's start, latency, the delay the provider gave it and whether it held hedges
    back, and whether a hedge would go, without the straggler rule (its delay passed unanswered) and
    with it (as the parallel strategy asks it: ``Pace.crowded``, then ``Pace.holder``)."""
    from django_aio_request import Response, get
    from django_aio_request.strategies import percentile_delays, stragglers
    from django_aio_request.strategies.parallel import _SLOWER_THAN_MOST
    from django_aio_request.strategies.percentile_delays import PercentileDelaysProvider

    clock = _Clock()
    monkeypatch.setattr(percentile_delays, "time", clock)
    monkeypatch.setattr(stragglers, "time", clock)
    provider = PercentileDelaysProvider(percentile=0.9, window_seconds=20, saturation_ratio=2.0)
    pace, request, latencies = Pace(), get("things"), random.Random(11)
    shift = clock.now + 25
    events: list[tuple[float, int, str, int]] = []  # (when, order, what, call)
    order = itertools.count()
    for i in range(60 * rate):
        heapq.heappush(events, (clock.now + i / rate, next(order), "start", i))
    calls: list[dict[str, Any]] = []
    held_back: set[int] = set()  # the calls whose hedge a younger call in flight holds back
    while events:
        clock.now, _, what, i = heapq.heappop(events)
        if what == "start":
            took = latencies.uniform(0.007, 0.009) if clock.now < shift else latencies.uniform(0.050, 0.070)
            delay, held = provider.delay(request), provider.saturated(request)
            number = pace.start(clock.now)
            calls.append({"start": clock.now, "took": took, "delay": delay, "held": held, "number": number})
            calls[i]["hedged"] = calls[i]["hedged_by_the_rule"] = not held and took > delay
            heapq.heappush(events, (clock.now + took, next(order), "answer", i))
            if calls[i]["hedged"]:
                heapq.heappush(events, (clock.now + delay, next(order), "due", i))
        elif what == "due":  # unanswered at its delay: would the rule let the hedge go now?
            call = calls[i]
            typical = pace.crowded(clock.now, call["delay"])
            if typical is not None:  # slow together: a straggler once it waited twice what most took
                call["hedged_by_the_rule"] = _SLOWER_THAN_MOST * typical < call["took"]
            elif pace.holder(call["number"], clock.now, call["delay"] / 2) is not None:
                call["hedged_by_the_rule"] = False  # until a younger call is answered first (below)
                held_back.add(i)
        else:
            held_back.discard(i)
            for older in [older for older in held_back if older < i]:  # passed: stragglers, hedged now
                calls[older]["hedged_by_the_rule"] = True
                held_back.discard(older)
            pace.end(calls[i]["number"], answered=True)
            provider.observe(request, Response(status=200, elapsed=calls[i]["took"]))
    return [call for call in calls if call["start"] >= shift]


@pytest.mark.parametrize("rate", [49, 12])
def test_after_a_lasting_shift_the_calls_at_the_old_delay_are_hedged_without_the_rule_and_not_with_it(
    monkeypatch: pytest.MonkeyPatch, rate: int
) -> None:
    """usage.md: once the saturation hold lifts after a server became slower for good, the calls
    are given the delay learned before (10 ms, the floor, for 8 ms answers) until 20 latencies of
    the new kind are learned: with STRAGGLERS_ONLY off nearly every one is hedged (a review: 47 in
    the 49 calls of the second after the hold lifted, 13 hedges in 12 calls at 12 a second), with
    it on few (-1 and 2): the calls answered around them are as slow (Pace.crowded). Then hedges go
    at the new delay, to the calls slower than it (9 and 10 in the next second)."""
    after = _after_a_lasting_shift(monkeypatch, rate)
    first_held = next(n for n, call in enumerate(after) if call["held"])
    lifted = after[next(n for n in range(first_held, len(after)) if not after[n]["held"]) :]
    old = list(itertools.takewhile(lambda call: call["delay"] == 0.010, lifted))
    # The delay learned before the shift until at least 20 of the new latencies are learned (each
    # call one), and recomputed within a second (refresh_seconds) after that.
    assert 20 <= len(old) <= 20 + rate + 1, len(old)
    assert all(call["took"] >= 0.050 for call in old)
    assert [call["hedged"] for call in old] == [True] * len(old)  # STRAGGLERS_ONLY off: every one
    assert [call["hedged_by_the_rule"] for call in old] == [False] * len(old)  # on: none
    new = lifted[len(old) : len(old) + 2 * rate]
    assert {round(call["delay"], 2) for call in new} == {0.07}  # the new p90, of 50-70 ms
    assert 0 < sum(call["hedged"] for call in new) <= 0.2 * len(new)  # the slowest tenth, about
