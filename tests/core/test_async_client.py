"""``client.arequest()``: the same call from async code, without blocking the event loop."""

import asyncio
import collections
import threading
import time
import warnings
from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY

from django_aio_request import (
    BlockingCallWarning,
    Client,
    Deadline,
    DefaultCircuitBreaker,
    Request,
    Response,
    constant_delays,
    get,
    parallel_strategy,
    post,
    retry_until_deadline_expired,
    sequential_strategy,
    set_context,
    single_attempt_strategy,
)
from django_aio_request import metrics as all_metrics
from django_aio_request.core import call_threads
from django_aio_request.core.call_threads import CallThreadPool
from django_aio_request.testing import force_breaker, serving
from tests.support.loopback import (
    Handler,
    LoopbackServer,
    answer_after,
    hang_until_disconnect,
    wait_for_disconnect,
    widen_backlog,
)


class Disconnects:
    """A route that never answers and notes when each caller hung up."""

    def __init__(self) -> None:
        self.at: list[float] = []
        self.lock = threading.Lock()

    def __call__(self, handler: Handler) -> None:
        closed = wait_for_disconnect(handler, 5.0)
        with self.lock:
            self.at.append(closed if closed is not None else float("inf"))
        if closed is None:
            handler.reply(200, b"late")


async def acall(client: Client, *args: object, **kwargs: object) -> tuple[Response, float]:
    started = time.monotonic()
    async with client.arequest(*args, **kwargs) as response:  # type: ignore[arg-type]
        pass
    return response, time.monotonic() - started


async def cancel_call_after(client: Client, path: str, seconds: float) -> float:
    """Start a GET of ``path``, cancel its task ``seconds`` later and see it raise CancelledError;
    the ``time.monotonic()`` of the cancel."""
    task = asyncio.create_task(acall(client, get(path)))
    await asyncio.sleep(seconds)
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return cancelled_at


def test_deadline_and_priority_come_from_the_task_context(
    server: LoopbackServer, make_client: Callable[..., Client]
) -> None:
    server.route("/ok", lambda h: h.reply(200, b"fine"))
    client = make_client(timeout=10.0)

    async def go() -> Response:
        with serving(timeout=3.0, priority="high"):
            async with client.arequest(get("ok")) as response:
                return response

    response = asyncio.run(go())

    assert (response.status, response.read()) == (200, b"fine")
    [received] = server.received("/ok")
    assert 2.5 < float(received.headers["X-Request-Timeout"]) <= 3.0
    assert received.headers["X-Request-Priority"] == "high"


def test_client_timeout_caps_a_longer_context_deadline(
    server: LoopbackServer, make_client: Callable[..., Client]
) -> None:
    disconnects = Disconnects()
    server.route("/hang", disconnects)
    client = make_client(timeout=0.3, safe_method_strategy=single_attempt_strategy())

    async def go() -> tuple[Response, float]:
        with set_context(deadline=Deadline.from_timeout(5.0)):
            return await acall(client, get("hang"))

    response, elapsed = asyncio.run(go())

    assert response.status == 408
    assert 0.28 < elapsed < 0.8
    assert float(server.received("/hang")[0].headers["X-Request-Timeout"]) <= 0.3


