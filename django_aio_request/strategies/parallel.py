import contextvars
import functools
import queue
import threading
import time
from collections.abc import Callable

from django_aio_request.core import status
from django_aio_request.core.attempt_threads import AttemptThreadPool
from django_aio_request.core.cancellation import Cancellation, pause
from django_aio_request.core.classifier import ResponseVerdict
from django_aio_request.core.deadline import Deadline
from django_aio_request.core.priority import Priority
from django_aio_request.core.request import Request
from django_aio_request.core.response import (
    REFUSED_OR_ABANDONED,
    EmptyResponse,
    Response,
    is_abandoned,
    is_open_circuit_fallback,
    is_refusal,
    retry_after,
)
from django_aio_request.strategies.arguments import whole
from django_aio_request.strategies.base import (
    MAX_ATTEMPTS,
    RequestStrategy,
    ResponseWithVerdict,
    SendAttempt,
    claim_learner,
    first_attempt,
    too_late_to_send,
)
from django_aio_request.strategies.delays import (
    DelaysProvider,
    RequestAttemptDelaysProvider,
    as_request_delays,
    linear_backoff_delays,
    nan_delay,
    request_unaware,
)
from django_aio_request.strategies.hedge_clock import HedgeClock
from django_aio_request.strategies.stragglers import Pace, Paces
from django_aio_request.transport.deadline_timer import deadline_timer

# How long past the deadline to wait for a worker's answer before making up a 408. The transport
# ends every attempt by its deadline; this only covers a pipeline stage that does not.
_GRACE_SECONDS = 0.05
# How soon the timer looks again at a hedge it held back because attempt 0's answer waited unread.
_LOOK_AGAIN_SECONDS = 0.01
# A hedge held back because the call is no straggler (yet) is woken when a younger call is answered
# or the one holding it back ends (strategies/stragglers.py); this is only a safety net.
_LOOK_AGAIN_HELD_SECONDS = 0.5
# While most calls are slow (Pace.crowded), a call is a straggler once it has waited this many times
# as long as they took at the median.
_SLOWER_THAN_MOST = 2.0
# Answers that say the server is overloaded: no sign that the calls it has not answered are stragglers.
_OVERLOADED = frozenset((429, 503))
# Read from a module global on every hedged call: ``ResponseVerdict.ACCEPT`` goes through the enum's class.
_ACCEPT = ResponseVerdict.ACCEPT


def _answers(response: Response) -> bool:
    """Whether ``response`` tells the pace a call was answered (:meth:`_HedgedCall.answered`)."""
    return not isinstance(response, EmptyResponse) and response.status not in _OVERLOADED


