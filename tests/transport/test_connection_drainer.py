"""A hedged call's losing attempt gives its connection to the drainer, which reads the answer nobody
waits for and pools the connection (transport/releasable_socket.py, transport/connection_drainer.py).

Against real keep-alive servers on loopback: the server counts the connections it was asked on."""

import asyncio
import concurrent.futures
import os
import random
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from django_aio_request import Client, Request, parallel_strategy
from django_aio_request.transport import connection_drainer
from django_aio_request.transport.connection_drainer import MAX_WAIT, drainer
from tests.support.forking import in_child
from tests.support.loopback import clients
from tests.support.scripted_server import ScriptedServer, first_of_a_path_late, ok

DELAY = 0.05  # the hedge's


def hedged(**kwargs: object) -> dict[str, object]:
    return {
        "timeout": 5.0,
        "safe_method_strategy": parallel_strategy(attempts_count=2, delays_provider=lambda k: DELAY * k),
        **kwargs,
    }


def get(client: Client, path: str) -> tuple[int, bytes]:
    with client.request(Request(method="GET", url=path.lstrip("/"))) as response:
        return response.status, response.read()


async def _aget(client: Client, path: str) -> tuple[int, bytes]:
    async with client.arequest(Request(method="GET", url=path.lstrip("/"))) as response:
        return response.status, response.read()


def aget(client: Client, path: str) -> tuple[int, bytes]:
    """:func:`get` through ``arequest()``, awaited on an event loop of its own."""
    return asyncio.run(_aget(client, path))


@pytest.fixture(params=["request", "arequest"])
def call(request: pytest.FixtureRequest) -> Callable[[Client, str], tuple[int, bytes]]:
    """A call from sync code and from async code: the losers of both are drained alike (a review:
    every async hedge that lost was shut down, and the next call made a new connection)."""
    return get if request.param == "request" else aget


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedServer]]:
    made: list[ScriptedServer] = []

    def make(answer: Callable[[int, str], tuple[float, bytes] | None]) -> ScriptedServer:
        server = ScriptedServer(answer)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


def _descriptors() -> dict[str, str]:
    """This process's open descriptors and what each is."""
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the listing's own, closed since
            continue
    return found


