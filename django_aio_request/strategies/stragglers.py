"""Which hedged calls are stragglers: still waiting while a call that started after them was answered.

A hedge helps a call that is slow on its own (a slow replica, a lost packet, a request that met a
garbage collection on the server): another attempt will likely be fast. It does nothing but add
load when every call is slow together: the server queueing (the hedge joins the back of the same
queue), or the caller's process stopped. The cases differ in what the calls around the slow one
did. A straggler is passed by younger calls: ones that started after it have been answered. In a
queue or a pause, the younger calls wait too. (A caller short of CPU is not seen: its threads take
the GIL in no fixed order, so younger calls get answered while older ones wait; the percentile
delays' saturation ratio is for that, docs/benchmarks.md.)

So before sending a hedge, the parallel strategy asks two things. First :meth:`Pace.crowded`: when
half the calls answered lately (the last 16, in the last 10 s) took the hedge's delay or longer, hedge-worthy slowness
is what most calls have, not a few: the hedge waits until its call has waited twice as long as
those calls took at the median (slower than most even so: a straggler). Without this a
pause of the caller's process (a tenth of a second) left a backlog whose calls were answered in any
order, each older call passed by a younger one became a "straggler", and the hedges sent for half
the calls stretched the pause into a stall of a second or more (docs/benchmarks.md). Then
:meth:`Pace.holds_back`: the hedge waits while
the oldest younger call still in flight has been so for a while (half the hedge's delay) and no
younger call has been answered. It goes as soon as one is (:meth:`Pace.answer` wakes it), or is
looked at again when the younger call that held it back ends without an answer (a 408 made here, a
call cancelled; :meth:`Pace.end`): no polling. With no younger call in flight, or only ones that
just started, there is nothing to compare with and the hedge goes at its time, as before: a service
called now and then is hedged as if there were no rule.

Kept per method and URL template (what the percentile delays key by), the rule costs a call a
counter step and a note when it starts and a note when it ends; the notes are applied when a hedge
is judged, or by a caller once 128 have piled up (:class:`Pace`). MapReduce's backup tasks go to
stragglers for the same reason.
"""

import collections
import itertools
import math
import threading
import time
from collections.abc import Callable

from django_aio_request.core.after_fork import renewed_in_forked_child

__all__ = ["Pace", "Paces"]

# The last this-many calls are kept: a hedge is held back by the oldest of them that started after
# its call and is still in flight.
_KEPT = 64
# The times of the last this-many answered calls (crowded()), of which at least half must have been
# answered within the last _ANSWERED_RECENT seconds: a service called less often is left to the rest
# of the rule. Ten seconds, not one: with one, a downstream called a few times a second whose every
# call took longer than the hedge's delay (200 ms against README's 50 ms) was never judged crowded,
# each call was hedged twice, and the hedges queued in its one thread ahead of the next call, which
# took three times as long (a review). Where calls come faster the last 16 answers are all recent.
_ANSWERED_KEPT = 16
_ANSWERED_RECENT = 10.0
# Starts and ends noted at most, before a caller applies them (Pace._apply) rather than leave them for
# the next judgement: twice _KEPT, a call's start and end.
_NOTED_KEPT = 2 * _KEPT


