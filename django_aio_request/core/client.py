import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Literal

from django_aio_request.breaker.circuit_breaker import CircuitBreaker
from django_aio_request.core import headers as h
from django_aio_request.core import send_again, status
from django_aio_request.core.attempt_threads import AttemptThreadPool, stop_at_exit
from django_aio_request.core.call_threads import CallThreadPool
from django_aio_request.core.cancellation import Cancellation, TaskCancellation, heed_in_pauses
from django_aio_request.core.classifier import ResponseClassifier, ResponseVerdict
from django_aio_request.core.context import get_context
from django_aio_request.core.deadline import LONGEST_DEADLINE, Deadline, client_low_timeout_threshold
from django_aio_request.core.downstream_wait import current_downstream_wait
from django_aio_request.core.event_loop import warn_if_blocking_the_loop
from django_aio_request.core.pipeline import Attempt, Next
from django_aio_request.core.priority import Priority
from django_aio_request.core.request import Request
from django_aio_request.core.response import Response, UnreachedResponse, UnsentResponse, is_open_circuit_fallback
from django_aio_request.core.retry_budget import RetryBudget
from django_aio_request.metrics.breaker import unwatch_breaker, watch_breaker
from django_aio_request.metrics.client import ClientMetrics
from django_aio_request.strategies import RequestStrategy, ResponseWithVerdict, SendAttempt
from django_aio_request.strategies.base import claim_strategy
from django_aio_request.transport.base import Transport

#: How hedges are prioritised: None sends them with the call's priority; "lower" one step lower
#: (high -> normal -> low; low stays low); a Priority sends them with it, but never above the call's.
HedgePriority = Literal["lower"] | Priority | None

_LOWER = {Priority.HIGH: Priority.NORMAL, Priority.NORMAL: Priority.LOW, Priority.LOW: Priority.LOW}
_RANK = {Priority.LOW: 0, Priority.NORMAL: 1, Priority.HIGH: 2}


def hedge_priority_for(priority: Priority, hedge_priority: HedgePriority) -> Priority:
    """The priority a hedge of a call of ``priority`` is sent with."""
    if hedge_priority is None:
        return priority
    if hedge_priority == "lower":
        return _LOWER[priority]
    wanted = Priority(hedge_priority)
    return wanted if _RANK[wanted] < _RANK[priority] else priority


