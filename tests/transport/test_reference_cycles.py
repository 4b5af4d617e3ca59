"""A call leaves nothing of its own to the garbage collector, whatever became of its attempts.

Objects in a reference cycle live until the collector runs: a call's request, its responses (their
bodies) and its hedging state would then stay in memory, however short the call. Three cycles did
this: the exception of a failed or aborted attempt (urllib3 keeps it in a local of a frame of its
own traceback, whose frames reach the caller's through ``f_back``), the hedge timer's closure,
which held itself in its own cell, and the response hook that collects the answers of a redirect
chain (held by the request that each answer holds). Each test runs calls with the collector off,
then asks it what it would have had to free.
"""

import contextlib
import gc
import threading
import time
import types
from collections.abc import Callable, Iterator

import pytest
import requests

from django_aio_request import Client, Response, constant_delays, get, parallel_strategy
from django_aio_request.core import status
from django_aio_request.core.cancellation import Cancellation
from django_aio_request.transport.requests_transport import RequestsTransport
from tests.support.loopback import Handler, LoopbackServer, answer_after, free_port, hang_until_disconnect
from tests.transport.test_requests_transport import raw

_CALL_PATH = ("django_aio_request", "requests", "urllib3", "http.client")


def ours(garbage: list[object]) -> list[str]:
    """What of a call's path (this package, requests, urllib3, http.client: objects, and frames of
    their code) is among ``garbage``."""
    found = []
    for item in garbage:
        if isinstance(item, types.FrameType):
            if any(part in item.f_code.co_filename for part in ("django_aio_request", "requests", "urllib3")):
                found.append(f"frame of {item.f_code.co_qualname}")
        elif type(item).__module__.startswith(_CALL_PATH):
            found.append(f"{type(item).__module__}.{type(item).__qualname__}")
    return found


