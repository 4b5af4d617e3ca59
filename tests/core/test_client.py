"""The client: which deadline and priority a call gets, and the headers that carry them."""

import asyncio
import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from prometheus_client import REGISTRY

from django_aio_request import (
    Client,
    Deadline,
    Priority,
    Request,
    RequestsTransport,
    constant_delays,
    get,
    parallel_strategy,
    post,
    post_json,
    sequential_strategy,
    set_context,
    setup,
    single_attempt_strategy,
)
from django_aio_request import metrics as all_metrics
from django_aio_request.testing import serving
from tests.support.forking import in_child
from tests.support.loopback import (
    Handler,
    LoopbackServer,
    answer_after,
    hang_until_disconnect,
    replies,
    widen_backlog,
)
from tests.support.loopback import timed_call as call
from tests.support.resources import eventually

CLIENT_THREADS = ("django-aio-request_", "django-aio-request-async_")  # ThreadPoolExecutor's names
SYSTEM_HEADERS = ("X-Request-Timeout", "X-Request-Priority", "X-Service-Name")


def ok(handler: Handler) -> None:
    handler.reply(200, b"ok")


def sent_timeouts(server: LoopbackServer, path: str) -> list[float]:
    return [float(r.headers["X-Request-Timeout"]) for r in server.received(path)]