class _HedgedCall:
    """The state of one parallel call: attempts in flight, their cancellations, finished results.

    Attempt 0 runs in the caller's thread. While it runs, hedges are launched at their times by the
    process-wide timer (transport/deadline_timer.py) onto the client's workers; an accepted hedge (or
    a hedge that raised) aborts attempt 0 so that the caller hears of it at once. Once attempt 0 has
    returned, the caller takes over and launches the attempts the timer has not. The timer holds a
    due hedge back while attempt 0's answer waits unread (a busy caller, not a slow server; it looks
    again every 10 ms), or while the call is no straggler (strategies/stragglers.py; until a younger
    call is answered or ends, or at the latest 0.5 s later).
    """

    # What a call starts with, kept on the class: a hedge that never fires is paid for by the steps
    # every call takes, and each field __init__ need not write is one step fewer. The fields an
    # attempt changes are then written on the instance.

    # None: an attempt the client's retry budget refused (it sent nothing). Made, with
    # ``cancellations``, by the first hedge launched (_submit): most calls launch none.
    outcomes: "queue.SimpleQueue[ResponseWithVerdict | BaseException | None] | None" = None
    cancellations: list[Cancellation] | None = None
    in_flight = 0  # hedges launched and not yet heard of by the caller (wait())
    # Launch no more attempts: the retry budget refused one, or the server refused one and said
    # not to try again (is_refusal). The attempts in flight go on, and may still win.
    refused = False
    # An attempt's outcome settled the call (an accepted answer, or an error the caller raises):
    # the timer launches no more hedges. It stopped only once the caller's thread came back from
    # the aborted attempt 0 and took over, and a hedge due in between (1-2 ms on an idle process,
    # more on a busy one) went after the call had its answer (14-32 of 100 calls, hedges 1 ms apart).
    settled = False
    # time.monotonic() before which no further attempt goes: what a rejected 503 or 429 asked in
    # Retry-After (a shedding server asks its callers to step back). Plain float writes: a race
    # between two answers keeps one of their times, either a bound the server asked for.
    not_before = 0.0
    # time.monotonic() when the caller last launched an attempt (0.0: never): the next is due no
    # sooner after it than their times are apart, so a pause for Retry-After that let two
    # attempts' times pass sends them one gap apart, not together.
    launched_at = 0.0
    # The time the accepted answer that settled the call took: the attempts abandoned from then
    # on lost to it, and the time of those that ran at least as long is a lower bound worth
    # learning (see learn()). None until then; never unset.
    won_in: float | None = None
    # The timer's part, under ``lock``: the next attempt it launches, and whether it may.
    next_attempt = 1
    timer_running = False
    cancel_timer: Callable[[], object] | None = None
    # The timer entry that may act: an earlier one replaced by _schedule() does not. None: the
    # first, on the strategy's clock (start_timer()).
    token: object = None
    held = False  # held back by the pace, waiting for a younger call's answer
    # Set by start_timer(): where hedges run, when each is due, how many attempts in all.
    workers: AttemptThreadPool | None = None
    due_at: Callable[[int], float] | None = None
    count = 1
    aborted_first: ResponseWithVerdict | None = None
    # The attempts the caller has heard of, in that order, attempt 0 first. Set by _settle() (a call
    # answered before its hedge was due never needs it); read before, it raises.
    finished: list[ResponseWithVerdict]
    # With stragglers_only: the calls of this method and URL template, and this call's number among them.
    pace: Pace | None = None
    number = 0
    started = 0.0  # time.monotonic() when the call started (set with pace)

    def __init__(
        self,
        send: SendAttempt,
        request: Request,
        deadline: Deadline,
        priority: Priority,
        observe: Callable[[Request, Response], None] | None,
    ) -> None:
        self.send = send
        self.observe = observe
        self.request = request
        self.deadline = deadline
        self.priority = priority
        self.lock = threading.Lock()
        self.first = Cancellation()  # attempt 0's, raised by a hedge that settles the call
        # The caller's context, copied in the caller's thread: hedges may start from the timer's.
        self.context = contextvars.copy_context()

    def run_first(self) -> ResponseWithVerdict | None:
        """Attempt 0, in this thread; None when a hedge aborted it.

        Not counted in :attr:`in_flight`: only this thread reads that, and not while attempt 0 runs.
        The steps that concern an answer attempt 0 rarely gets are skipped by a test, not a call:
        each call here is paid by every hedged call, whose hedge mostly never fires."""
        sent = self.send(self.request, self.deadline, self.priority, 0, self.first)
        result = sent if sent is not None else first_attempt(sent)  # raises: a first attempt is never refused
        response = result.response
        if self.observe is not None:
            self.learn(response)  # aborted too: usually the slow one a hedge beat
        # The pace hears of it from ended_alone() or _settle(): in one step with the call's end when
        # nothing else was launched.
        if result.verdict is not _ACCEPT:
            self.asked_to_wait(result)
        if response.status not in REFUSED_OR_ABANDONED:
            return result  # put first among the finished by _settle(), if the call gets that far
        if is_refusal(response):
            self.refused = True
        if is_abandoned(response):
            # Aborted by a hedge that settled the call (its outcome is in the queue), or with the
            # whole call (an async caller went away): the answer only if nothing else comes.
            self.aborted_first = result
            return None
        return result

    def start_timer(
        self,
        workers: AttemptThreadPool,
        due_at: Callable[[int], float],
        count: int,
        *,
        pace: Pace | None,
        started: float,
        clock: HedgeClock,
    ) -> None:
        """Launch attempts 1..count-1 at ``due_at(k)`` on ``workers`` until :meth:`take_over`; with a
        ``pace``, only while the call is a straggler among its method and URL template's calls.

        The first hedge waits on the strategy's ``clock`` (one timer entry for all its calls, most of
        which never get that far); what follows it, on entries of its own (:meth:`_schedule`).
        ``due_at`` must be a plain look-up: it is called on the process-wide timer thread."""
        if pace is not None:
            self.pace, self.number, self.started = pace, pace.start(started), started
        # No lock yet: no other thread knows of the call before the clock has it, and the timer
        # thread finds it only through the clock's dict, which gets it after these writes.
        self.workers, self.due_at, self.count = workers, due_at, count
        self.first.release_after = due_at(1)  # a hedge that wins lets attempt 0's connection be kept
        self.timer_running = True
        # token is still None: the first _schedule() makes this entry one that may not act.
        self.cancel_timer = clock.add(due_at(1), self._fire_first)

    def _fire_first(self) -> None:
        """The first hedge's time came (on the strategy's clock, see :meth:`start_timer`). A bound
        method rather than a partial: one object fewer a call, and equal to itself as a clock key."""
        self._fire(None)

    def _schedule(self, due: float) -> None:
        """(Holding ``lock``.) Run :meth:`_fire` at ``due``, and no timer entry scheduled before."""
        token = self.token = object()
        self.cancel_timer = deadline_timer.schedule(due, functools.partial(self._fire, token))

    def _wake(self) -> None:
        """A younger call was answered: a hedge held back for this call goes now (on the timer thread)."""
        with self.lock:
            if not (self.held and self.timer_running):
                return
            self.held = False
            cancel = self.cancel_timer
            self._schedule(time.monotonic())
        if cancel is not None:
            cancel()

    def _fire(self, token: object) -> None:
        """On the process-wide timer thread: start the next hedge on a worker and schedule the one after.

        A method, not a closure in :meth:`start_timer`: a closure that schedules itself holds itself in
        its own cell, a reference cycle that kept each call's state (its responses among it) alive
        until the garbage collector ran."""
        with self.lock:
            if not self.timer_running or token is not self.token:
                return
            workers, due_at = self.workers, self.due_at
            # start_timer() set both before it scheduled this
            assert workers is not None
            assert due_at is not None
            self.held = False
            if self.settled:
                self.timer_running = False
                return
            if self.first.answer_arrived():
                # Attempt 0's answer is in this process, unread: the caller is late, not the
                # server, and a hedge would only add to the work it is behind on. Look again
                # shortly rather than give up: what arrived may not end attempt 0 (a redirect it
                # follows to a server that has not answered). Once attempt 0 is over, the caller
                # takes over and launches the rest itself if its answer is not accepted.
                self._look_again(_LOOK_AGAIN_SECONDS)
                return
            pace = self.pace
            if pace is not None and self._kept_back(pace, due_at(1) - due_at(0)):
                return
            if self.not_before > time.monotonic():
                # A rejected attempt's 503 or 429 asked for a pause (Retry-After): the hedge goes after it.
                if self.not_before >= self.deadline.expires_at:
                    self.timer_running = False
                else:
                    self._schedule(self.not_before)
                return
            if self.refused:
                # The budget refused an earlier hedge (on its worker, after this entry was scheduled):
                # no more attempts, as the caller's own loop does (two hedges went where one was refused).
                self.timer_running = False
                return
            attempt = self.next_attempt
            if not self.deadline.expired and not self._submit(workers, attempt):
                # Every worker busy: no hedge while attempt 0 runs, and the attempts left are the
                # caller's once it ends (in its own thread if need be). Counted as launched, they
                # were lost: a rejected attempt 0 was followed by nothing (1.12 requests a call
                # where 3 were due, 8 callers on 1 worker).
                self.timer_running = False
                return
            self.next_attempt += 1
            if self.refused or self.next_attempt >= self.count or self.deadline.expired:
                self.timer_running = False
                return
            # The next one at its time, but no sooner after this one than their times are apart:
            # a hedge held back (or fired late) must not let the ones due meanwhile go with it.
            now, gap = time.monotonic(), due_at(self.next_attempt) - due_at(attempt)
            self._schedule(max(due_at(self.next_attempt), now + gap))

    def _kept_back(self, pace: Pace, delay: float) -> bool:
        """(Holding ``lock``.) Whether the stragglers rule keeps the hedge back now, ``delay`` being the
        first hedge's; it is then looked at again later (strategies/stragglers.py)."""
        now = time.monotonic()
        typical = pace.crowded(now, delay) if delay > 0 else None
        if typical is not None:
            # Most calls answered lately took the hedge's delay or longer: a queue or a pause, every
            # call slow. This one is a straggler only once it has waited twice as long as they took;
            # looked at again then (once, not every delay: a 1 ms delay looked 17,000 times in 2 s).
            until = self.started + _SLOWER_THAN_MOST * typical
            if until > now:
                self._look_again(until - now)
                return True
        while True:
            # Younger calls wait as long and none was answered: a stall or a queue, not a
            # straggler. Held until a younger call is answered or the one holding it back ends.
            # Held while a younger call has waited half the first hedge's delay unanswered.
            holder = pace.holder(self.number, time.monotonic(), delay / 2)
            if holder is None:
                return False
            if pace.wait(self.number, holder, self._wake):
                self.held = True
                self._look_again(_LOOK_AGAIN_HELD_SECONDS)
                return True

    def _look_again(self, seconds: float) -> None:
        """(Holding ``lock``.) Fire again ``seconds`` from now, or stop at the deadline."""
        if self.deadline.expired:
            self.timer_running = False
        else:
            self._schedule(time.monotonic() + seconds)

    def ended_alone(self, first: Response) -> bool:
        """Stop the timer; whether attempt 0 (which got ``first``) was the call's only attempt (the
        timer launched no hedge), and then end the call as :meth:`cancel_rest` would, telling the pace
        of ``first`` (:meth:`answered`) in the same step.

        Then an accepted attempt 0 is the call's answer as it is: nothing is in flight to abort or
        to wait for, and no answer can come that :meth:`wins` would weigh against it."""
        cancel = self.cancel_timer
        if self.token is None and cancel is not None and cancel() is not None:
            # The clock gave back the first hedge's entry, so the timer never ran for this call and
            # never will: nothing was launched, and no lock is needed to know it.
            self.timer_running, self.cancel_timer = False, None
            alone = True
        else:
            with self.lock:
                self.timer_running = False
                cancel, self.cancel_timer = self.cancel_timer, None
                alone = self.next_attempt == 1
            if cancel is not None:
                cancel()
        if alone and self.pace is not None:
            # _answers(first), written out: every hedged call comes here.
            self.pace.end(
                self.number, answered=not isinstance(first, EmptyResponse) and first.status not in _OVERLOADED
            )
        return alone

    def take_over(self) -> int:
        """Stop the timer; the number of the first attempt it did not launch."""
        with self.lock:
            self.timer_running = False
            cancel, self.cancel_timer = self.cancel_timer, None
            next_attempt = self.next_attempt
        if cancel is not None:
            cancel()
        return next_attempt

    def _submit(self, workers: AttemptThreadPool, attempt: int) -> bool:
        """Start ``attempt`` on a worker (holding ``lock``); False when every worker is busy."""
        cancellation = Cancellation()
        cancellation.release_after = 0.0  # a hedge that loses may be stopped at any time
        context = self.context.copy()  # one copy per attempt: a context runs in one thread at a time
        outcomes, cancellations = self.outcomes, self.cancellations
        if outcomes is None or cancellations is None:  # the call's first hedge
            outcomes, cancellations = self.outcomes, self.cancellations = queue.SimpleQueue(), []

        def run() -> None:
            if self.settled or cancellation.cancelled:
                # Launched before the call had its answer, started by a worker after it: not sent, and
                # the budget not asked (granted, what it paid for went nowhere; refused, it counted a
                # refusal the call's response never heard of: 6-20 of 1200 calls at 32 threads).
                outcomes.put(None)
                return
            try:
                result = self.send(self.request, self.deadline, self.priority, attempt, cancellation)
                if result is None:
                    self.refused = True  # before the put: the caller sees it once it hears of the attempt
                    outcomes.put(None)
                    return
                refused = is_refusal(result.response)
                settles = result.accepted and not refused and not is_open_circuit_fallback(result.response)
                if settles:
                    self.settled = True  # at once: the timer launches nothing after the call's answer came
                # Observed here, not by the caller: the caller has often moved on before a loser ends,
                # and losers are the slow attempts an adaptive delay most needs to hear about.
                self.learn(result.response)
                self.answered(result.response)
                self.asked_to_wait(result)
                if refused:
                    # The server declined this hedge (shed, or too little time left for it): no
                    # further hedges, and attempt 0, admitted before, runs on. Taken as the call's
                    # answer, a shedding server's 503 ended every hedged call at its limit with
                    # attempt 0 aborted mid-view (20 of 20 calls that single attempts served).
                    self.refused = True  # before the put: the caller sees it once it hears of the attempt
                    outcomes.put(result)
                    return
                outcomes.put(result)
                if settles:
                    # The classifier accepts the 499 of an attempt abandoned with its call (a 4xx):
                    # that settles the call, but wins nothing over the others abandoned with it.
                    if not is_abandoned(result.response) and self.won_in is None:
                        # Before attempt 0 is aborted: it learns its 499 only then.
                        self.won_in = result.response.elapsed
                    self.first.cancel()  # the call is settled: attempt 0 must not hold the caller
            except BaseException as error:
                self.settled = True
                outcomes.put(error)
                self.first.cancel()  # the caller must hear of it now

        if workers.try_submit(lambda: context.run(run), stop=cancellation.cancel) is None:
            return False
        cancellations.append(cancellation)
        self.in_flight += 1
        return True

    def asked_to_wait(self, result: ResponseWithVerdict) -> None:
        """Keep what a rejected 503 or 429 asked in ``Retry-After``: no attempt before then."""
        if not result.accepted:
            wait = retry_after(result.response)
            if wait > 0:
                self.not_before = max(self.not_before, time.monotonic() + wait)

    def answered(self, response: Response) -> None:
        """Tell the pace an attempt got the server's answer (not one made up here: a timeout, an abort),
        unless it is the server saying it is overloaded (503, 429): a shedding server answers younger
        calls at once while older ones wait in its queue, and counted, every queued call read as a
        straggler (0.52 hedges a call with the rule against 0.48 without)."""
        if self.pace is not None and _answers(response):
            self.pace.answer(self.number)

    def launch(self, workers: AttemptThreadPool, attempt: int) -> ResponseWithVerdict | None:
        """Start ``attempt`` on a worker; with none free, once the attempts in flight have ended
        without an accepted answer, run it here.

        Returns the response when the attempt ran in this thread, or the accepted answer of one in
        flight that came while it waited for a worker; else None (also when the retry budget refused
        it, which sets ``refused``). Skipped while others were in flight, the attempt was lost once
        they were rejected: 2 of 3 attempts a call for a sequential-like strategy on a full pool.
        """
        while True:
            accepted, go = self._step_back()
            if not go:
                return accepted
            with self.lock:
                self.launched_at = time.monotonic()
                if self._submit(workers, attempt):
                    return None
                busy = self.in_flight
            if not busy:
                break
            accepted = self.wait_accepted_until(self.deadline.expires_at)
            if accepted is not None:
                return accepted
            if self.deadline.expired or self.refused:
                return None
        sent = self.send(self.request, self.deadline, self.priority, attempt, None)
        if sent is None:
            self.refused = True
            return None
        self.learn(sent.response)
        self.answered(sent.response)
        self.asked_to_wait(sent)
        if is_refusal(sent.response):
            self.refused = True
        self.finished.append(sent)
        return sent

    def _step_back(self) -> tuple[ResponseWithVerdict | None, bool]:
        """Wait until :attr:`not_before` (what a rejected 503 or 429 asked in ``Retry-After``),
        looking at the answers of the attempts in flight meanwhile. Returns an accepted answer that
        came, and whether an attempt may go now: not when one was refused meanwhile, when the pause
        ends past the deadline, or when the deadline ran out."""
        while (wait := self.not_before - time.monotonic()) > 0:
            if too_late_to_send(self.deadline, after=wait):
                self.refused = True  # asked to wait past the deadline: no more attempts
                return None, False
            if not self.in_flight:
                pause(wait)
                return None, not self.deadline.expired
            accepted = self.wait_accepted_until(self.not_before)  # their answers may still win meanwhile
            if accepted is not None:
                return accepted, False
            if self.refused or self.deadline.expired:
                # One of them was refused meanwhile (is_refusal) or the budget refused one: nothing
                # goes after it (an attempt went at the pause's end, 0.75 s after a refusal).
                return None, False
        return None, True

    def learn(self, response: Response) -> None:
        """Tell the delays provider of an attempt's response; an abandoned one only when an accepted
        answer settled the call and the abandoned attempt had run at least as long as that answer
        took (attempt 0 a hedge beat: the slow one an adaptive delay must hear of).

        One abandoned with its call (an async caller cancelled, a sibling that raised) is no latency
        of the server's: learned, 250 calls cancelled by their caller at 3 ms made a server answering
        in 20 ms look saturated, hedges held for a window. Nor is a hedge launched just before
        attempt 0 answered: a lower bound of a few milliseconds below a latency the call measured,
        which pulled the percentile and the baseline of saturation down with every such call."""
        observe = self.observe
        if observe is None:
            return  # the delays provider learns nothing
        if not is_abandoned(response):
            observe(self.request, response)
            return
        won_in = self.won_in
        if won_in is not None and response.elapsed >= won_in:
            observe(self.request, response)

    def wait(self, timeout: float) -> ResponseWithVerdict | None:
        """The next finished attempt, or None if none finished within ``timeout`` (or it was refused)."""
        outcomes = self.outcomes
        if outcomes is None:  # no hedge launched: nothing can finish
            return None
        try:
            outcome = outcomes.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None
        with self.lock:
            self.in_flight -= 1
        if outcome is None:
            return None
        if isinstance(outcome, BaseException):
            raise outcome
        self.finished.append(outcome)
        return outcome

    def wait_accepted_until(self, until: float) -> ResponseWithVerdict | None:
        """Wait for a winning response until ``until`` or until nothing is in flight.

        Past ``until``, the outcomes already queued are still looked at: a caller whose thread came
        back late (a pause, a busy process) returned attempt 0's 499 though a hedge's accepted answer
        had been waiting in the queue since long before the deadline."""
        while self.in_flight:
            left = until - time.monotonic()
            result = self.wait(left)  # at once when left <= 0: only what is queued already
            if result is not None and self.wins(result):
                return result
            if result is None and left <= 0:
                return None
        return self.held_answer()

    def held_answer(self) -> ResponseWithVerdict | None:
        """The first accepted answer :meth:`wins` held back while attempts were in flight (a server's
        refusal, an open circuit's fallback), or None: the call's answer once nothing else won. Held
        and then forgotten, a refused hedge lost to attempt 0's earlier 500 (10 of 10 calls), and
        ``retry_until_deadline_expired`` began another round 0.4 s after the refusal."""
        return next((result for result in self.finished if result.accepted), None)

    def wins(self, result: ResponseWithVerdict) -> bool:
        """An accepted response ends the call, except, while attempts are still in flight, an open
        circuit's fallback (one of them may be the breaker's half-open probe, and aborting it for the
        fallback would keep the circuit from ever closing) and a server's refusal of that attempt
        (:func:`is_refusal`: the others were admitted and may be answered). Either is the call's
        answer once nothing else is. A peer's answer carrying ``X-Circuit-Breaker`` is not that
        fallback: accepted, it wins like any other."""
        if not result.accepted:
            return False
        response = result.response
        return not (self.in_flight and (is_open_circuit_fallback(response) or is_refusal(response)))

    def cancel_rest(self) -> None:
        """Stop the timer and abort every attempt in flight. Looked at without the lock first: once
        the timer is stopped it never runs again, and only the timer adds to ``cancellations`` from
        another thread. A timer that stopped itself (its last hedge launched, the pool full, the
        deadline passed) still left its entry's take-back, which holds this call (through
        :meth:`_fire`): let go, or the cycle kept the call's answers until the garbage collector ran."""
        if self.timer_running or self.cancel_timer is not None:
            self.take_over()
        if self.cancellations:
            with self.lock:
                cancellations = list(self.cancellations)
            for cancellation in cancellations:
                cancellation.cancel()
        if self.pace is not None:
            self.pace.end(self.number)  # no longer holds an older call's hedge back