def test_the_loop_stays_responsive_during_slow_calls(
    server: LoopbackServer, make_client: Callable[..., Client]
) -> None:
    """Another task ticking every 10 ms is never held up while eight calls wait 0.5 s each; the same
    ticker does see a blocking call (the control), so the measurement can fail."""
    widen_backlog(server)
    server.route("/slow", answer_after(0.5, body=b"slow"))
    client = make_client(safe_method_strategy=single_attempt_strategy())

    async def worst_tick_gap(work: Callable[[], object]) -> tuple[float, object]:
        gaps: list[float] = []
        stop = asyncio.Event()

        async def tick() -> None:
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0.05)
        result = work()
        if asyncio.iscoroutine(result):
            result = await result
        stop.set()
        await ticker
        return max(gaps), result

    async def eight_async_calls() -> list[tuple[Response, float]]:
        return await asyncio.gather(*(acall(client, get("slow")) for _ in range(8)))

    def one_blocking_call() -> Response:
        with pytest.warns(BlockingCallWarning), client.request(get("slow")) as response:
            return response

    async def go() -> tuple[tuple[float, object], tuple[float, object]]:
        # The client's call threads are made first: their starts (off the loop since 2026-12-07) compete
        # with the loop for the CPU and the GIL; this test is about the calls' waits.
        server.route("/quick", answer_after(0.0, body=b"quick"))
        await asyncio.gather(*(acall(client, get("quick")) for _ in range(8)))
        return await worst_tick_gap(eight_async_calls), await worst_tick_gap(one_blocking_call)

    (async_gap, results), (blocking_gap, _) = asyncio.run(go())

    assert [r.status for r, _ in results] == [200] * 8  # type: ignore[attr-defined]
    assert max(e for _, e in results) < 1.4  # type: ignore[attr-defined]  # in parallel, not one after another
    assert async_gap < 0.15, f"the loop was blocked for {async_gap:.3f} s"
    assert blocking_gap > 0.4  # the control: a sync call in the loop does block it