def counted(outcome: str, before: int, within: float = 2.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if drainer.counts[outcome] > before:
            return True
        time.sleep(0.01)
    return False


def slow_first(seconds: float, first: bytes | None = None) -> Callable[[int, str], tuple[float, bytes]]:
    """Request 1 answered after ``seconds`` (with ``first``, if given), the others at once; each
    answer's body is its path, so a call can tell whose answer it got."""

    def answer(n: int, path: str) -> tuple[float, bytes]:
        if n == 1:
            return seconds, first if first is not None else ok(path)
        return 0.0, ok(path)

    return answer


def test_a_winning_hedge_leaves_the_loser_s_connection_to_carry_later_calls(
    scripted: Callable[..., ScriptedServer], call: Callable[[Client, str], tuple[int, bytes]]
) -> None:
    server = scripted(slow_first(0.3))
    pooled = drainer.counts["pooled"]
    with clients(server.url) as make:
        client = make(**hedged())
        started = time.monotonic()
        assert call(client, "a") == (200, b"/a")  # the hedge's answer
        assert time.monotonic() - started < DELAY + 0.2
        assert counted("pooled", pooled)  # the loser's answer came at 0.3 s, read by the drainer
        answers = [call(client, f"b{i}") for i in range(4)]
    assert answers == [(200, f"/b{i}".encode()) for i in range(4)]
    # The loser's connection, then the hedge's: no new connection was made.
    assert server.connections() == 2
    assert server.connection_of("/b0") == server.connection_of("/a")


@pytest.mark.parametrize(
    "answer",
    [
        ok("/a", "Connection: close\r\n"),
        ok("/a") + b"HTTP/1.1 200 OK\r\n",  # bytes past the answer's end
        b"HTTP/1.1 200 OK\r\n\r\nno length",  # its end is the connection's
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n/a",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n/a",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"garbage\r\n\r\n",
    ],
    ids=["connection-close", "bytes-past-the-end", "no-length", "http-1.0", "two-lengths", "bad-chunk", "garbage"],
)
def test_a_loser_s_answer_whose_end_is_in_doubt_closes_its_connection(
    scripted: Callable[..., ScriptedServer], answer: bytes
) -> None:
    server = scripted(slow_first(0.5, answer))  # well after the hedge, however late a loaded machine sends it
    closed = drainer.counts["closed"]
    with clients(server.url) as make:
        client = make(**hedged())
        assert get(client, "a") == (200, b"/a")
        assert counted("closed", closed)
        loser = server.connection_of("/a")
        assert server.wait_closed(loser, within=1.0) is not None
        # Later calls get their own answers, never what the loser's connection held.
        assert [get(client, f"b{i}") for i in range(3)] == [(200, f"/b{i}".encode()) for i in range(3)]
    assert loser not in {server.connection_of(f"/b{i}") for i in range(3)}


def test_a_loser_never_answered_is_closed_at_max_wait(
    scripted: Callable[..., ScriptedServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connection_drainer, "MAX_WAIT", 0.3)  # 1 s by default: read when a loser is taken
    server = scripted(slow_first(30.0))
    with clients(server.url) as make:
        client = make(**hedged(timeout=10.0))
        assert get(client, "a") == (200, b"/a")
        released_at = time.monotonic()
        # The server sleeps through the close: what the test sees is the drainer giving up.
        expired = drainer.counts["expired"]
        assert counted("expired", expired, within=0.3 + 1.0)
        assert 0.3 - 0.05 <= time.monotonic() - released_at < 0.3 + 0.5


def test_a_loser_is_not_waited_for_past_its_call_s_deadline(scripted: Callable[..., ScriptedServer]) -> None:
    server = scripted(slow_first(30.0))
    with clients(server.url) as make:
        client = make(**hedged(timeout=0.4))
        started = time.monotonic()
        assert get(client, "a") == (200, b"/a")
        expired = drainer.counts["expired"]
        assert counted("expired", expired, within=1.0)
        assert time.monotonic() - started < 0.4 + 0.3  # the deadline, not MAX_WAIT


def test_a_losing_hedge_s_connection_is_kept_too(
    scripted: Callable[..., ScriptedServer], call: Callable[[Client, str], tuple[int, bytes]]
) -> None:
    """Attempt 0 answers at 0.3 s; the hedge, sent at 0.05 s, 0.5 s after it came."""

    def answer(n: int, path: str) -> tuple[float, bytes]:
        return (0.3 if n == 1 else 0.5), ok(f"{path}{n}")

    server = scripted(answer)
    pooled = drainer.counts["pooled"]
    with clients(server.url) as make:
        client = make(**hedged())
        assert call(client, "a") == (200, b"/a1")
        assert counted("pooled", pooled)
        server.answer = lambda n, path: (0.0, ok(path))
        assert [call(client, f"b{i}") for i in range(3)] == [(200, f"/b{i}".encode()) for i in range(3)]
    assert server.connections() == 2


def test_a_full_drainer_shuts_the_loser_s_connection_as_before(
    scripted: Callable[..., ScriptedServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connection_drainer, "MAX_DRAINING", 0)
    server = scripted(slow_first(1.0))
    with clients(server.url) as make:
        client = make(**hedged())
        assert get(client, "a") == (200, b"/a")
        returned_at = time.monotonic()
        closed_at = server.wait_closed(server.connection_of("/a"), within=2.0)
    assert closed_at is not None
    assert closed_at - returned_at < 0.1  # shut down with the call's end, not drained


def test_a_client_closed_while_its_loser_drains_keeps_nothing(scripted: Callable[..., ScriptedServer]) -> None:
    server = scripted(slow_first(0.3))
    no_slot = drainer.counts["no slot"]
    with clients(server.url) as make:
        client = make(**hedged())
        assert get(client, "a") == (200, b"/a")
        client.close()
    assert counted("no slot", no_slot)
    assert server.wait_closed(server.connection_of("/a"), within=1.0) is not None


def test_a_call_answered_before_its_hedge_is_due_makes_no_eventfd(
    scripted: Callable[..., ScriptedServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[int] = []
    real = os.eventfd

    def counting(*args: int) -> int:
        fd = real(*args)
        made.append(fd)
        return fd

    monkeypatch.setattr(os, "eventfd", counting)
    server = scripted(lambda n, path: (0.0, ok(path)))
    with clients(server.url) as make:
        client = make(**hedged())
        assert [get(client, f"x{i}") for i in range(20)] == [(200, f"/x{i}".encode()) for i in range(20)]
    assert made == []


def test_many_threads_each_get_their_own_answer_while_losers_drain(
    scripted: Callable[..., ScriptedServer],
) -> None:
    """8 threads, 240 hedged calls, one request in four answered late (0.08-0.2 s): a drained
    connection must never hand a later call the answer of an earlier one."""
    rng = random.Random(7)
    lock = threading.Lock()

    def answer(n: int, path: str) -> tuple[float, bytes]:
        with lock:
            late = rng.random() < 0.25
            delay = rng.uniform(0.08, 0.2) if late else 0.0
        return delay, ok(path)

    server = scripted(answer)
    pooled = drainer.counts["pooled"]
    fds_before = _descriptors()
    with clients(server.url) as make:
        client = make(**hedged())
        paths = [f"p{i}" for i in range(240)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda path: get(client, path), paths))
        assert answers == [(200, f"/{path}".encode()) for path in paths]
        assert counted("pooled", pooled + 10, within=1.0)  # many losers were kept
        time.sleep(0.3)  # the last losers' answers
    # The drainer's two at most (its thread ends after IDLE_EXIT); no eventfd of a read, and no socket
    # left behind once the server, in this process too, has seen its connections closed.
    allowed: list[list[str]] = [[], ["anon_inode:[eventfd]", "anon_inode:[eventpoll]"]]
    end = time.monotonic() + 3.0
    while True:
        left = {fd: what for fd, what in _descriptors().items() if fds_before.get(fd) != what}
        if sorted(left.values()) in allowed or time.monotonic() > end:
            break
        time.sleep(0.05)
    assert sorted(left.values()) in allowed, left


@pytest.mark.parametrize("draining", [True, False])
def test_hedges_that_win_one_call_after_another_need_no_new_connections(
    scripted: Callable[..., ScriptedServer], monkeypatch: pytest.MonkeyPatch, draining: bool
) -> None:
    """30 calls in a row, every other one's first request answered at 0.1 s: its hedge wins at 0.05 s."""
    if not draining:
        monkeypatch.setattr(connection_drainer, "MAX_DRAINING", 0)  # losers shut down, as before
    server = scripted(first_of_a_path_late(0.1, prefix="/slow"))
    with clients(server.url) as make:
        client = make(**hedged())
        for i in range(30):
            path = f"slow{i}" if i % 2 == 0 else f"fast{i}"
            assert get(client, path) == (200, f"/{path}".encode())  # the next at once: losers still drain
    hedges = len(server.log) - 30
    assert hedges >= 10  # 15, unless a loaded machine sent a hedge after its call's answer came
    if draining:
        assert server.connections() <= 5, server.log  # two losers draining at once, at most
    else:
        assert server.connections() >= hedges  # a new connection for each loser shut down


def test_a_forked_child_drains_its_own_and_leaves_the_parent_s(scripted: Callable[..., ScriptedServer]) -> None:
    server = scripted(first_of_a_path_late(0.5))
    with clients(server.url) as make:
        client = make(**hedged())
        assert get(client, "/a") == (200, b"/a")  # its loser drains until 0.5 s
        pooled = drainer.counts["pooled"]

        def child() -> list[object]:
            inherited = [drainer._draining, len(drainer._waiting), drainer._thread is None]
            child_pooled = drainer.counts["pooled"]
            status, body = get(client, "/c")  # its loser is the child's to drain
            return [*inherited, status, body.decode(), counted("pooled", child_pooled)]

        assert in_child(child) == [0, 0, True, 200, "/c", True]
        # The child closed its copy of the parent's loser, which the parent still drained and kept.
        assert counted("pooled", pooled)
        assert get(client, "/a") == (200, b"/a")
    assert server.connection_of("/a") == 1
    assert [conn for _, path, conn in server.log if path == "/a"][-1] == 1


def test_an_idle_drainer_ends_its_thread_and_starts_again_when_needed(
    scripted: Callable[..., ScriptedServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connection_drainer, "IDLE_EXIT", 0.2)  # 1 s by default: read on each wait
    server = scripted(first_of_a_path_late(0.2))

    def drainer_threads() -> int:
        return sum(thread.name == "aio-request-drainer" for thread in threading.enumerate())

    with clients(server.url) as make:
        client = make(**hedged())
        for path in ("a", "b"):
            pooled = drainer.counts["pooled"]
            assert get(client, path) == (200, f"/{path}".encode())
            assert drainer_threads() == 1
            assert counted("pooled", pooled)
            fds = len(os.listdir("/proc/self/fd"))
            end = time.monotonic() + connection_drainer.IDLE_EXIT + 1.0
            while drainer_threads() and time.monotonic() < end:
                time.sleep(0.02)
            assert drainer_threads() == 0
            assert len(os.listdir("/proc/self/fd")) == fds - 2  # its eventfd and epoll descriptor


def _thread_cpu(native_id: int) -> float:
    """Seconds of CPU a thread of this process has used (user and system)."""
    with open(f"/proc/self/task/{native_id}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_body_of_many_small_chunks_trickled_in_costs_the_drainer_little(
    scripted: Callable[..., ScriptedServer],
) -> None:
    """4,000 one-byte chunks in 200 writes a millisecond apart: parsed again from the start on every
    read, this took the drainer thread 0.65-0.83 s of CPU (a review); each byte is looked at once now."""
    pieces = [(0.001, b"1\r\nx\r\n" * 20) for _ in range(200)]
    head = (0.0, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    slow = [head, *pieces, (0.0, b"0\r\n\r\n")]
    server = scripted(lambda n, path: (0.1, slow) if n == 1 else (0.0, ok(path)))
    pooled = drainer.counts["pooled"]
    with clients(server.url) as make:
        client = make(**hedged())
        assert get(client, "a") == (200, b"/a")
        (thread,) = [thread for thread in threading.enumerate() if thread.name == "aio-request-drainer"]
        assert thread.native_id is not None
        before = _thread_cpu(thread.native_id)
        assert counted("pooled", pooled, within=MAX_WAIT)
        used = _thread_cpu(thread.native_id) - before
        assert get(client, "b") == (200, b"/b")  # on the drained connection
    assert used < 0.1
    assert server.connection_of("/b") == server.connection_of("/a")


@pytest.mark.parametrize(
    "announced",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n",
        # No length at all, then the body: aiohttp 3.14's StreamResponse, gunicorn 23.0's streaming view.
        b"HTTP/1.1 200 OK\r\nServer: Python/3.11 aiohttp/3.14.5\r\n\r\n",
    ],
    ids=["a-length", "no-length"],
)
def test_a_head_answer_announcing_a_body_sent_after_it_closes_the_loser_s_connection(
    scripted: Callable[..., ScriptedServer], announced: bytes
) -> None:
    """Pooled after the head, the body the server sent 50 ms later was read as the next call's
    answer: a 489 for a POST the server had carried out (5 of 5, and 18 of 18 against gunicorn 23.0
    and aiohttp 3.14 with no length, in two reviews)."""

    def answer(n: int, path: str) -> tuple[float, bytes | list[tuple[float, bytes]]]:
        if n == 1:
            return 0.2, [(0.0, announced), (0.05, b"hello world")]
        return 0.0, (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" if path == "/h" else ok(path))

    server = scripted(answer)
    ended = drainer.counts["closed"] + drainer.counts["pooled"]
    with clients(server.url) as make:
        client = make(**hedged())
        with client.request(Request(method="HEAD", url="h")) as response:
            assert response.status == 200
        end = time.monotonic() + 1.0
        while drainer.counts["closed"] + drainer.counts["pooled"] == ended and time.monotonic() < end:
            time.sleep(0.002)
        # At once: the body comes while the POST waits (come before it, urllib3 would take the idle
        # connection for dropped).
        with client.request(Request(method="POST", url="p", body=b"x")) as response:
            assert (response.status, response.read()) == (200, b"/p")
    assert server.connection_of("/p") != 1  # not the loser's


def _anonymous_descriptors() -> dict[str, int]:
    """This process's eventfd and epoll descriptors, by kind."""
    kinds = {"anon_inode:[eventfd]": "eventfd", "anon_inode:[eventpoll]": "epoll"}
    counts = dict.fromkeys(kinds.values(), 0)
    for fd in os.listdir("/proc/self/fd"):
        try:
            kind = kinds.get(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
        if kind is not None:
            counts[kind] += 1
    return counts


def test_a_forked_child_keeps_no_descriptor_of_the_parent_s_drainer_or_listening_reads(
    scripted: Callable[..., ScriptedServer],
) -> None:
    """At the fork the parent's drainer runs (its eventfd and epoll descriptor) and a call's two
    attempts listen (an eventfd each): a child kept copies of them all for its whole life (a review)."""
    end = time.monotonic() + connection_drainer.IDLE_EXIT + 1.0
    while drainer._thread is not None and time.monotonic() < end:
        time.sleep(0.02)
    before = _anonymous_descriptors()

    def answer(n: int, path: str) -> tuple[float, bytes]:
        return (0.6 if path == "/b" or n == 1 else 0.0), ok(path)

    server = scripted(answer)
    with clients(server.url) as make:
        client = make(**hedged())
        assert get(client, "a") == (200, b"/a")  # its loser drains until 0.6 s
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            listening = pool.submit(get, client, "b")  # both its attempts wait 0.6 s
            time.sleep(0.2)
            during = _anonymous_descriptors()
            child = in_child(_anonymous_descriptors)
            assert listening.result() == (200, b"/b")
    assert during["eventfd"] >= before["eventfd"] + 3  # the drainer's and two listening reads'
    assert during["epoll"] == before["epoll"] + 1
    assert child == before


def test_a_loser_stopped_before_its_read_began_is_drained_too(
    scripted: Callable[..., ScriptedServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Released between sending its request and reading the answer (its thread without the CPU,
    here a pause), the attempt was stopped before its read and its connection closed: its server's
    answer went to a closed connection (3 of about 190 releases in a review)."""
    from django_aio_request.transport.attempt_sockets import GuardedHTTPConnection

    read = GuardedHTTPConnection.getresponse
    paused = threading.Event()

    def late_reader(conn: GuardedHTTPConnection) -> object:
        if not paused.is_set():
            paused.set()
            time.sleep(0.15)  # the hedge, due at 0.05 s, wins meanwhile
        return read(conn)

    monkeypatch.setattr(GuardedHTTPConnection, "getresponse", late_reader)
    server = scripted(slow_first(0.3))
    pooled = drainer.counts["pooled"]
    with clients(server.url) as make:
        client = make(**hedged())
        assert get(client, "a") == (200, b"/a")
        assert counted("pooled", pooled)
        assert [get(client, f"b{i}") for i in range(2)] == [(200, b"/b0"), (200, b"/b1")]
    assert server.connections() == 2