class TestDeadline:
    def test_argument_beats_the_earlier_of_context_and_client_timeout(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        server.route("/ok", ok)
        client = make_client(timeout=7.0)

        call(client, get("ok"))
        with set_context(deadline=Deadline.from_timeout(5.0)):
            call(client, get("ok"))
            call(client, get("ok"), deadline=Deadline.from_timeout(3.0))
        with set_context(deadline=Deadline.from_timeout(1.0)):
            call(client, get("ok"), deadline=Deadline.from_timeout(4.0))
        with set_context(deadline=Deadline.from_timeout(30.0)):
            call(client, get("ok"))  # the client's 7 s cap the context's 30 s
            call(client, get("ok"), deadline=Deadline.from_timeout(9.0))  # an argument is not capped

        client_timeout, from_context, shorter_argument, longer_argument, capped, argument = sent_timeouts(server, "/ok")
        assert 6.5 < client_timeout <= 7.0
        assert 4.5 < from_context <= 5.0
        assert 2.5 < shorter_argument <= 3.0
        assert 3.5 < longer_argument <= 4.0
        assert 6.5 < capped <= 7.0
        assert 8.5 < argument <= 9.0

    @pytest.mark.parametrize("seconds", [1e10, 1e300])
    def test_a_deadline_further_than_the_waits_take_is_a_call_like_any_other(
        self, server: LoopbackServer, seconds: float
    ) -> None:
        """Past about 292 years (``threading.TIMEOUT_MAX``) a deadline overflowed the waits a call
        meets: a host name's lookup made it a 489 against a healthy server, and the wait for a
        connection slot raised OverflowError out of ``client.request()`` (a review). Such a call now
        has the farthest deadline the header carries, 999,999,999 s."""
        server.route("/slow", answer_after(0.2))
        named = setup(
            endpoint=server.url.replace("127.0.0.1", "localhost"), transport=RequestsTransport(max_connections=1)
        )

        def one(_: int) -> object:
            try:
                return call(named, get("slow"), deadline=Deadline.from_timeout(seconds))[0].status
            except Exception as error:
                return error

        try:
            with concurrent.futures.ThreadPoolExecutor(2) as pool:  # the second waits for the one connection
                outcomes = list(pool.map(one, range(2)))
        finally:
            named.close()
        assert outcomes == [200, 200]
        sent = [float(r.headers["X-Request-Timeout"]) for r in server.received("/slow")]
        assert len(sent) == 2
        assert all(999_999_998 < timeout <= 999_999_999 for timeout in sent), sent

    def test_a_client_timeout_past_the_farthest_deadline_is_refused(self) -> None:
        refused = r"timeout must be a positive number of seconds up to 999,999,999, not 10000000000\.0"
        with pytest.raises(ValueError, match=refused):
            setup(endpoint="http://127.0.0.1:9/", timeout=1e10)
        setup(endpoint="http://127.0.0.1:9/", timeout=999_999_999).close()

    def test_client_timeout_ends_a_hanging_call(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        server.route("/hang", hang_until_disconnect)
        client = make_client(timeout=0.3)

        response, elapsed = call(client, get("hang"))

        assert response.status == 408
        assert 0.28 < elapsed < 0.6
        assert len(server.received("/hang")) == 1  # no time left for a retry

    def test_context_deadline_ends_a_hanging_call(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        server.route("/hang", hang_until_disconnect)
        client = make_client(timeout=10.0)

        with serving(timeout=0.3):  # as the middleware would for X-Request-Timeout: 0.3
            response, elapsed = call(client, get("hang"))

        assert response.status == 408
        assert 0.28 < elapsed < 0.6

    def test_sent_timeout_is_what_the_attempt_has_left(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        server.route("/flaky", replies(500, 200))
        client = make_client(
            safe_method_strategy=sequential_strategy(attempts_count=2, delays_provider=constant_delays(delay=0.2))
        )

        response, _ = call(client, get("flaky"), deadline=Deadline.from_timeout(2.0))

        assert response.status == 200
        first, second = server.received("/flaky")
        first_timeout, second_timeout = sent_timeouts(server, "/flaky")
        assert 1.8 < first_timeout <= 2.0
        assert second_timeout < first_timeout - 0.2
        # The second attempt was told the time the call had left when it was sent. (Within 0.1 s: the
        # server stamps each request when one of its threads has read it, on a loaded machine some
        # tens of milliseconds late; a second attempt told the first's time would show 0.2 s apart.)
        assert (first_timeout - second_timeout) == pytest.approx(second.at - first.at, abs=0.1)


class TestPriority:
    @pytest.mark.parametrize(
        "case",
        [
            # (client's, context's, the call's, sent)
            (Priority.LOW, None, None, "low"),  # nothing else: the client's
            (Priority.LOW, Priority.HIGH, None, "high"),  # none named: the context's
            (Priority.HIGH, Priority.LOW, None, "low"),
            (Priority.NORMAL, None, Priority.HIGH, "high"),  # named, no context: as named
            (Priority.NORMAL, None, Priority.LOW, "low"),
            (Priority.NORMAL, Priority.HIGH, Priority.LOW, "normal"),  # low within high
            (Priority.NORMAL, Priority.LOW, Priority.HIGH, "normal"),  # high within low
            (Priority.LOW, Priority.HIGH, Priority.HIGH, "high"),
            (Priority.HIGH, Priority.NORMAL, Priority.LOW, "low"),
        ],
        ids=str,
    )
    def test_sent_priority(
        self,
        server: LoopbackServer,
        make_client: Callable[..., Client],
        case: tuple[Priority, Priority | None, Priority | None, str],
    ) -> None:
        client_priority, context_priority, call_priority, sent = case
        server.route("/ok", ok)
        client = make_client(priority=client_priority)

        with set_context(priority=context_priority):
            call(client, get("ok"), priority=call_priority)

        (received,) = server.received("/ok")
        assert received.headers["X-Request-Priority"] == sent


class TestSystemHeaders:
    def test_service_name_only_when_set(self, server: LoopbackServer, make_client: Callable[..., Client]) -> None:
        server.route("/ok", ok)
        call(make_client(service_name="billing"), get("ok"))
        call(make_client(), get("ok"))

        named, anonymous = server.received("/ok")
        assert named.headers["X-Service-Name"] == "billing"
        assert "X-Service-Name" not in anonymous.headers
        assert "X-Request-Timeout" in anonymous.headers
        assert anonymous.headers["X-Request-Priority"] == "normal"

    def test_none_sent_when_disabled(self, server: LoopbackServer, make_client: Callable[..., Client]) -> None:
        server.route("/ok", ok)
        client = make_client(emit_system_headers=False, service_name="billing", priority=Priority.HIGH)

        response, _ = call(client, get("ok"))

        assert response.status == 200
        (received,) = server.received("/ok")
        assert not set(SYSTEM_HEADERS) & set(received.headers)

    def test_request_enricher_applied_after_the_system_headers(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        server.route("/ok", ok)
        seen: list[dict[str, str]] = []

        def enrich(request: Request) -> Request:
            seen.append(dict(request.headers))
            return request.with_headers({"X-Trace-Id": "abc-123", "X-Request-Priority": "low"})

        client = make_client(request_enricher=enrich)
        call(client, post("ok", b"payload", headers={"X-Own": "1"}))

        (received,) = server.received("/ok")
        assert received.headers["X-Trace-Id"] == "abc-123"
        assert received.headers["X-Request-Priority"] == "low"  # the enricher has the last word
        assert received.headers["X-Own"] == "1"
        assert received.body == b"payload"
        assert len(seen) == 1
        assert {"X-Request-Timeout", "X-Request-Priority", "X-Own"} <= set(seen[0])

    def test_time_spent_in_the_enricher_counts_against_the_deadline(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        server.route("/hang", hang_until_disconnect)

        def slow_enrich(request: Request) -> Request:
            time.sleep(0.3)  # fetching a token, say
            return request

        client = make_client(request_enricher=slow_enrich, safe_method_strategy=single_attempt_strategy())

        response, elapsed = call(client, get("hang"), deadline=Deadline.from_timeout(0.6))

        assert response.status == 408
        assert elapsed < 0.6 + 0.15

    def test_an_enricher_slower_than_the_deadline_holds_the_call_until_it_returns(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        """README "What a call does", 1: the deadline bounds the call's waits, not the caller's own
        code: an enricher that takes 1 s holds a call with 0.5 s until it returns, although a hedge
        answered at 0.3 s (attempt 0 runs on the caller's thread). What it answers then is that hedge's."""
        server.route("/slow", answer_after(0.2))
        first = threading.Event()

        def slow_first_time(request: Request) -> Request:
            if not first.is_set():
                first.set()
                time.sleep(1.0)
            return request

        hedged = parallel_strategy(attempts_count=2, delays_provider=constant_delays(delay=0.1))
        client = make_client(request_enricher=slow_first_time, safe_method_strategy=hedged)

        response, elapsed = call(client, get("slow"), deadline=Deadline.from_timeout(0.5))

        assert response.status == 200
        assert 1.0 <= elapsed < 1.3

    @pytest.mark.parametrize("where", ["auth", "response hook"])
    @pytest.mark.parametrize("strategy", ["single", "parallel"])
    def test_the_session_s_own_slow_code_holds_the_call_until_it_returns(
        self, server: LoopbackServer, make_client: Callable[..., Client], where: str, strategy: str
    ) -> None:
        """docs/usage.md: as an enricher, a session's ``auth`` or response hook is the caller's own
        code, run on the call's thread: one that takes 0.6 s holds a call given 0.2 s until it
        returns, and the call then answers 408 (a review: named for the enricher only)."""
        server.route("/x", replies(200))
        session = requests.Session()

        def slow(got: Any, *args: Any, **kwargs: Any) -> Any:
            time.sleep(0.6)
            return got

        if where == "auth":
            session.auth = slow
        else:
            session.hooks["response"].append(slow)
        strategies = {
            "single": single_attempt_strategy(),
            "parallel": parallel_strategy(attempts_count=2, delays_provider=constant_delays(delay=0.05)),
        }
        client = make_client(transport=RequestsTransport(session=session), safe_method_strategy=strategies[strategy])

        response, elapsed = call(client, get("x"), deadline=Deadline.from_timeout(0.2))

        assert response.status == 408
        assert 0.6 <= elapsed < 0.9

    def test_the_time_left_is_stamped_after_the_session_s_auth_ran(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        """docs/usage.md: an ``auth`` that takes 0.3 s of a 1 s call leaves 0.7 s, and that is what
        ``X-Request-Timeout`` says, not the 1 s there was before it ran."""
        server.route("/x", replies(200))
        session = requests.Session()

        def slow(got: Any) -> Any:
            time.sleep(0.3)
            return got

        session.auth = slow
        client = make_client(transport=RequestsTransport(session=session))

        response, _ = call(client, get("x"), deadline=Deadline.from_timeout(1.0))

        assert response.status == 200
        [sent] = [float(r.headers["X-Request-Timeout"]) for r in server.received("/x")]
        assert 0.5 < sent <= 0.7

    def test_a_call_an_enricher_makes_is_bounded_by_the_attempt_s_deadline_and_sends_its_priority(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        """A call made inside the enricher (a token fetched) ran under the context's deadline (none
        outside a request: its client's 20 s ``TIMEOUT``), not the outer call's ``deadline=``: given
        0.2 s, the outer call took the token service's 0.3 s (a review). The enricher now runs under
        the attempt's deadline and priority, as hedges and nested calls in a view do."""
        server.route("/token", answer_after(1.0))
        server.route("/ok", ok)
        token_client = make_client()
        nested: list[int] = []

        def with_token(request: Request) -> Request:
            with token_client.request(get("token")) as answer:
                nested.append(answer.status)
            return request.with_headers({"Authorization": "Bearer t"})

        client = make_client(request_enricher=with_token)
        response, elapsed = call(client, get("ok"), deadline=Deadline.from_timeout(0.2), priority=Priority.LOW)

        assert (response.status, nested) == (408, [408])
        assert elapsed < 0.2 + 0.15
        (token_request,) = server.received("/token")
        assert 0 < float(token_request.headers["X-Request-Timeout"]) <= 0.2
        assert token_request.headers["X-Request-Priority"] == "low"
        assert server.received("/ok") == []  # no time left for it once the enricher returned

    def test_enricher_error_reaches_the_caller(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        server.route("/ok", ok)

        def enrich(request: Request) -> Request:
            raise RuntimeError("no token")

        client = make_client(request_enricher=enrich)
        with pytest.raises(RuntimeError, match="no token"):
            call(client, get("ok"))
        assert server.received() == []


class TestLowTimeout:
    def test_below_threshold_nothing_is_sent(self, server: LoopbackServer, make_client: Callable[..., Client]) -> None:
        server.route("/ok", ok)
        client = make_client(low_timeout_threshold=0.5)

        response, elapsed = call(client, get("ok"), deadline=Deadline.from_timeout(0.3))

        assert response.status == 408
        assert "X-Do-Not-Retry" in response.headers
        assert elapsed < 0.1  # neither sent nor retried
        assert server.received() == []

    def test_expired_deadline_with_the_default_threshold(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        server.route("/ok", ok)
        client = make_client()

        response, _ = call(client, post("ok"), deadline=Deadline.from_timeout(0))

        assert response.status == 408
        assert "X-Do-Not-Retry" in response.headers
        assert server.received() == []

    def test_above_threshold_the_request_is_sent(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        server.route("/ok", ok)
        client = make_client(low_timeout_threshold=0.5)

        response, _ = call(client, get("ok"), deadline=Deadline.from_timeout(1.0))

        assert response.status == 200
        assert len(server.received("/ok")) == 1


class TestCalls:
    def test_response_reaches_the_caller(self, server: LoopbackServer, make_client: Callable[..., Client]) -> None:
        server.route("/things", lambda h: h.reply_json({"echo": h.headers["Content-Type"]}, status=201))
        client = make_client()

        response, _ = call(client, post_json("things", {"a": 1}))

        assert response.status == 201
        assert response.json() == {"echo": "application/json"}
        assert server.received("/things")[0].body == b'{"a":1}'

    def test_strategy_for_one_call(self, server: LoopbackServer, make_client: Callable[..., Client]) -> None:
        server.route("/down", replies(503))
        client = make_client()

        response, _ = call(client, get("down"), strategy=single_attempt_strategy())
        assert response.status == 503
        assert len(server.received("/down")) == 1

        response, _ = call(client, get("down"))
        assert response.status == 503
        assert len(server.received("/down")) == 4  # the client's own strategy: 3 attempts

    def test_client_is_shared_between_threads(self, server: LoopbackServer, make_client: Callable[..., Client]) -> None:
        import concurrent.futures

        widen_backlog(server)
        server.route("/item/*", lambda h: h.reply(200, h.path.encode()))
        client = make_client()

        def fetch(n: int) -> bytes:
            with client.request(get("item/{n}", path_parameters={"n": n})) as response:
                return response.read()

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            bodies = list(pool.map(fetch, range(40)))

        assert bodies == [f"/item/{n}".encode() for n in range(40)]


class TestLifetime:
    """A client closed while a call is in flight, and a client used on both sides of a fork()."""

    @staticmethod
    def slow_first_fast_hedge(server: LoopbackServer) -> None:
        arrivals = [0]

        def handle(handler: Handler) -> None:
            arrivals[0] += 1
            if arrivals[0] % 2:  # each call's attempt 0 is slow, its hedge fast
                time.sleep(1.0)
            handler.reply(200, b"ok")

        server.route("/h", handle)

    def test_closing_a_client_while_a_hedged_call_is_in_flight_raises_nothing(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        """As when the settings change under a named client: the attempt launched after attempt 0 was
        rejected found the pool shut down and raised RuntimeError('cannot schedule new futures after
        shutdown'). Now a closed pool is as one whose workers are all busy."""

        arrivals = [0]

        def first_fails(handler: Handler) -> None:
            arrivals[0] += 1
            if arrivals[0] == 1:
                time.sleep(0.2)
                handler.reply(503)  # rejected: the next attempt starts at once, on the closed pool
            else:
                handler.reply(200, b"ok")

        server.route("/h", first_fails)
        hedged = parallel_strategy(attempts_count=2, delays_provider=constant_delays(delay=0.5))
        client = make_client(safe_method_strategy=hedged)
        answers: list[object] = []

        def run() -> None:
            try:
                with client.request(get("h")) as response:
                    answers.append(response.status)
            except Exception as error:
                answers.append(error)

        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(0.05)  # attempt 0 sent
        client.close()
        thread.join(5)
        assert answers == [200]  # the next attempt ran on the caller's thread
        assert len(server.received("/h")) == 2

    def test_close_on_the_event_loop_does_not_wait_for_an_async_call_in_flight(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        """``close()`` called on the loop thread (a settings change under ``clients`` in async code)
        while an ``arequest()`` is in flight: it waited for the call's thread, freezing the loop until
        the answer came (a downstream served by that loop could then only answer 408, at the call's
        deadline). Now it returns at once; the call gets its answer, and the client's threads end
        with it."""
        server.route("/slow", answer_after(1.0, body=b"late"))
        before = set(threading.enumerate())
        client = make_client(safe_method_strategy=single_attempt_strategy(), timeout=5.0)

        async def go() -> tuple[float, int, bytes]:
            async def one() -> tuple[int, bytes]:
                async with client.arequest(get("slow")) as response:
                    return response.status, response.read()

            task = asyncio.create_task(one())
            await asyncio.sleep(0.1)  # the call is waiting for its answer
            started = time.monotonic()
            client.close()
            closing = time.monotonic() - started
            return (closing, *await task)

        closing, status, body = asyncio.run(go())

        assert closing < 0.3, closing  # it took 0.9 s: until the answer
        assert (status, body) == (200, b"late")
        assert eventually(
            lambda: not [t for t in set(threading.enumerate()) - before if t.name.startswith(CLIENT_THREADS)]
        )

    def test_close_on_the_event_loop_does_not_wait_for_the_hedges_of_a_sync_call_in_flight(
        self, make_client: Callable[..., Client]
    ) -> None:
        """``close()`` on the loop thread while a sync hedged call, made from another thread (a sync
        view in the same ASGI process), waits for a downstream served by that loop: it waited for the
        running hedges, freezing the loop, so neither attempt could be answered and the call got a
        408 at its 3 s deadline. Now it returns at once and the call gets its answer."""
        before = set(threading.enumerate())

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.readuntil(b"\r\n\r\n")
                await asyncio.sleep(0.3)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
                pass  # the losing attempt, aborted
            finally:
                writer.close()

        async def go() -> tuple[float, list[tuple[int, bytes]]]:
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            client = make_client(
                endpoint=f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/",
                timeout=3.0,
                retry_budget=None,
                safe_method_strategy=parallel_strategy(attempts_count=2, delays_provider=constant_delays(delay=0.05)),
            )
            answers: list[tuple[int, bytes]] = []

            def sync_view() -> None:
                with client.request(get("x")) as response:
                    answers.append((response.status, response.read()))

            thread = threading.Thread(target=sync_view)
            thread.start()
            await asyncio.sleep(0.15)  # attempt 0 and its hedge wait for this loop's answer
            started = time.monotonic()
            client.close()
            closing = time.monotonic() - started
            await asyncio.to_thread(thread.join, 10)
            server.close()
            return closing, answers

        closing, answers = asyncio.run(go())

        assert closing < 0.1, closing  # it took 2.9 s: until the deadline
        assert answers == [(200, b"ok")]  # it was a 408
        assert eventually(
            lambda: not [t for t in set(threading.enumerate()) - before if t.name.startswith(CLIENT_THREADS)]
        )

    def test_a_closed_client_opens_again_on_use_sync_async_and_hedges_alike(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        """What a client held past ``close()`` (a settings change under ``clients``) does on its next
        calls. Before: an async call raised RuntimeError('cannot schedule new futures after
        shutdown') once the client had made one before close(), and a sync call never sent its
        hedge (the worker pool stayed shut: the call took attempt 0's 1 s)."""
        self.slow_first_fast_hedge(server)
        hedging = parallel_strategy(attempts_count=2, delays_provider=constant_delays(delay=0.05))
        before = set(threading.enumerate())
        client = make_client(safe_method_strategy=hedging)

        def threads_of_the_client() -> list[threading.Thread]:  # its attempt workers and async drivers
            return [t for t in set(threading.enumerate()) - before if t.name.startswith(CLIENT_THREADS)]

        with client.request(get("h")) as response:
            assert response.status == 200
        assert asyncio.run(self.async_status(client)) == 200
        assert threads_of_the_client()
        for _ in range(2):  # closed twice over: each close() stops what the calls after the last one started
            client.close()
            assert not threads_of_the_client()
            started = time.monotonic()
            with client.request(get("h"), deadline=Deadline.from_timeout(3.0)) as response:
                assert response.status == 200
            assert time.monotonic() - started < 0.8  # the hedge's answer, not attempt 0's 1 s
            assert asyncio.run(self.async_status(client)) == 200
        client.close()
        assert not threads_of_the_client()

    def test_calls_racing_close_all_answer_and_the_client_hedges_after(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        """Sync and async calls while another thread closes the client over and over. Before: a
        call that reopened the client while close() waited left the worker pool shut for good (no
        hedge ever again), an async call raised RuntimeError, and calls that picked a pool close()
        then closed answered 489 (ClosedPoolError) from a healthy server."""
        server.route("/ok", ok)
        self.slow_first_fast_hedge(server)
        hedging = parallel_strategy(attempts_count=2, delays_provider=constant_delays(delay=0.05))
        client = make_client(safe_method_strategy=hedging)
        stop = threading.Event()
        statuses: list[object] = []

        def sync_calls() -> None:
            while not stop.is_set():
                with client.request(get("ok")) as response:
                    statuses.append(response.status)

        async def async_calls() -> None:
            while not stop.is_set():
                async with client.arequest(get("ok")) as response:
                    statuses.append(response.status)

        def closes() -> None:
            while not stop.is_set():
                client.close()

        def record(target: Callable[[], object]) -> Callable[[], None]:
            def run() -> None:
                try:
                    target()
                except Exception as error:
                    statuses.append(repr(error))

            return run

        threads = [threading.Thread(target=record(f)) for f in (sync_calls, sync_calls, closes)]
        threads.append(threading.Thread(target=record(lambda: asyncio.run(async_calls()))))
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        stop.set()
        for thread in threads:
            thread.join(10)
        assert len(statuses) > 50
        assert set(statuses) == {200}, collections.Counter(map(str, statuses))
        started = time.monotonic()
        with client.request(get("h"), deadline=Deadline.from_timeout(3.0)) as response:
            assert response.status == 200
        assert time.monotonic() - started < 0.8  # the hedge's answer, not attempt 0's 1 s

    def test_a_client_used_before_fork_hedges_and_calls_async_in_the_child(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        """The child inherits executors that count the parent's idle threads, which it has not: its
        first hedge was never sent (the call took attempt 0's 1 s) and its first async calls never
        started (408 at their deadline)."""
        self.slow_first_fast_hedge(server)
        hedging = parallel_strategy(attempts_count=2, delays_provider=constant_delays(delay=0.05))
        client = make_client(safe_method_strategy=hedging)
        with client.request(get("h")) as response:  # the parent's workers exist now
            assert response.status == 200
        assert asyncio.run(self.async_status(client)) == 200

        def child() -> dict[str, Any]:
            started = time.monotonic()
            with client.request(get("h"), deadline=Deadline.from_timeout(3.0)) as response:
                hedged = (response.status, time.monotonic() - started)
            return {"hedged": hedged, "async": asyncio.run(self.async_status(client))}

        got = in_child(child) or {}
        assert got["hedged"][0] == 200
        assert got["hedged"][1] < 0.8, got  # the hedge's answer, not attempt 0's 1 s
        assert got["async"] == 200

    @staticmethod
    async def async_status(client: Client) -> int:
        async with client.arequest(get("h"), deadline=Deadline.from_timeout(2.0)) as response:
            return response.status


class TestMetrics:
    """What the client records of a call (docs/metrics.md), whichever way it ended."""

    @staticmethod
    def recorded(endpoint: str) -> dict[str, float]:
        all_metrics.flush()
        call = {"request_endpoint": endpoint, "request_method": "GET"}
        latency = {**call, "request_path": "hang", "response_status": "408", "circuit_breaker": "False"}
        samples = {
            "latency_408": ("aio_request_latency_count", latency),
            "attempt_0": ("aio_request_attempts_total", {**call, "attempt": "0"}),
            "winning_0": ("aio_request_winning_attempt_total", {**call, "attempt": "0"}),
            "expired": ("aio_request_deadline_rejected_total", {**call, "reason": "expired"}),
        }
        return {what: REGISTRY.get_sample_value(name, labels) or 0.0 for what, (name, labels) in samples.items()}

    def test_async_calls_that_never_got_a_call_thread_are_observed_as_a_sync_call_past_its_deadline(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        """One call thread, held by a call the server never answers: the three calls queued behind it
        answer 408 at their deadline without sending. Before, they were only in
        aio_request_deadline_rejected_total: aio_request_latency ("one per client call") had 1 of 4."""
        server.route("/hang", hang_until_disconnect)
        client = make_client(max_workers=1, safe_method_strategy=single_attempt_strategy())

        async def four() -> list[int]:
            async def one(timeout: float) -> int:
                async with client.arequest(get("hang"), deadline=Deadline.from_timeout(timeout)) as response:
                    return response.status

            return await asyncio.gather(one(0.6), *(one(0.2) for _ in range(3)))

        assert asyncio.run(four()) == [408] * 4
        assert len(server.received("/hang")) == 1  # the queued ones were never sent
        queued = self.recorded(server.url)
        assert queued == {"latency_408": 4, "attempt_0": 4, "winning_0": 4, "expired": 3}

        # What a sync call past its deadline adds, each counted once: the same as a queued one.
        with client.request(get("hang"), deadline=Deadline(time.monotonic() - 1)) as response:
            assert response.status == 408
        after = self.recorded(server.url)
        assert {what: after[what] - queued[what] for what in after} == dict.fromkeys(after, 1.0)


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"deadline": 5.0}, "deadline must be a Deadline"),
        ({"priority": "high"}, "priority must be a Priority"),
        ({"request": "ok"}, "request must be a Request"),
    ],
)
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_arguments_of_the_wrong_type_raise_a_type_error_before_anything_is_sent(
    server: LoopbackServer, make_client: Callable[..., Client], arguments: dict[str, Any], named: str, mode: str
) -> None:
    """A float deadline, a priority's name or a URL for the request raised AttributeError from inside the call."""
    server.route("/ok", ok)
    client = make_client()
    keywords = {k: v for k, v in arguments.items() if k != "request"}
    request: Any = arguments.get("request", get("ok"))

    def sync_call() -> None:
        with client.request(request, **keywords):
            pass

    async def async_call() -> None:
        async with client.arequest(request, **keywords):
            pass

    with pytest.raises(TypeError, match=named):
        sync_call() if mode == "sync" else asyncio.run(async_call())
    assert server.received("/ok") == []