class ParallelStrategy(RequestStrategy):
    """Hedged attempts: attempt ``k`` starts ``delays(k)`` after the call started, unless an
    accepted response came first; the first accepted response wins and the others are aborted
    (an open circuit breaker's fallback wins only once no attempt is left in flight).

    Attempt 0 runs in the caller's own thread, so a call whose hedges never fire costs about what
    a single attempt does (no thread hand-over). Hedges start at their times from a timer, on the
    client's worker pool, each with a copy of the caller's context; an accepted hedge aborts attempt
    0. When every attempt in flight has been rejected, the next one starts at once rather than at its
    time (aio-request waits; waiting only adds latency), unless a rejected 503 or 429 asked for a
    pause in ``Retry-After``: no attempt goes before it, none if it ends past the deadline. A
    server's refusal of an attempt (``X-Do-Not-Retry`` on a 408, 429 or 503: shed, or too little
    time left for it) launches no further attempt and ends none in flight; it is the answer only if
    none of them wins (aio-request takes it as the answer at once). When the pool is full, a hedge is skipped
    (and once attempt 0 is over, a call with nothing in flight runs its next attempt in the caller's
    thread): a full pool degrades hedging, it never blocks a caller. When the client's retry budget
    refuses an attempt, no further one is launched; the attempts in flight may still win. No hedge
    is launched while attempt 0's answer waits unread in its socket (the transport can tell over plain
    HTTP): the caller is behind, not the server. The hedge goes once nothing waits and attempt 0 is
    still running (a redirect it followed), or the caller launches it after a rejected answer.
    """

    def __init__(
        self,
        *,
        attempts_count: int,
        delays_provider: DelaysProvider | RequestAttemptDelaysProvider,
        stragglers_only: bool = True,
    ) -> None:
        if not 1 <= whole("attempts_count", attempts_count) <= MAX_ATTEMPTS:
            raise ValueError(f"attempts_count must be from 1 to {MAX_ATTEMPTS}, not {attempts_count}")
        if not isinstance(stragglers_only, bool):
            raise TypeError(f"stragglers_only must be True or False, not {stragglers_only!r}")
        self.attempts_count = int(attempts_count)
        self.delays = as_request_delays(delays_provider)
        self.stragglers_only = stragglers_only
        self._paces = Paces()
        self._clock = HedgeClock()
        # The provider last seen, and the plain delays(attempt) it wraps (None: it looks at the request).
        self._plain: tuple[RequestAttemptDelaysProvider, DelaysProvider | None] = (
            self.delays,
            request_unaware(self.delays),
        )

    def claim(self, endpoint: str) -> None:
        if self.stragglers_only:
            claim_learner(self, endpoint)  # its paces (strategies/stragglers.py), per method and URL template
        claim_learner(self.delays, endpoint)

    def request(
        self, send: SendAttempt, workers: AttemptThreadPool, request: Request, deadline: Deadline, priority: Priority
    ) -> ResponseWithVerdict:
        provider = self.delays  # read each call, as its observe: either may be replaced meanwhile
        observe: Callable[[Request, Response], None] | None = provider.observe
        if getattr(observe, "__func__", None) is RequestAttemptDelaysProvider.observe:
            observe = None  # the provider learns nothing: not told of each attempt
        call = _HedgedCall(send, request, deadline, priority, observe)
        started = time.monotonic()
        count = self.attempts_count

        # Every attempt's time, worked out here in the caller's thread: the timer thread also ends
        # attempts at their deadlines, so it must not wait on a delays provider (locks, sorting).
        # A plain delays(attempt) is called as it is, not through the wrapper that passes the request.
        plain = self._plain
        if plain[0] is not provider:  # replaced since the last call (one tuple: never half of each)
            plain = self._plain = (provider, request_unaware(provider))
        due, delays, expires_at = [started], plain[1], deadline.expires_at
        for attempt in range(1, count):
            delay = delays(attempt) if delays is not None else provider(request, attempt)
            if delay != delay:  # noqa: PLR0124 - NaN, neither before nor after any time: the hedge went never, or at once
                raise nan_delay(provider, attempt)
            at = started + delay
            due.append(at if at < expires_at else expires_at)
        due_at = due.__getitem__

        try:
            if count > 1:
                pace = self._paces.of(request.method, request.url) if self.stragglers_only else None
                call.start_timer(workers, due_at, count, pace=pace, started=started, clock=self._clock)
            first = call.run_first()
        except BaseException:
            call.cancel_rest()
            raise
        if first is not None and first.verdict is _ACCEPT and call.ended_alone(first.response):
            return first  # the common case: answered before any hedge was due
        try:
            result = self._settle(call, workers, due_at, started, first)
            if result.accepted and not is_abandoned(result.response) and call.won_in is None:
                call.won_in = result.response.elapsed  # the attempts cancel_rest() aborts lost to it
            return result
        finally:
            call.cancel_rest()

    def _settle(
        self,
        call: _HedgedCall,
        workers: AttemptThreadPool,
        due_at: Callable[[int], float],
        started: float,
        first: ResponseWithVerdict | None,
    ) -> ResponseWithVerdict:
        """The hedges, once attempt 0 (``first``: None when a hedge aborted it) is over, and the
        answer the call returns."""
        deadline = call.deadline
        next_attempt = call.take_over()
        call.finished = []
        if first is not None:
            call.finished.append(first)
            call.answered(first.response)  # (an aborted attempt 0 got no answer the pace counts)
        if first is not None and call.wins(first):
            return first
        if not call.refused:
            for attempt in range(next_attempt, self.attempts_count):
                due = due_at(attempt)
                if attempt > next_attempt:  # the caller launched the one before: their gap at least
                    due = max(due, call.launched_at + due - due_at(attempt - 1))
                accepted = call.wait_accepted_until(due)
                if accepted is not None:
                    return accepted
                if deadline.expired or call.refused:
                    break
                inline = call.launch(workers, attempt)
                if inline is not None and inline.accepted:
                    return inline
                if call.refused:
                    break
        accepted = call.wait_accepted_until(deadline.expires_at + _GRACE_SECONDS) or call.held_answer()
        if accepted is not None:
            return accepted
        if call.finished:
            return call.finished[0]
        if call.aborted_first is not None:
            return call.aborted_first
        timeout = EmptyResponse(status=status.TIMEOUT, elapsed=time.monotonic() - started)
        return ResponseWithVerdict(timeout, ResponseVerdict.REJECT)

    def __repr__(self) -> str:
        return f"<ParallelStrategy attempts={self.attempts_count} stragglers_only={self.stragglers_only}>"


def parallel_strategy(
    *,
    attempts_count: int = 3,
    delays_provider: DelaysProvider | RequestAttemptDelaysProvider | None = None,
    stragglers_only: bool = True,
) -> RequestStrategy:
    return ParallelStrategy(
        attempts_count=attempts_count,
        delays_provider=delays_provider if delays_provider is not None else linear_backoff_delays(),
        stragglers_only=stragglers_only,
    )