@contextlib.contextmanager
def collector_off() -> Iterator[list[object]]:
    """Runs the block with the collector off; the list then holds what it found unreachable of what
    the block made.

    What existed before the block is held meanwhile, so it is never found: an earlier test's cycle
    that something else kept until the block ran (a fake's call and its error, released by a thread of
    that test's ending late) was taken for this block's garbage, in a suite run under load."""
    gc.collect()
    existing = gc.get_objects()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # keep what it finds, to say what it was
    found: list[object] = []
    try:
        yield found
        gc.collect()
        found.extend(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
        del existing


def read(client: Client, path: str) -> int:
    with client.request(get(path)) as response:
        response.read()
        return response.status


class TestFailedAttempts:
    @pytest.mark.parametrize(
        ("route", "expected"),
        [
            (raw(b"NOT HTTP AT ALL\r\n\r\n"), status.NETWORK_ERROR),  # a malformed status line
            (raw(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"), status.NETWORK_ERROR),  # cut short
            (raw(b""), status.NETWORK_ERROR),  # closed without a word
        ],
        ids=["malformed", "cut-short", "closed"],
    )
    def test_an_answer_that_is_not_http_leaves_no_garbage(
        self,
        server: LoopbackServer,
        make_client: Callable[..., Client],
        route: Callable[[Handler], None],
        expected: int,
    ) -> None:
        server.route("/x", route)
        client = make_client(timeout=5.0)
        read(client, "x")  # connections and lazily built state made outside the measured block
        with collector_off() as garbage:
            statuses = [read(client, "x") for _ in range(3)]
        assert statuses == [expected] * 3
        assert ours(garbage) == []

    def test_a_refused_connection_leaves_no_garbage(self) -> None:
        transport = RequestsTransport()
        try:
            endpoint = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
            transport.send(endpoint, get("x"), 5.0)
            with collector_off() as garbage:
                answers = [transport.send(endpoint, get("x"), 5.0) for _ in range(3)]
                codes = [answer.status for answer in answers]
                del answers
        finally:
            transport.close()
        assert codes == [status.NETWORK_ERROR] * 3
        assert ours(garbage) == []

    def test_a_timed_out_attempt_leaves_no_garbage(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        server.route("/slow", answer_after(1.0))
        client = make_client(timeout=0.2)
        with collector_off() as garbage:
            statuses = [read(client, "slow") for _ in range(2)]
        assert statuses == [status.TIMEOUT] * 2
        assert ours(garbage) == []

    def test_an_aborted_attempt_leaves_no_garbage(self, server: LoopbackServer) -> None:
        server.route("/hang", hang_until_disconnect)
        transport = RequestsTransport()
        try:
            with collector_off() as garbage:
                codes = []
                for _ in range(3):
                    cancellation = Cancellation()
                    abort = threading.Timer(0.1, cancellation.cancel)  # as a winning hedge does
                    abort.start()
                    answer: Response = transport.send(server.url, get("hang"), 5.0, cancellation)
                    abort.join()
                    codes.append(answer.status)
                    del answer
        finally:
            transport.close()
        assert codes == [status.CANCELLED] * 3
        assert ours(garbage) == []


class TestRedirects:
    @pytest.mark.parametrize(
        ("location", "expected"),
        [("/x", status.TOO_MANY_REDIRECTS), ("http://[::1", status.TOO_MANY_REDIRECTS)],
        ids=["loop", "unfollowable"],
    )
    def test_a_redirect_chain_that_ends_badly_leaves_no_garbage(
        self, server: LoopbackServer, make_client: Callable[..., Client], location: str, expected: int
    ) -> None:
        server.route("/x", lambda h: h.reply(302, b"", {"Location": location}))
        client = make_client(timeout=5.0)
        read(client, "x")
        with collector_off() as garbage:
            statuses = [read(client, "x") for _ in range(2)]
        assert statuses == [expected] * 2
        assert ours(garbage) == []

    def test_a_followed_redirect_leaves_no_garbage(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        server.route("/x", lambda h: h.reply(302, b"", {"Location": "/y"}))
        server.route("/y", lambda h: h.reply(200, b"there"))
        client = make_client(timeout=5.0)
        read(client, "x")
        with collector_off() as garbage:
            statuses = [read(client, "x") for _ in range(3)]
        assert statuses == [200] * 3
        assert ours(garbage) == []


class TestHedgedCalls:
    def test_a_hedge_that_never_fires_leaves_no_garbage(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        server.route("/x", lambda h: h.reply(200, b"quick"))
        strategy = parallel_strategy(attempts_count=2, delays_provider=constant_delays(delay=5.0))
        client = make_client(timeout=10.0, safe_method_strategy=strategy)
        read(client, "x")
        with collector_off() as garbage:
            statuses = [read(client, "x") for _ in range(5)]
        assert statuses == [200] * 5
        assert ours(garbage) == []

    def test_a_hedge_that_wins_leaves_no_garbage_of_the_attempt_it_aborted(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        arrivals = iter(range(1000))

        def first_hangs(handler: Handler) -> None:  # even requests hang until the client hangs up
            if next(arrivals) % 2 == 0:
                hang_until_disconnect(handler)
            else:
                handler.reply(200, b"hedge")

        server.route("/x", first_hangs)
        strategy = parallel_strategy(attempts_count=2, delays_provider=constant_delays(delay=0.05))
        client = make_client(timeout=5.0, safe_method_strategy=strategy)
        with collector_off() as garbage:
            bodies = []
            for _ in range(3):
                with client.request(get("x")) as response:
                    bodies.append(response.read())
        assert bodies == [b"hedge"] * 3
        assert ours(garbage) == []

    def test_a_call_whose_attempt_0_raises_after_its_last_hedge_went_leaves_no_garbage(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        """A response hook raises on attempt 0's answer after the timer launched the call's last hedge
        (and so stopped itself). The timer's entry kept the call, its answers among it, in a cycle."""
        arrivals = iter(range(1000))

        def first_is_slow(handler: Handler) -> None:  # attempt 0 answers after the hedge went
            if next(arrivals) % 2 == 0:
                time.sleep(0.15)
                handler.reply(200, b"first")
            else:
                handler.reply(500, b"hedge")  # rejected: it settles nothing

        class HookBug(Exception):
            pass

        def hook(answer: requests.Response, *args: object, **kwargs: object) -> None:
            if answer.content == b"first":
                raise HookBug("a bug of the application's own")

        server.route("/x", first_is_slow)
        session = requests.Session()
        session.hooks["response"].append(hook)
        strategy = parallel_strategy(
            attempts_count=2, delays_provider=constant_delays(delay=0.03), stragglers_only=False
        )
        client = make_client(
            transport=RequestsTransport(session), retry_budget=None, timeout=2.0, safe_method_strategy=strategy
        )
        with collector_off() as garbage:
            for _ in range(3):
                with pytest.raises(HookBug), client.request(get("x")):
                    pass
                time.sleep(0.05)  # the hedge's 500 is in
        assert ours(garbage) == []
