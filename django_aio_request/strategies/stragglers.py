"""Which hedged calls are stragglers: still waiting while a call that started after them was answered.

A hedge helps a call that is slow on its own (a slow replica, a lost packet, a request that met a
garbage collection on the server): another attempt will likely be fast. It does nothing but add
load when every call is slow together: the caller's own process stalled (short of CPU), or the
server queueing (the hedge joins the back of the same queue). The two cases differ in what the calls
around the slow one did. A straggler is passed by younger calls: ones that started after it have
been answered. In a stall or a queue, the younger calls wait too.

So before sending a hedge, the parallel strategy asks :meth:`Pace.holds_back`: the hedge waits while
a younger call has been in flight for a while (half the hedge's delay) and no younger call has been
answered, and goes once one is (the timer looks again every 10 ms). With no younger call, or only
one that has just started, there is nothing to compare with and the hedge goes at its time, as
before: a service called now and then is hedged as if there were no rule.

The same rule, kept per method and URL template (what the percentile delays key by), costs a call
one counter step and one list store; MapReduce's backup tasks go to stragglers for the same reason.
"""

import itertools

__all__ = ["Pace", "Paces"]

# The starts of the last this-many calls are kept. A call with more younger calls than that, none
# of them answered, is held back without looking at when they started: so many calls in flight and
# not one answered is a stall.
_KEPT = 64
_NOT_STARTED = (-1, 0.0)


class Pace:
    """The calls of one method and URL template: when each started, and the youngest answered."""

    __slots__ = ("_numbers", "_starts", "answered")

    def __init__(self) -> None:
        self._numbers = itertools.count()  # next() on it is atomic in CPython: no lock per call
        self._starts: list[tuple[int, float]] = [_NOT_STARTED] * _KEPT
        self.answered = -1  # the number of the youngest call an attempt of which got an answer

    def start(self, at: float) -> int:
        """Note a call that started at ``at`` (``time.monotonic()``); its number, for the methods below."""
        number = next(self._numbers)
        self._starts[number % _KEPT] = (number, at)
        return number

    def answer(self, number: int) -> None:
        """An attempt of call ``number`` got an answer from the server (not one made up here)."""
        # A read and a store, not atomic together: a race can leave an older number, which holds a
        # hedge back until the next answer at most.
        self.answered = max(self.answered, number)

    def holds_back(self, number: int, now: float, age: float) -> bool:
        """Whether call ``number``'s hedge must wait: no younger call answered, though one has been
        in flight for ``age`` seconds or more (or more younger calls started than are kept)."""
        if self.answered > number:
            return False  # a younger call was answered: this one is a straggler
        younger, started = self._starts[(number + 1) % _KEPT]
        if younger <= number:
            return False  # no younger call yet: nothing to compare with
        return younger > number + 1 or now - started >= age


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