def test_a_fresh_client_s_first_async_calls_start_no_thread_on_the_event_loop(
    server: LoopbackServer, make_client: Callable[..., Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh client's call threads are started by the starter thread, not by the loop: each
    ``Thread.start()`` waits until the new thread runs, and the loop's 32 such waits held every task
    36-40 ms (0.4 s for 8 once on a loaded CI machine). The 32 calls still run at once."""
    widen_backlog(server)
    server.route("/slow", answer_after(0.3, body=b"slow"))
    client = make_client(max_workers=32, safe_method_strategy=single_attempt_strategy())
    started_on_the_loop: list[str] = []
    start = threading.Thread.start

    def noting_start(thread: threading.Thread) -> None:
        if asyncio._get_running_loop() is not None:
            started_on_the_loop.append(thread.name)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", noting_start)

    async def go() -> list[tuple[Response, float]]:
        return await asyncio.gather(*(acall(client, get("slow")) for _ in range(32)))

    results = asyncio.run(go())

    assert [r.status for r, _ in results] == [200] * 32
    assert max(e for _, e in results) < 1.5  # together, not one after another (32 x 0.3 s)
    call_threads = [t for t in threading.enumerate() if t.name.startswith("django-aio-request-async")]
    assert len(call_threads) >= 16  # they were started, elsewhere
    # Only the starter itself may start on a loop, once a process (already running in a long test run).
    assert [n for n in started_on_the_loop if n != "django-aio-request-thread-starter"] == []


def test_an_async_call_queued_before_close_still_gets_a_thread_and_its_answer(
    server: LoopbackServer, make_client: Callable[..., Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() refuses new calls and lets queued ones run (usage.md). A call whose thread the starter
    had not started yet when close() shut the pool down is no exception: it was answered 408 at its
    deadline, having sent nothing, where a thread started by submit() itself would have run it."""
    server.route("/ok", lambda h: h.reply(200, b"ok"))
    client = make_client(safe_method_strategy=single_attempt_strategy())
    may_grow = threading.Event()
    grow = CallThreadPool._grow

    def held_grow(pool: CallThreadPool) -> None:
        may_grow.wait(5)
        grow(pool)

    monkeypatch.setattr(CallThreadPool, "_grow", held_grow)

    async def go() -> tuple[Response, float]:
        task = asyncio.create_task(acall(client, get("ok"), deadline=Deadline.from_timeout(3.0)))
        await asyncio.sleep(0.05)  # submitted: its thread is asked of the starter, which waits
        client.close()
        may_grow.set()
        return await task

    response, elapsed = asyncio.run(go())

    assert (response.status, response.read()) == (200, b"ok")
    assert elapsed < 1.0
    assert len(server.received("/ok")) == 1


@pytest.mark.parametrize("failing", ["django-aio-request-async", "django-aio-request-thread-starter"])
def test_an_async_call_whose_thread_cannot_be_started_raises_at_once_and_is_never_sent(
    server: LoopbackServer, make_client: Callable[..., Client], monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """Out of threads (the process's limit): the call raises the ``RuntimeError`` at once, as
    ``submit()`` raised it, and is never sent. Queued all the same, it was sent later by a thread a
    call after it started (its caller told it had failed: a POST), or, started by the starter,
    answered 408 at its deadline (a review)."""
    server.route("/a", lambda h: h.reply(200, b"a"))
    server.route("/b", lambda h: h.reply(200, b"b"))
    monkeypatch.setattr(call_threads, "_starter", call_threads._Starter())  # its own start may fail too
    client = make_client(safe_method_strategy=single_attempt_strategy())
    start, failures = threading.Thread.start, [1]

    def failing_once(thread: threading.Thread) -> None:
        if thread.name.startswith(failing) and failures[0]:
            failures[0] -= 1
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", failing_once)

    async def go() -> tuple[float, int]:
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="can't start new thread"):
            await acall(client, post("a", body=b"1"), deadline=Deadline.from_timeout(3.0))
        failed_after = time.monotonic() - started
        response, _ = await acall(client, post("b", body=b"2"))
        await asyncio.sleep(0.3)  # time for a queued call to go out, if one were left
        return failed_after, response.status

    failed_after, second = asyncio.run(go())

    assert failed_after < 1.0
    assert second == 200
    assert [r.path for r in server.received()] == ["/b"]


def test_after_the_starter_could_not_be_started_the_next_failed_start_fails_its_own_call(
    server: LoopbackServer, make_client: Callable[..., Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The starter's own start fails (call a raises), then b's thread's: b raises at once. Left
    queued, a's work was ended in b's place, and b waited 3 s for its deadline (a review)."""
    for path in ("a", "b", "c"):
        server.route(f"/{path}", lambda h: h.reply(200, b"ok"))
    monkeypatch.setattr(call_threads, "_starter", call_threads._Starter())
    client = make_client(safe_method_strategy=single_attempt_strategy())
    start, failing = threading.Thread.start, ["django-aio-request-thread-starter", "django-aio-request-async"]

    def failing_in_turn(thread: threading.Thread) -> None:
        if failing and thread.name.startswith(failing[0]):
            failing.pop(0)
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", failing_in_turn)

    async def outcome(path: str) -> tuple[str, float]:
        started = time.monotonic()
        try:
            response, _ = await acall(client, post(path, body=b"1"), deadline=Deadline.from_timeout(3.0))
        except RuntimeError:
            return "RuntimeError", time.monotonic() - started
        return str(response.status), time.monotonic() - started

    async def go() -> list[tuple[str, float]]:
        return [await outcome(path) for path in ("a", "b", "c")]

    (a, a_took), (b, b_took), (c, _) = asyncio.run(go())

    assert (a, b, c) == ("RuntimeError", "RuntimeError", "200")
    assert max(a_took, b_took) < 1.0
    assert [r.path for r in server.received()] == ["/c"]


def test_a_call_whose_thread_cannot_be_started_waits_for_the_busy_thread_its_client_has(
    server: LoopbackServer, make_client: Callable[..., Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    """usage.md: with a thread of the client running, a call whose own thread cannot be started is
    not failed: it waits for that thread, and is answered once the thread is free."""
    server.route("/slow", answer_after(0.5, body=b"slow"))
    server.route("/quick", lambda h: h.reply(200, b"quick"))
    client = make_client(max_workers=2, safe_method_strategy=single_attempt_strategy())
    start, started = threading.Thread.start, []

    def second_fails(thread: threading.Thread) -> None:
        if thread.name.startswith("django-aio-request-async"):
            started.append(thread.name)
            if len(started) == 2:
                raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", second_fails)

    async def go() -> tuple[tuple[Response, float], tuple[Response, float]]:
        slow = asyncio.create_task(acall(client, get("slow")))
        await asyncio.sleep(0.1)  # its thread is busy with it
        quick = await acall(client, get("quick"), deadline=Deadline.from_timeout(3.0))
        return await slow, quick

    (slow, _), (quick, waited) = asyncio.run(go())

    assert (slow.status, quick.status) == (200, 200)
    assert 0.3 < waited < 2.0  # after the slow call freed the thread, long before its deadline
    assert len(started) == 2


def test_one_thread_that_cannot_be_started_fails_one_call_of_those_made_together(
    server: LoopbackServer, make_client: Callable[..., Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight calls made together, the first thread's start failing once: one call raises, the
    others get the threads they asked for (all eight failed, a review), and nothing is sent twice."""
    widen_backlog(server)
    server.route("/p", answer_after(0.1, body=b"ok"))
    client = make_client(max_workers=8, safe_method_strategy=single_attempt_strategy())
    start, failures = threading.Thread.start, [1]

    def failing_once(thread: threading.Thread) -> None:
        if thread.name.startswith("django-aio-request-async") and failures[0]:
            failures[0] -= 1
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", failing_once)

    async def one(n: int) -> object:
        try:
            response, _ = await acall(client, post("p", body=str(n).encode()), deadline=Deadline.from_timeout(3.0))
        except RuntimeError as error:
            return str(error)
        return response.status

    async def go() -> list[object]:
        return await asyncio.gather(*(one(n) for n in range(8)))

    results = asyncio.run(go())

    assert sorted(map(str, results)) == ["200"] * 7 + ["can't start new thread"]
    assert len(server.received("/p")) == 7


def test_a_sync_call_on_the_event_loop_s_thread_warns_at_the_caller_s_line_and_no_other_call_does(
    server: LoopbackServer, make_client: Callable[..., Client]
) -> None:
    """request() in an async view holds the whole loop for the call (a review: four views calling a
    1 s downstream were served one after another, in 4.2 s), and nothing said so. It warns, naming
    the line that called; arequest(), a sync call handed to a thread, and one outside a loop do not."""
    server.route("/ok", lambda h: h.reply(200, b"ok"))
    client = make_client(safe_method_strategy=single_attempt_strategy())

    def sync_call() -> int:
        with client.request(get("ok")) as response:
            return response.status

    async def on_the_loop() -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with client.request(get("ok")) as response:  # the line the warning names
                assert response.status == 200
        assert [w.category for w in caught] == [BlockingCallWarning]
        assert caught[0].filename == __file__
        assert "arequest" in str(caught[0].message)
        with warnings.catch_warnings():
            warnings.simplefilter("error", BlockingCallWarning)
            async with client.arequest(get("ok")) as response:
                assert response.status == 200
            assert await asyncio.to_thread(sync_call) == 200

    asyncio.run(on_the_loop())
    with warnings.catch_warnings():
        warnings.simplefilter("error", BlockingCallWarning)
        assert sync_call() == 200


def test_a_blocking_call_through_a_stand_in_warns_once(
    server: LoopbackServer, make_client: Callable[..., Client]
) -> None:
    """A client a test's fake stands in for (django_aio_request.testing) hands the call on: it warned,
    and the stand-in warned again, at the same line (a review)."""
    server.route("/ok", lambda h: h.reply(200, b"ok"))
    client = make_client(safe_method_strategy=single_attempt_strategy())
    stand_in = make_client(safe_method_strategy=single_attempt_strategy())
    client.stand_in = lambda: stand_in

    async def on_the_loop() -> list[warnings.WarningMessage]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with client.request(get("ok")) as response:
                assert response.status == 200
        return caught

    caught = asyncio.run(on_the_loop())
    assert [(w.category, w.filename) for w in caught] == [(BlockingCallWarning, __file__)]
    assert len(server.received("/ok")) == 1  # sent once, by the stand-in


def test_cancelling_the_task_aborts_every_attempt_in_flight(
    server: LoopbackServer, make_client: Callable[..., Client]
) -> None:
    """Two hedged attempts hang; cancelling the awaiting task hangs both up at once, and the
    client's threads are free again (no worker kept busy until the 10 s deadline)."""
    disconnects = Disconnects()
    server.route("/hang", disconnects)
    client = make_client(
        timeout=10.0,
        max_workers=2,
        retry_budget=None,
        safe_method_strategy=parallel_strategy(attempts_count=2, delays_provider=constant_delays(delay=0.05)),
    )

    async def go() -> float:
        cancelled_at = await cancel_call_after(client, "hang", 0.3)
        assert time.monotonic() - cancelled_at < 0.1  # the task ends at once
        return cancelled_at

    cancelled_at = asyncio.run(go())

    assert len(server.received("/hang")) == 2
    deadline = time.monotonic() + 2
    while len(disconnects.at) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(disconnects.at) == 2
    assert max(disconnects.at) - cancelled_at < 0.3, "an attempt's socket stayed open after the cancel"
    # Both attempt workers and the call's thread are free: new calls start at once and succeed.
    server.route("/ok", lambda h: h.reply(200, b"ok"))

    async def again() -> list[tuple[Response, float]]:
        return await asyncio.gather(*(acall(client, get("ok")) for _ in range(2)))

    for response, elapsed in asyncio.run(again()):
        assert response.status == 200
        assert elapsed < 0.5


def test_a_hedge_due_after_the_task_was_asked_to_cancel_is_not_sent_while_the_loop_is_busy(
    server: LoopbackServer, make_client: Callable[..., Client]
) -> None:
    """The task is cancelled before its hedge is due, and the loop is busy until after it (many
    calls cancelled together keep it so, their tasks' steps run one after the other): the hedge went
    out, the call's cancellation not yet raised, for up to 28 of 32 calls cancelled by one
    ``asyncio.timeout`` (a review). ``Task.cancelling()`` counts the cancel at once."""
    disconnects = Disconnects()
    server.route("/hang", disconnects)
    client = make_client(
        timeout=10.0,
        retry_budget=None,
        safe_method_strategy=parallel_strategy(
            attempts_count=2, delays_provider=constant_delays(delay=0.2), stragglers_only=False
        ),
    )

    async def call() -> int:
        async with client.arequest(get("hang")) as answer:
            return answer.status

    async def scenario() -> None:
        task = asyncio.create_task(call())
        await asyncio.sleep(0.1)  # attempt 0 sent, the hedge due at 0.2 s
        task.cancel()
        time.sleep(0.3)  # the loop busy past the hedge's time: the task has not run since its cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    time.sleep(0.1)
    assert len(server.received("/hang")) == 1


async def _status(client: Client, request: Request) -> int:
    """The status of an async call given 5 s."""
    async with client.arequest(request, deadline=Deadline.from_timeout(5)) as answer:
        return answer.status


def _one_call_thread(
    server: LoopbackServer, make_client: Callable[..., Client], held: tuple[str, Callable[[], object]], at_once: str
) -> Client:
    """A client with one call thread and single attempts, and two routes: ``held[0]``, answered once
    ``held[1]()`` returns, and ``at_once``; each answers its own name."""
    path, hold = held

    def answer_after_hold(handler: Handler) -> None:
        hold()
        handler.reply(200, path.encode())

    server.route(f"/{path}", answer_after_hold)
    server.route(f"/{at_once}", lambda handler: handler.reply(200, at_once.encode()))
    return make_client(max_workers=1, unsafe_method_strategy=single_attempt_strategy())


def test_calls_queued_when_their_event_loop_is_closed_are_not_sent(
    server: LoopbackServer, make_client: Callable[..., Client]
) -> None:
    """One call thread, a call on it and two POSTs queued behind it, and the loop closed with them
    pending (their tasks never run again): the POSTs were sent once the thread was free, 0.4-0.6 s
    after the loop was gone, to nobody (a review). The call in flight runs on to its end."""

    client = _one_call_thread(server, make_client, ("slow", lambda: time.sleep(0.3)), "charge")

    loop = asyncio.new_event_loop()
    tasks = [loop.create_task(_status(client, request)) for request in (get("slow"), post("charge"), post("charge"))]
    loop.run_until_complete(asyncio.sleep(0.1))
    loop.close()
    time.sleep(0.6)
    assert [r.path for r in server.received()] == ["/slow"]
    for task in tasks:  # never to run: not reported as destroyed while pending
        task._log_destroy_pending = False  # type: ignore[attr-defined]


def test_a_cancelled_sequential_call_sends_no_retry(server: LoopbackServer, make_client: Callable[..., Client]) -> None:
    disconnects = Disconnects()
    server.route("/hang", disconnects)
    client = make_client(timeout=10.0)  # GET: 3 sequential attempts by default

    async def go() -> None:
        await cancel_call_after(client, "hang", 0.2)

    asyncio.run(go())
    time.sleep(0.3)

    assert len(server.received("/hang")) == 1
    assert len(disconnects.at) == 1


def test_a_queued_call_whose_task_was_cancelled_is_not_sent_by_the_thread_that_takes_it(
    server: LoopbackServer, make_client: Callable[..., Client]
) -> None:
    """MAX_WORKERS 1: a POST in flight, a second queued; the second's task is cancelled, and the
    call thread is freed before that task runs again (the loop busy meanwhile). The thread took the
    queued call and sent it: with 20 calls cancelled at once (an asyncio.timeout around a gather),
    a second POST reached the server after the cancellation in 3 of 8 runs."""
    release = threading.Event()
    client = _one_call_thread(server, make_client, ("first", lambda: release.wait(5)), "second")

    async def scenario() -> None:
        first_call = asyncio.create_task(_status(client, post("first", body=b"charge-the-card")))
        await asyncio.sleep(0.1)  # on the only call thread
        second_call = asyncio.create_task(_status(client, post("second", body=b"charge-the-card")))
        await asyncio.sleep(0.05)  # queued for it
        second_call.cancel()
        release.set()  # the call thread ends the first call and takes the second...
        time.sleep(0.3)  # ...while this loop is busy: the second's task has not run since its cancel()
        with pytest.raises(asyncio.CancelledError):
            await second_call
        assert await first_call == 200

    before = _recorded(server.url)
    asyncio.run(scenario())
    time.sleep(0.1)
    assert [r.path for r in server.received()] == ["/first"]
    # The cancelled call started nothing, and is counted nowhere (docs/metrics.md).
    after = _recorded(server.url)
    assert after["aio_request_attempts_total"] - before["aio_request_attempts_total"] == 1


@pytest.mark.parametrize("strategy", ["sequential", "retry_until_deadline"])
def test_a_call_cancelled_in_its_pause_before_a_retry_frees_its_thread_at_once(
    server: LoopbackServer, make_client: Callable[..., Client], strategy: str
) -> None:
    """The pause between attempts heeds the cancellation: with one call thread, the next call
    starts at once instead of waiting out the cancelled call's 3 s pause."""
    server.route("/fail", lambda h: h.reply(500, b"no"))
    server.route("/ok", lambda h: h.reply(200, b"yes"))
    pause = constant_delays(delay=3.0)
    chosen = (
        sequential_strategy(attempts_count=2, delays_provider=pause)
        if strategy == "sequential"
        else retry_until_deadline_expired(single_attempt_strategy(), delays_provider=pause)
    )
    client = make_client(timeout=10.0, max_workers=1, retry_budget=None, safe_method_strategy=chosen)

    async def go() -> tuple[Response, float]:
        await cancel_call_after(client, "fail", 0.3)  # the first attempt's 500 is in; the call is in its pause
        return await acall(client, get("ok"))

    response, elapsed = asyncio.run(go())

    assert response.status == 200
    assert elapsed < 1.0, elapsed  # it waited for the only call thread until the pause ended: ~2.7 s
    time.sleep(0.2)
    assert len(server.received("/fail")) == 1  # no retry after the cancellation


def test_hedging_works_from_async_code(server: LoopbackServer, make_client: Callable[..., Client]) -> None:
    count = 0
    lock = threading.Lock()

    def first_slow(handler: Handler) -> None:
        nonlocal count
        with lock:
            count += 1
            n = count
        if n == 1:
            time.sleep(1.0)
        handler.reply(200, str(n).encode())

    server.route("/hedged", first_slow)
    client = make_client(
        retry_budget=None,
        safe_method_strategy=parallel_strategy(attempts_count=2, delays_provider=constant_delays(delay=0.1)),
    )

    response, elapsed = asyncio.run(acall(client, get("hedged")))

    assert (response.status, response.read()) == (200, b"2")
    assert elapsed < 0.6
    assert len(server.received("/hedged")) == 2


def test_shares_the_breaker_and_metrics_of_sync_calls(
    server: LoopbackServer, make_client: Callable[..., Client]
) -> None:
    server.route("/ok", lambda h: h.reply(200, b"ok"))
    breaker: DefaultCircuitBreaker[str, Response] = DefaultCircuitBreaker(
        break_duration=5, sampling_duration=5, minimum_throughput=2, failure_threshold=0.5
    )
    client = make_client(circuit_breaker=breaker)
    labels = {
        "request_endpoint": server.url,
        "request_method": "GET",
        "request_path": "ok",
        "response_status": "200",
        "circuit_breaker": "False",
    }

    with client.request(get("ok")):
        pass
    response, _ = asyncio.run(acall(client, get("ok")))
    assert response.status == 200
    all_metrics.flush()
    assert REGISTRY.get_sample_value("aio_request_latency_count", labels) == 2
    assert breaker.counts(server.url)[1] == 2  # both calls counted by the one breaker

    with force_breaker(client, "open"):
        response, _ = asyncio.run(acall(client, get("ok")))
    assert response.status == 502
    assert response.headers["X-Circuit-Breaker"] == "1"
    assert len(server.received("/ok")) == 2
    assert breaker.snapshot()[0].override is None  # force_breaker put it back


def test_a_call_waiting_for_a_thread_past_its_deadline_answers_408(
    server: LoopbackServer, make_client: Callable[..., Client]
) -> None:
    """One call thread (MAX_WORKERS 1), three calls: the ones waiting in line end by their deadline."""
    disconnects = Disconnects()
    server.route("/hang", disconnects)
    client = make_client(max_workers=1, safe_method_strategy=single_attempt_strategy())
    labels = {"request_endpoint": server.url, "request_method": "GET", "reason": "expired"}

    async def go() -> list[tuple[Response, float]]:
        return await asyncio.gather(
            *(acall(client, get("hang"), deadline=Deadline.from_timeout(0.3)) for _ in range(3))
        )

    results = asyncio.run(go())

    assert [r.status for r, _ in results] == [408, 408, 408]
    assert max(e for _, e in results) < 0.7
    assert len(server.received("/hang")) == 1  # the others were never sent
    assert REGISTRY.get_sample_value("aio_request_deadline_rejected_total", labels) == 2  # and are counted


def test_a_call_waiting_for_a_thread_answers_408_at_its_deadline_not_after(
    server: LoopbackServer, make_client: Callable[..., Client]
) -> None:
    """The one call thread is busy: a call queued behind it answers 408 when its deadline passes,
    not 50 ms later (it waited ``deadline + 0.05 s``: a call given 0.2 s returned after 0.25 s)."""
    server.route("/hang", hang_until_disconnect)
    server.route("/ok", lambda h: h.reply(200, b"ok"))
    client = make_client(timeout=5.0, max_workers=1, safe_method_strategy=single_attempt_strategy())

    async def go() -> tuple[Response, float]:
        busy = asyncio.create_task(acall(client, get("hang")))
        while not server.received("/hang"):
            await asyncio.sleep(0.005)
        deadline = Deadline.from_timeout(0.2)
        async with client.arequest(get("ok"), deadline=deadline) as response:
            late = time.monotonic() - deadline.expires_at
        busy.cancel()
        with pytest.raises(asyncio.CancelledError):
            await busy
        return response, late

    response, late = asyncio.run(go())

    assert response.status == 408
    assert response.headers["X-Do-Not-Retry"] == "1"
    assert late < 0.04  # 0.05 and more with the grace
    assert not server.received("/ok")  # never sent


def test_an_async_sequential_call_does_not_pause_for_a_retry_it_could_not_send(
    server: LoopbackServer, make_client: Callable[..., Client]
) -> None:
    """The client's LOW_TIMEOUT_THRESHOLD reaches the strategy on the call thread too: with 0.3 s
    left, a 0.25 s pause and a 0.1 s threshold the retry could not go, so the 503 comes at once."""
    server.route("/down", lambda h: h.reply(503, b"down"))
    client = make_client(
        timeout=1.0,
        low_timeout_threshold=0.1,
        safe_method_strategy=sequential_strategy(attempts_count=2, delays_provider=constant_delays(delay=0.25)),
    )

    response, elapsed = asyncio.run(acall(client, get("down"), deadline=Deadline.from_timeout(0.3)))

    assert response.status == 503
    assert elapsed < 0.15
    assert len(server.received("/down")) == 1


def _recorded(endpoint: str) -> dict[str, float]:
    """The calls' latency counts by status, and the attempts and winning attempts, recorded for ``endpoint``."""
    all_metrics.flush()
    totals: dict[str, float] = collections.defaultdict(float)
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.labels.get("request_endpoint") != endpoint:
                continue
            if sample.name == "aio_request_latency_count":
                totals[f"latency {sample.labels['response_status']}"] += sample.value
            elif sample.name in ("aio_request_winning_attempt_total", "aio_request_attempts_total"):
                totals[sample.name] += sample.value
    return totals


def test_a_cancelled_call_is_not_counted_as_a_call_that_returned(
    server: LoopbackServer, make_client: Callable[..., Client]
) -> None:
    """The task was cancelled: the call returned nothing (CancelledError). It was recorded in
    aio_request_latency as a call that returned 499 and in aio_request_winning_attempt_total as won
    by attempt 0. Its attempt, sent, is still counted. One call thread: the next call starts once
    the cancelled one is done, recorded what it records."""
    server.route("/hang", hang_until_disconnect)
    server.route("/ok", lambda h: h.reply(200, b"ok"))
    client = make_client(timeout=10.0, max_workers=1, safe_method_strategy=single_attempt_strategy())

    async def go() -> Response:
        await cancel_call_after(client, "hang", 0.2)
        response, _ = await acall(client, get("ok"))
        return response

    before = _recorded(server.url)
    assert asyncio.run(go()).status == 200
    after = _recorded(server.url)

    assert {what: count - before.get(what, 0.0) for what, count in after.items() if count != before.get(what)} == {
        "latency 200": 1,  # the next call; the cancelled one was there as "latency 499"
        "aio_request_winning_attempt_total": 1,  # the next call; it was 2
        "aio_request_attempts_total": 2,  # the cancelled call's attempt was sent
    }


def test_a_call_that_waited_for_a_call_thread_is_recorded_with_its_wait(
    server: LoopbackServer, make_client: Callable[..., Client]
) -> None:
    """aio_request_latency is what the caller waited: six calls queued on one call thread for a peer
    answering in 0.1 s wait 0.35 s on average, and were recorded at 0.1 s each (timed from the
    call thread's start), so a saturated client's latency looked healthy."""
    server.route("/slow", answer_after(0.1))
    client = make_client(timeout=5.0, max_workers=1, safe_method_strategy=single_attempt_strategy())
    labels = {
        "request_endpoint": server.url,
        "request_method": "GET",
        "request_path": "slow",
        "response_status": "200",
        "circuit_breaker": "False",
    }

    async def go() -> list[tuple[Response, float]]:
        return await asyncio.gather(*(acall(client, get("slow")) for _ in range(6)))

    results = asyncio.run(go())
    all_metrics.flush()

    assert [r.status for r, _ in results] == [200] * 6
    waited = sum(elapsed for _, elapsed in results)
    assert waited > 1.5  # 0.1 + 0.2 + ... + 0.6 = 2.1 s
    assert REGISTRY.get_sample_value("aio_request_latency_count", labels) == 6
    recorded = REGISTRY.get_sample_value("aio_request_latency_sum", labels)
    assert recorded is not None
    assert abs(recorded - waited) < 0.1 * waited, (recorded, waited)