class Pace:
    """The calls of one method and URL template: when each started, whether it ended, the youngest
    answered, and the hedges held back, each until a younger call is answered or the call that holds
    it back ends.

    A call's start and end are only noted (appended to a queue, one step each) on the caller's path;
    they are applied to what the rule judges by when it next judges (:meth:`holder`, :meth:`crowded`,
    :meth:`wait`, :meth:`answer`), on the hedge timer's thread, or on a caller once the queue holds
    ``_NOTED_KEPT`` of them. Applied at once, they cost every hedged call (most of which are answered
    before their hedge is due, and never judged) 5.7-8.6 µs of a 0.6 ms loopback call, its code and
    data out of the CPU's caches after the call's wait; noted, 3.9-4.4 µs less (docs/benchmarks.md)."""

    __slots__ = ("__weakref__", "_answered", "_answers", "_latest", "_lock", "_noted", "_numbers", "_slots", "_waiting")

    def __init__(self) -> None:
        self._numbers = itertools.count()  # next() on it is atomic in CPython: no lock per call
        # Starts, (number, started at), and ends, (number, answered, ended at), in the order noted;
        # applied by _apply(). deque.append and popleft are atomic: no lock to note one.
        self._noted: collections.deque[tuple[int, float] | tuple[int, bool, float]] = collections.deque()
        # [number, started at, ended] of the call whose number is the index modulo _KEPT: a new list
        # per call, so a reader never sees one call's number with another's time.
        self._slots: list[list[object]] = [[-1, 0.0, True]] * _KEPT
        self._latest = -1
        self._answered = -1  # the number of the youngest call an attempt of which got an answer
        # (answered at, seconds from its start) of the call whose number is the index modulo
        # _ANSWERED_KEPT, the last answer of each: a tuple per answer, stored whole, as in _slots.
        self._answers: list[tuple[float, float]] = [(-math.inf, 0.0)] * _ANSWERED_KEPT
        # Held hedges: their call's number -> (the younger call that holds it back, wake).
        self._waiting: dict[int, tuple[int, Callable[[], None]]] = {}
        self._lock = threading.Lock()  # for _waiting, and to apply what was noted
        _renewed_in_forked_child(self)

    @property
    def answered(self) -> int:
        """The number of the youngest call an attempt of which got an answer (-1: none yet)."""
        with self._lock:
            self._apply()
            return self._answered

    def start(self, at: float) -> int:
        """Note a call that started at ``at`` (``time.monotonic()``); its number, for the methods below."""
        number = next(self._numbers)
        noted = self._noted
        noted.append((number, at))
        if len(noted) >= _NOTED_KEPT:
            with self._lock:
                self._apply()
        return number

    def end(self, number: int, *, answered: bool = False) -> None:
        """Call ``number`` is over, answered or not (a 408 made here, a cancelled call): it holds no
        older call's hedge back any more, and its own is no longer held. ``answered``: and an attempt
        of it got an answer, as :meth:`answer` says, in the same step (a hedged call answered before
        its hedge was due ends so, and most do).

        Noted first, then ``_waiting`` looked at: :meth:`wait` registers first and then applies what
        was noted, so one of the two sees the other."""
        noted = self._noted
        noted.append((number, answered, time.monotonic()))
        if not self._waiting:
            if len(noted) >= _NOTED_KEPT:
                with self._lock:
                    self._apply()
            return
        with self._lock:
            self._apply()
            self._waiting.pop(number, None)
            if answered:
                woken = self._take(lambda held, holder: held < number or holder == number)
            else:
                woken = self._take(lambda held, holder: holder == number)
        for wake in woken:
            wake()

    def _apply(self) -> None:
        """(Holding ``_lock``.) Apply the starts and ends noted so far, in the order they were noted."""
        noted, slots, answers = self._noted, self._slots, self._answers
        while noted:
            event = noted.popleft()  # only here, under the lock: the queue is not empty
            if len(event) == 2:
                number, at = event
                slots[number % _KEPT] = [number, at, False]
                # A race may have noted an older number after a younger one: not max(), a builtin's call.
                if number > self._latest:  # noqa: PLR1730
                    self._latest = number
                continue
            number, answered, now = event
            slot = slots[number % _KEPT]
            if slot[0] == number:  # else more than _KEPT calls started since: too old to tell of now
                slot[2] = True
                if answered:
                    answers[number % _ANSWERED_KEPT] = (now, now - slot[1])  # type: ignore[operator]
            if answered and number > self._answered:
                self._answered = number

    def answer(self, number: int) -> None:
        """An attempt of call ``number`` got an answer from the server (not one made up here), which
        makes every older call that still waits a straggler: the hedges held back for them go now."""
        # Under the lock: two answers at once left the older number (332 of 1,264 runs of four
        # threads), and a hedge woken by the younger answer could be held again by holder().
        with self._lock:
            self._apply()
            self._note_time(number, self._slots[number % _KEPT])
            self._answered = max(self._answered, number)
            woken = self._take(lambda held, holder: held < number) if self._waiting else []
        for wake in woken:
            wake()

    def _note_time(self, number: int, slot: list[object]) -> None:
        """Call ``number`` (whose slot in ``_slots`` is ``slot``) got an answer now: how long it took."""
        if slot[0] == number:  # else more than _KEPT calls started since: too old to tell of now
            now = time.monotonic()
            self._answers[number % _ANSWERED_KEPT] = (now, now - slot[1])  # type: ignore[operator]

    def crowded(self, now: float, delay: float) -> float | None:
        """How long the calls answered lately took at the median, when that is ``delay`` (the hedge's)
        or longer: a call still waiting is then as slow as most, no straggler yet. None otherwise.
        Judged by the last calls answered within the last 10 seconds, when there are at least half of
        ``_ANSWERED_KEPT`` of them; never with fewer."""
        with self._lock:
            self._apply()
        since = now - _ANSWERED_RECENT
        took = sorted([seconds for at, seconds in self._answers if at >= since])
        if len(took) < _ANSWERED_KEPT // 2:
            return None
        median = took[len(took) // 2]
        return median if median >= delay else None

    def _take(self, which: Callable[[int, int], bool]) -> list[Callable[[], None]]:
        """(Holding ``_lock``.) Remove the held hedges ``which(number, holder)`` picks; their wakes."""
        picked = [held for held, (holder, _) in self._waiting.items() if which(held, holder)]
        return [self._waiting.pop(held)[1] for held in picked]

    def holder(self, number: int, now: float, age: float) -> int | None:
        """The younger call that holds call ``number``'s hedge back, or None if the hedge may go:
        held while no younger call was answered and the oldest younger call still in flight has been
        so for ``age`` seconds or more (that call's number is returned)."""
        with self._lock:
            self._apply()
        if self._answered > number:
            return None  # a younger call was answered: this one is a straggler
        latest = self._latest
        for younger in range(max(number + 1, latest - _KEPT + 1), latest + 1):
            found, started, ended = self._slots[younger % _KEPT]
            if found != younger or ended:
                continue  # over (answered or not: a 408 made here, a call cancelled), or not noted yet
            return younger if now - started >= age else None  # type: ignore[operator]
        return None  # no younger call in flight: nothing to compare with

    def holds_back(self, number: int, now: float, age: float) -> bool:
        return self.holder(number, now, age) is not None

    def wait(self, number: int, holder: int, wake: Callable[[], None]) -> bool:
        """Hold call ``number``'s hedge until a younger call is answered or call ``holder`` ends, then
        call ``wake`` (once). False, holding nothing, if either happened already: registered first
        and checked after, while :meth:`end` and :meth:`answer` note first and look after, so that
        one of the two sees the other."""
        with self._lock:
            self._waiting[number] = (holder, wake)
            self._apply()
        slot = self._slots[holder % _KEPT]
        if self._answered > number or slot[0] != holder or slot[2]:
            with self._lock:
                self._waiting.pop(number, None)
            return False
        return True


def _renew(pace: Pace) -> None:
    """The parent's calls are not this process's: their held hedges (woken here, they were sent by the
    child for the parent's calls and aborted the parent's attempt on the socket both share) and a lock
    a parent thread held at the fork (the child's hedge timer then waited on it for ever)."""
    pace._lock = threading.Lock()
    pace._waiting = {}
    pace._noted = collections.deque()  # the parent's calls' starts and ends
    # The parent's answers are not how this process's calls go (a child judged crowded by them held
    # its stragglers' hedges for up to a second).
    pace._answers = [(-math.inf, 0.0)] * _ANSWERED_KEPT
    pace._slots = [[-1, 0.0, True]] * _KEPT  # the parent's calls in flight never end here


_renewed_in_forked_child = renewed_in_forked_child(_renew)


class Paces:
    """A :class:`Pace` per method and URL template, for one strategy.

    At most :attr:`MAX_TEMPLATES` of them: templates built from data (``get(f"things/{id}")``, which
    docs/metrics.md asks callers not to write) would otherwise keep one per URL sent. Past the bound,
    the new ones share one pace, where calls are compared with calls to other URLs."""

    __slots__ = ("_others", "_paces")

    MAX_TEMPLATES = 1000

    def __init__(self) -> None:
        self._paces: dict[tuple[str, str], Pace] = {}
        self._others = Pace()

    def of(self, method: str, url: str) -> Pace:
        pace = self._paces.get((method, url))
        if pace is None:
            if len(self._paces) >= self.MAX_TEMPLATES:
                return self._others
            pace = self._paces.setdefault((method, url), Pace())  # setdefault: one Pace if two threads race
        return pace