def validate_hedge_priority(value: object) -> HedgePriority:
    """``value`` if it is a valid ``hedge_priority``, else raise ValueError."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == "lower":  # in any case, as the priorities are
        return "lower"
    parsed = Priority.parse(value) if isinstance(value, str) else None
    if parsed is None:
        raise ValueError(f"hedge_priority must be None, 'lower' or a priority (high, normal, low), not {value!r}")
    return parsed


class Client:
    """Calls one endpoint; made by :func:`django_aio_request.setup`. Safe to share between threads."""

    def __init__(
        self,
        *,
        endpoint: str,
        strategy: RequestStrategy,
        classifier: ResponseClassifier,
        timeout: float,
        priority: Priority,
        pipeline: Next,
        workers: AttemptThreadPool,
        transport: Transport,
        metrics: ClientMetrics | None = None,
        circuit_breaker: CircuitBreaker[str, Response] | None = None,
        retry_budget: RetryBudget | None = None,
        hedge_priority: HedgePriority = None,
        low_timeout_threshold: float = 0.0,
    ) -> None:
        self.endpoint = endpoint
        # A strategy that learns per method and URL template learns from one endpoint (strategies/base.py)
        claim_strategy(strategy, endpoint)
        self.strategy = strategy
        self.classifier = classifier
        self.timeout = timeout
        self.priority = priority
        self.transport = transport
        self.circuit_breaker = circuit_breaker  # the breaker given to setup(), or None
        self.retry_budget = retry_budget  # shared by all the client's strategies; None: no budget
        self.hedge_priority = validate_hedge_priority(hedge_priority)
        # An extra attempt with less time left than this is not sent (see _too_late): setup() gives
        # the pipeline's LowTimeoutModule threshold, which answers 408 to a first attempt instead.
        self.low_timeout_threshold = low_timeout_threshold
        self._pipeline = pipeline
        self._workers = workers
        self._metrics = metrics
        self._async_drivers: CallThreadPool | None = None
        self._drivers_lock = threading.Lock()
        self._closed = False
        # What stands in for this client while a test fakes its name (django_aio_request.testing's
        # fake_client): a function giving the client now under that name. A reference kept before
        # the test (billing = clients["billing"], at import) called the network past the fake.
        self.stand_in: Callable[[], Client | None] | None = None
        # Async calls submitted and not done (queued or running): close() waits for none of them.
        self._async_in_flight = 0
        self._in_flight_lock = threading.Lock()
        _clients.add(self)

    @contextlib.contextmanager
    def request(
        self,
        request: Request,
        *,
        deadline: Deadline | None = None,
        priority: Priority | None = None,
        strategy: RequestStrategy | None = None,
    ) -> Iterator[Response]:
        """Make the call and yield its final response.

        The deadline is ``deadline`` when given, else the earlier of the context's (set by the
        middleware from the incoming request) and the client's timeout from now. A call that names
        no priority sends the context's, else the client's; a named one is normalised against the
        context's.

        ``response.budget_exhausted`` is True when the client's retry budget refused an extra
        attempt (a retry or a hedge) that the call would have made.
        """
        _check_call(request, deadline, priority)
        if self.stand_in is not None and (other := self._standing_in()) is not None:
            with other.request(request, deadline=deadline, priority=priority, strategy=strategy) as response:
                yield response  # which warned, if it blocks a loop: once, not here again
            return
        warn_if_blocking_the_loop()
        if self._closed:
            self._reopen()
        context = get_context()
        deadline = self._deadline(deadline, context.deadline)
        priority = (context.priority or self.priority) if priority is None else priority.within(context.priority)
        wait = current_downstream_wait()
        if wait is None:
            yield self._call(request, deadline, priority, strategy)
            return
        wait.begin()  # load shedding judges the request being served without this wait
        cpu = time.thread_time()
        try:
            response = self._call(request, deadline, priority, strategy)
        finally:
            wait.end(time.thread_time() - cpu)
        yield response

    @contextlib.asynccontextmanager
    async def arequest(
        self,
        request: Request,
        *,
        deadline: Deadline | None = None,
        priority: Priority | None = None,
        strategy: RequestStrategy | None = None,
    ) -> AsyncIterator[Response]:
        """:meth:`request` for async code: ``async with client.arequest(get(...)) as response:``.

        The same call (deadline and priority from the context, strategies, breaker, retry budget,
        metrics, connection pool), driven by one of the client's call threads so the event loop is
        never blocked. Cancelling the awaiting task aborts every attempt in flight (their sockets
        are shut down) and raises ``CancelledError`` at once; the metrics count the attempts it sent,
        not a call that returned (docs/metrics.md). A call still waiting for a free call
        thread when its deadline passes answers 408 without sending anything (its metrics are those of
        a sync call past its deadline).
        """
        _check_call(request, deadline, priority)
        if self.stand_in is not None and (other := self._standing_in()) is not None:
            async with other.arequest(request, deadline=deadline, priority=priority, strategy=strategy) as faked:
                yield faked
            return
        if self._closed:
            self._reopen()
        context = get_context()
        deadline = self._deadline(deadline, context.deadline)
        priority = (context.priority or self.priority) if priority is None else priority.within(context.priority)
        task = asyncio.current_task()
        # Cancelled also as soon as the task is asked to (TaskCancellation): no attempt goes after that.
        cancellation = Cancellation() if task is None else TaskCancellation(task, task.cancelling())
        copied = contextvars.copy_context()  # enrichers and hedges see the task's contextvars
        copied.run(heed_in_pauses, cancellation)  # a strategy's pause before a retry ends when it is raised
        started = time.perf_counter()
        future = self._submit_async(
            functools.partial(
                self._run_unless_cancelled,
                cancellation,
                functools.partial(copied.run, self._run, request, deadline, priority, strategy, cancellation),
            ),
            cancellation,
        )
        wait = current_downstream_wait()
        if wait is not None:
            wait.begin()  # load shedding judges the request being served without this wait
        try:
            waiting = asyncio.wrap_future(future)
            # Waits until the deadline, not past it: a call still queued then answers 408 at once.
            # One a call thread has started cannot be cancelled (future.cancel() is False): it gives
            # its own answer, by its deadline (the transport sees to that), and is awaited below. (A
            # 50 ms grace past the deadline, for a call started meanwhile to answer itself, bought
            # nothing cancel() does not ensure, and made a call given 0.2 s return after 0.25 s.)
            done, _ = await asyncio.wait({waiting}, timeout=deadline.timeout)
            while not done and not deadline.expired:  # the loop's timer may fire a clock tick early
                done, _ = await asyncio.wait({waiting}, timeout=max(deadline.timeout, 0.001))
            if not done and future.cancel():
                # Never started (every call thread busy until the deadline): nothing was sent.
                response: Response = UnsentResponse(status=status.TIMEOUT, headers={h.X_DO_NOT_RETRY: "1"})
                metrics = self._metrics
                if metrics is not None:
                    # Recorded as a sync call past its deadline is (LowTimeoutModule, then _call): its
                    # first attempt refused as expired, and the call, with the 408 it returned.
                    metrics.attempt(request.method, 0)
                    metrics.deadline_rejected(request.method, "expired")
                    metrics.call(
                        request.method,
                        request.url,
                        response.status,
                        circuit_breaker=False,
                        attempt=0,
                        elapsed=time.perf_counter() - started,
                    )
            else:
                result, _ = await waiting
                # Recorded here, once the call returns it: a call whose task was cancelled returned
                # nothing (its strategy's 499 reached nobody), and counts only the attempts it sent.
                # Its latency is what its caller waited, the wait for a call thread included: timed
                # from the call thread's start, ten calls queued on one thread for a 100 ms peer were
                # recorded at 0.1 s each while their callers waited 0.56 s on average.
                self._record_call(request, result, time.perf_counter() - started)
                response = result.response
        except asyncio.CancelledError:
            cancellation.cancel()  # shuts the sockets of every attempt in flight
            future.cancel()  # a call that has not started yet never will
            raise
        finally:
            if wait is not None:
                wait.end()
        yield response

    @staticmethod
    def _run_unless_cancelled(
        cancellation: Cancellation, run: Callable[[], tuple[ResponseWithVerdict, float]]
    ) -> tuple[ResponseWithVerdict, float]:
        """``run()`` on the call thread that took the call, unless its task was cancelled meanwhile.

        ``task.cancel()`` counts the request at once (``Task.cancelling()``, which a
        :class:`TaskCancellation` reads here, from the call thread), while the task learns of it at
        its next step: when several queued calls were cancelled together, the thread the first one's
        abort freed took the next before that one's task ran its ``future.cancel()``, and sent it (a
        POST among them) after the cancellation.
        """
        if cancellation.cancelled:
            return ResponseWithVerdict(UnsentResponse(status=status.CANCELLED), ResponseVerdict.REJECT), 0.0
        return run()

    def _submit_async(
        self, call: Callable[[], tuple[ResponseWithVerdict, float]], cancellation: Cancellation
    ) -> "concurrent.futures.Future[tuple[ResponseWithVerdict, float]]":
        """Hand an async ``call`` (``cancellation`` aborts it) to a call thread, counted in flight
        (see :meth:`close`) until it is done.

        Its call thread is a ``ThreadPoolExecutor`` worker, which the interpreter waits for at exit:
        a call whose event loop ran in a daemon thread held the process until its deadline. Until it
        is done, exit cancels it as it stops a hedge, if the thread submitting it (the loop's) can no
        longer wait for it: the main thread, a daemon thread, or one that ended. A call made in a
        non-daemon thread still running gets its answer.
        """
        forget = stop_at_exit(cancellation.cancel)
        with self._in_flight_lock:  # counted before it can reach the drivers: see close()
            self._async_in_flight += 1

        def done(_: object = None) -> None:
            forget()
            with self._in_flight_lock:
                self._async_in_flight -= 1

        while True:
            drivers = self._drivers()
            try:
                future = drivers.submit(call)
                break
            except RuntimeError:
                if drivers is self._async_drivers:
                    # Not a close() that took these drivers away meanwhile: interpreter shutdown, or a
                    # thread that could not be started, which leaves the call queued: cancelled, it
                    # is never sent (a later call's thread sent it, its caller told it had failed).
                    cancellation.cancel()
                    done()
                    raise
            except BaseException:
                cancellation.cancel()
                done()
                raise
        future.add_done_callback(done)
        return future

    def _deadline(self, given: Deadline | None, context: Deadline | None) -> Deadline:
        """The call's deadline: ``given``, else the earlier of ``context`` and the client's timeout.

        ``given`` further than :data:`LONGEST_DEADLINE` is that far.

        aio-request (0.2.9) takes ``given or context or timeout``: inside a request served with a
        20 s deadline, a client configured with a 0.5 s timeout waits 20 s. Here the client's
        timeout caps it, as gRPC, Finagle and Envoy bound a call by the earlier of the propagated
        deadline and the call's own timeout.
        """
        if given is not None:
            # One further than the header carries (31 years) is as good as none, and past about 292
            # years it overflowed the waits it meets (a lock's, a name lookup's): OverflowError out
            # of the call, or a 489 (a review, 1e10 s). Such a call has the farthest the header carries.
            now = time.monotonic()
            return given if given.expires_at - now <= LONGEST_DEADLINE else Deadline(now + LONGEST_DEADLINE)
        own = time.monotonic() + self.timeout
        if context is not None and context.expires_at <= own:
            return context
        return Deadline(own)

    def _call(
        self, request: Request, deadline: Deadline, priority: Priority, strategy: RequestStrategy | None
    ) -> Response:
        """A sync call: run the strategy in this thread and record the call."""
        result, elapsed = self._run(request, deadline, priority, strategy, None)
        self._record_call(request, result, elapsed)
        return result.response

    def _run(
        self,
        request: Request,
        deadline: Deadline,
        priority: Priority,
        strategy: RequestStrategy | None,
        cancellation: Cancellation | None,
    ) -> tuple[ResponseWithVerdict, float]:
        """Run the strategy in this thread: the call's result and how long it took. ``cancellation``
        (async calls) aborts every attempt."""
        call = None if self.retry_budget is None and self.hedge_priority is None else _Call(self)
        send: SendAttempt = self._send if call is None else call.send
        if cancellation is not None:
            send = _cancellable(send, cancellation)
        if strategy is not None and strategy is not self.strategy:
            claim_strategy(strategy, self.endpoint)  # one given to the call: it learns from this endpoint only
        started = time.perf_counter()
        # Its hedges belong to this thread, the one waiting for them, whichever starts them: see
        # attempt_threads._stop_at_exit.
        workers = self._workers.for_caller(threading.current_thread())
        # The strategy does not pause for a retry this client would refuse to send (too_late_to_send).
        threshold = client_low_timeout_threshold.set(self.low_timeout_threshold)
        try:
            result = (strategy or self.strategy).request(send, workers, request, deadline, priority)
        finally:
            client_low_timeout_threshold.reset(threshold)
        elapsed = time.perf_counter() - started
        if call is not None and call.refused:
            result.response.budget_exhausted = True
        return result, elapsed

    def _record_call(self, request: Request, result: ResponseWithVerdict, elapsed: float) -> None:
        """Record a call that returned ``result`` to its caller (not one its caller cancelled)."""
        metrics = self._metrics
        if metrics is not None:
            response = result.response
            metrics.call(
                request.method,
                request.url,  # the template ("things/{id}"): a bounded label
                response.status,
                circuit_breaker=is_open_circuit_fallback(response),
                attempt=result.attempt,
                elapsed=elapsed,
            )

    def _drivers(self) -> CallThreadPool:
        """The threads that drive async calls: as many as the client's attempt workers, made on first use
        (and never on the event loop's thread: core/call_threads.py)."""
        drivers = self._async_drivers
        if drivers is None:
            with self._drivers_lock:
                drivers = self._async_drivers
                if drivers is None:
                    drivers = self._async_drivers = CallThreadPool(
                        max_workers=self._workers.max_workers, thread_name_prefix="django-aio-request-async"
                    )
        return drivers

    def _send(
        self, request: Request, deadline: Deadline, priority: Priority, number: int, cancellation: Cancellation | None
    ) -> ResponseWithVerdict | None:
        if number > 0 and self._too_late(deadline):
            return None
        return self._attempt(request, deadline, priority, number, cancellation)

    def _attempt(
        self, request: Request, deadline: Deadline, priority: Priority, number: int, cancellation: Cancellation | None
    ) -> ResponseWithVerdict:
        """Send an attempt through the pipeline (``_send`` and ``_Call.send`` decided it goes)."""
        response = self._pipeline(Attempt(self.endpoint, request, deadline, priority, number, cancellation))
        return ResponseWithVerdict(response, self.classifier.classify(response), number)

    def _too_late(self, deadline: Deadline) -> bool:
        """Whether an extra attempt (a retry or a hedge) has too little time left to be sent.

        It is not sent, and the strategy ends with the responses it has, as when the retry budget
        refuses one (``send`` returns None): the pipeline would answer it a 408 marked
        ``X-Do-Not-Retry``, which the classifier accepts, so a call whose server had answered 503
        returned that made-up 408 instead, and the budget paid for an attempt never sent.
        """
        return deadline.expired or deadline.timeout < self.low_timeout_threshold

    def _after_fork_in_child(self) -> None:
        # As AttemptThreadPool's: the parent's call threads are gone; the child makes its own on use
        # (the first async calls of a client used before fork() never started, and answered 408).
        self._async_drivers = None
        self._drivers_lock = threading.Lock()
        self._async_in_flight = 0  # the parent's: they do not run here
        self._in_flight_lock = threading.Lock()

    def close(self) -> None:
        """Stop the client's threads and close its pooled connections; never wait for a call.

        Calls in flight meanwhile go on (an attempt running keeps its connection until it ends, and
        closes it then; one they start afterwards, a retry, opens a connection that stays pooled
        here until the client is used again or freed) and send no more hedges until a call reopens
        the client: the hedges they send after that go to its new threads, counted against
        ``max_workers`` there. With nothing running
        on the client's threads (no async call in flight, queued or running, and no hedge running),
        ``close()`` joins them and returns with none of them left: a client used only by sync calls
        and closed between calls leaves no thread behind. With something running there it waits for
        nothing: the call gets its answer, and its thread and those of the hedges running end when
        they are done (by the call's deadline at the latest).

        Why never wait: ``close()`` is called where it cannot tell whether blocking holds a call up,
        and often it does. A settings change in async code (``override_settings(AIO_REQUEST=...)``,
        which closes the named clients) runs it on the event loop, which may be the one awaiting an
        async call, or serving the downstream of a call made from another thread, sync (hedged)
        calls included: waiting froze that loop until the call ended, at its deadline with a 408
        when the loop was its downstream. Waiting bought nothing but threads gone sooner, which
        end on their own anyway.

        A call made after ``close()`` opens what it needs again (threads, connections), as a
        requests ``Session`` or a Django cache connection does: a client held past a settings change
        (``clients.reset()``) keeps working, sync and async alike, hedges included.
        """
        with self._drivers_lock:  # closed in one step: a call from now on reopens what it needs anew
            was_open, self._closed = not self._closed, True
            drivers, self._async_drivers = self._async_drivers, None
            workers = self._workers.detach()
            # Only a client that watches its breaker (one with metrics, open) ends its watch: another
            # client sharing the breaker keeps it in the gauge (see watch_breaker).
            if was_open and self.circuit_breaker is not None and self._metrics is not None:
                unwatch_breaker(self.circuit_breaker, self.endpoint)
        if drivers is not None:
            # Takes no new call; queued calls still run (none is cancelled unasked), idle threads end.
            drivers.shutdown(wait=False)
        # Read after those shutdowns: an async call counted later is refused by those drivers, and
        # one counted before keeps it above 0 (at 0, every call these drivers took is done); the
        # detached workers take no new hedge.
        if self._async_in_flight or workers.running:
            workers.shutdown(wait=False)
        else:
            if drivers is not None:
                drivers.shutdown(wait=True)  # their threads, idle, end at once
            workers.shutdown(wait=True)  # as theirs
        self.transport.close()
        if self.circuit_breaker is not None:
            self.circuit_breaker.close()

    def _standing_in(self) -> "Client | None":
        """The client a test's fake put under this one's name, or None (this one is there again)."""
        stand_in = self.stand_in
        other = stand_in() if stand_in is not None else None
        return other if other is not None and other is not self else None

    def _reopen(self) -> None:
        """The first call after :meth:`close`: a new pool of attempt workers (threads made on use),
        and the breaker back in the state gauge. Async drivers are made on use by :meth:`_drivers`;
        the transport reopens its pools by itself."""
        with self._drivers_lock:
            if not self._closed:
                return
            self._workers.reopen()
            if self.circuit_breaker is not None and self._metrics is not None:
                watch_breaker(self.circuit_breaker, self.endpoint)
            self._closed = False

    def __repr__(self) -> str:
        return f"<Client {self.endpoint}>"


def _cancellable(send: SendAttempt, cancellation: Cancellation) -> SendAttempt:
    """``send`` whose attempts are also aborted by the call's ``cancellation``.

    Each attempt gets a cancellation of its own, raised by either the strategy's (a hedge lost)
    or the call's (the awaiting task was cancelled), so the transport shuts its socket in both
    cases. Once the call is cancelled no attempt is sent: a first one answers 499, a later one
    is refused like a retry the budget does not allow (the strategy makes no more).
    """

    def send_cancellable(
        request: Request, deadline: Deadline, priority: Priority, number: int, from_strategy: Cancellation | None
    ) -> ResponseWithVerdict | None:
        if cancellation.cancelled:
            if number:
                return None
            return ResponseWithVerdict(UnsentResponse(status=status.CANCELLED), ResponseVerdict.ACCEPT, number)
        attempt = Cancellation()
        if from_strategy is not None:
            # A hedged call's attempt that loses gives its connection to the drainer, as in sync code
            # (the strategy set when it may): without this, every async hedge that lost was shut
            # down, and the next call made a new connection (a review: 7 connections for 6 calls).
            attempt.release_after = from_strategy.release_after
        undo_call = cancellation.on_cancel(functools.partial(_stop_whole_call, attempt))
        # The strategy's also asks through it whether the attempt's answer arrived: with on_cancel
        # alone it never heard, and an async call's hedge went while attempt 0's answer waited unread.
        attempt_over = (
            from_strategy.watch_attempt(attempt.cancel, attempt.answer_arrived) if from_strategy is not None else None
        )
        try:
            return send(request, deadline, priority, number, attempt)
        finally:
            undo_call()
            if attempt_over is not None:
                attempt_over()

    return send_cancellable


def _stop_whole_call(attempt: Cancellation) -> None:
    """The call's task was cancelled: its attempt is stopped and its connection shut down, never
    drained (the caller wants nothing more of the server; tests/core/test_async_client.py)."""
    attempt.release_after = None
    attempt.cancel()


def _check_call(request: object, deadline: object, priority: object) -> None:
    """Raise TypeError, before anything is sent, for arguments of the wrong type (a float deadline, a
    priority's name), which otherwise failed inside the call with an AttributeError."""
    if not isinstance(request, Request):
        raise TypeError(f"request must be a Request (get(...), post(...)), not {type(request).__name__}")
    if deadline is not None and not isinstance(deadline, Deadline):
        raise TypeError(f"deadline must be a Deadline (Deadline.from_timeout(seconds)), not {deadline!r}")
    if priority is not None and not isinstance(priority, Priority):
        raise TypeError(f"priority must be a Priority (Priority.parse(text) for a name), not {priority!r}")


class _Call:
    """One call's ``send``: spends the retry budget and lowers the priority of hedges.

    An attempt numbered > 0 is an extra one, which the budget may refuse (nothing is sent, and
    ``send`` returns None); a first attempt deposits once it was sent. Once the budget refused one, no later extra
    attempt of the call asks it again: two hedges handed to workers before the first of them asked
    were both asked, counted twice in ``aio_request_retry_budget_exhausted_total``, and the second,
    granted what other calls had deposited meanwhile, was sent after the call's refusal (32 threads:
    5-19 calls in 600). A hedge is an extra attempt sent while another attempt of the same call is
    still in flight: with ``hedge_priority`` it goes at a lower priority. A retry after a finished
    attempt keeps the call's priority.
    """

    __slots__ = ("_client", "_in_flight", "_lock", "refused")

    def __init__(self, client: Client) -> None:
        self._client = client
        self._in_flight = 0
        self._lock = threading.Lock()
        self.refused = False

    def send(
        self, request: Request, deadline: Deadline, priority: Priority, number: int, cancellation: Cancellation | None
    ) -> ResponseWithVerdict | None:
        client = self._client
        if number > 0 and (self.refused or client._too_late(deadline)):
            return None  # never sent, so neither spent from the budget nor counted as a hedge
        budget = client.retry_budget
        if budget is not None and number > 0:
            with self._lock:  # asked one at a time: a refusal is seen by the attempts asking after it
                if self.refused:
                    return None
                if not budget.try_spend():
                    self.refused = True
                    if client._metrics is not None:
                        client._metrics.budget_exhausted()
                    return None
        token = send_again.asker.set(self.may_send_again if budget is not None else None)
        try:
            if client.hedge_priority is None:
                result = client._attempt(request, deadline, priority, number, cancellation)
            else:
                lock = self._lock
                with lock:
                    hedge = number > 0 and self._in_flight > 0
                    self._in_flight += 1
                try:
                    if hedge:
                        priority = hedge_priority_for(priority, client.hedge_priority)
                    result = client._attempt(request, deadline, priority, number, cancellation)
                finally:
                    with lock:
                        self._in_flight -= 1
        finally:
            send_again.asker.reset(token)
        if budget is not None and number > 0 and result is not None and is_open_circuit_fallback(result.response):
            # Granted, then answered by this client's open circuit without sending: not charged (a
            # review: 15-23 charges in 3 s runs with nothing sent).
            budget.give_back()
        # A first attempt deposits once it was sent: an open circuit's 502, the 408 for too little
        # time left and an attempt that waited in vain for one of the client's connections sent
        # nothing (UnsentResponse), and one whose connection failed reached no server (UnreachedResponse).
        # Deposited before it went, calls arriving with no time left paid for the retries of others
        # against a failing server (0.42 extra attempts for each one it received where the budget
        # allows 0.2 and its floor: a review).
        if (
            budget is not None
            and number == 0
            and result is not None
            and not isinstance(result.response, UnsentResponse | UnreachedResponse)
        ):
            budget.record_first()
        return result

    def may_send_again(self) -> bool:
        """The transport's own resend of an attempt (core/send_again.py) is one more request: asked
        of the budget as an extra attempt is, and refused once the budget refused the call one."""
        budget = self._client.retry_budget
        if budget is None:
            return True
        with self._lock:
            if self.refused:
                return False
            if budget.try_spend():
                return True
            self.refused = True
        if self._client._metrics is not None:
            self._client._metrics.budget_exhausted()
        return False


_clients: "weakref.WeakSet[Client]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_clients):
        client._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
