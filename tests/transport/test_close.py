"""Connections are closed by the code, never left to the garbage collector (which runs here with
``gc.disable()``): ``close()`` closes every pooled connection at once, and the connection of an
attempt that timed out or lost to a hedge is closed by the time its call's deadline passes.

Counted from outside Python objects: the client's sockets to the server in ``/proc/net/tcp``
(ESTABLISHED or CLOSE_WAIT: still open on the client's side), the server's own, and this process's
descriptors. Printed (``pytest -s``): descriptors and connections left after ``close()``.
"""

import socket
import threading
import time
from collections.abc import Iterator

import pytest

import django_aio_request as dar
from tests.support.loopback import Handler, LoopbackServer
from tests.support.raw_server import RawAnswerServer
from tests.support.resources import eventually, open_fds

DEADLINE = 0.3
_OPEN_STATES = {"01", "08"}  # ESTABLISHED, CLOSE_WAIT


def _tcp(port: int) -> tuple[int, int]:
    """(client-side, server-side) sockets of ``port`` still open, IPv4 loopback.

    A socket still has a descriptor (in this process: open) when its inode is not 0; one that was
    closed lingers in the table (FIN_WAIT2, TIME_WAIT) with inode 0. The server side counts only
    connections in ESTABLISHED or CLOSE_WAIT (its listener aside).
    """
    client = server = 0
    with open("/proc/net/tcp") as table:
        for line in table.read().splitlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if int(remote.rsplit(":", 1)[1], 16) == port and inode != "0":
                client += 1
            elif int(local.rsplit(":", 1)[1], 16) == port and state in _OPEN_STATES:
                server += 1
    return client, server


def _slow(handler: Handler) -> None:
    time.sleep(1.0)
    handler.reply(200, b"late")


def test_close_closes_every_pooled_connection_at_once(server: LoopbackServer, gc_off: None) -> None:
    server.route("/ok", lambda h: h.reply(200, b"ok"))
    server.route("/slow", _slow)
    fds = open_fds()
    client = dar.setup(endpoint=server.url, metrics=False, timeout=DEADLINE, max_workers=8)
    with client.request(dar.get("ok")) as response:
        assert response.status == 200
    # Ten connections in the pool: calls from ten threads at once.
    barrier = threading.Barrier(10)

    def call() -> None:
        barrier.wait(5)
        with client.request(dar.get("ok")):
            pass

    threads = [threading.Thread(target=call) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    with client.request(dar.get("slow")) as response:  # one 408
        assert response.status == 408
    pooled = _tcp(server.port)[0]
    assert pooled >= 2, "the test needs pooled connections to close"

    client.close()
    left = _tcp(server.port)[0]
    assert left == 0, f"{left} of {pooled} client connections still open right after close()"
    assert eventually(lambda: _tcp(server.port) == (0, 0))  # the server saw every one close
    assert eventually(lambda: open_fds() <= fds + 1)  # +1: the server's worker thread may still hold one
    print(f"\n[close] GC off: {pooled} pooled connections, {left} open after close(), descriptors +{open_fds() - fds}")


def test_hedge_losers_close_by_the_deadline_and_close_leaves_nothing_open(server: LoopbackServer, gc_off: None) -> None:
    fds = open_fds()
    deadline = 0.5
    client = dar.setup(
        endpoint=server.url,
        metrics=False,
        timeout=deadline,
        retry_budget=None,
        safe_method_strategy=dar.parallel_strategy(attempts_count=2, delays_provider=dar.constant_delays(delay=0.05)),
    )
    slow_next = threading.Event()

    def first_of_each_call_slow(handler: Handler) -> None:
        """The first attempt of each call is slow, so the hedge wins and the first is aborted."""
        if slow_next.is_set():
            slow_next.clear()
            time.sleep(1.0)
        handler.reply(200, b"x")

    server.route("/first-slow", first_of_each_call_slow)
    most = 0
    for _ in range(5):
        slow_next.set()
        started = time.monotonic()
        with client.request(dar.get("first-slow")) as response:
            assert response.status == 200
        # By the call's deadline the loser's connection is closed (the drainer, waiting for its answer,
        # gives up then: 0.1 s for its thread to get there); the winner's is back in the pool (and is
        # the next call's first, slow, attempt). Left open, every call would add one.
        time.sleep(max(0.0, started + deadline + 0.1 - time.monotonic()))
        most = max(most, _tcp(server.port)[0])
    assert most == 1, f"{most} client connections open between calls (one pooled expected)"
    client.close()
    left = _tcp(server.port)[0]
    assert left == 0, f"{left} client connections still open right after close()"
    assert eventually(lambda: open_fds() <= fds + 1, timeout=3.0), f"descriptors: {fds} before, {open_fds()} after"
    print(
        f"\n[hedging] GC off: at most {most} connection open between calls (the pooled winner), "
        f"{left} after close(), descriptors +{open_fds() - fds}"
    )


def test_an_abandoned_attempt_closes_its_connection_by_the_deadline(server: LoopbackServer, gc_off: None) -> None:
    """During normal operation, not at close(): a timed-out attempt's connection is not pooled."""
    server.route("/ok", lambda h: h.reply(200, b"ok"))
    server.route("/slow", _slow)
    client = dar.setup(endpoint=server.url, metrics=False, timeout=DEADLINE)
    try:
        with client.request(dar.get("ok")):
            pass
        assert _tcp(server.port)[0] == 1  # one pooled connection
        started = time.monotonic()
        with client.request(dar.get("slow")) as response:
            assert response.status == 408
        assert time.monotonic() - started <= DEADLINE + 0.15
        assert _tcp(server.port)[0] == 0  # the pooled one was used, timed out, and closed: not pooled again
    finally:
        client.close()


class _AnswersEarly(RawAnswerServer):
    """Answers 200 as soon as the head is in, never reads the body, and keeps the connection open."""

    def __init__(self) -> None:
        super().__init__(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.done = threading.Event()

    def _converse(self, conn: socket.socket, answer: bytes) -> None:
        conn.settimeout(2)
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(4096) or b"\r\n\r\n"
        conn.sendall(answer)
        self.done.wait(5)


def test_an_attempt_aborted_while_sending_its_body_does_not_pool_its_connection(gc_off: None) -> None:
    """A POST whose peer answered at once without reading the body: the client sends until the
    deadline shuts its socket down, urllib3 takes that broken pipe for the peer's early answer, reads
    the answer and puts the connection back in the pool, open (a review: 8 of 8 calls). The call is
    a 408 (its body was never sent in full); its connection is closed by the time it returns."""
    server = _AnswersEarly()
    client = dar.setup(endpoint=server.url, metrics=False, timeout=DEADLINE)
    try:
        with client.request(dar.post("upload", body=b"x" * (20 * 1024 * 1024))) as response:
            assert response.status == 408
        assert _tcp(server.port)[0] == 0
    finally:
        server.done.set()
        client.close()
        server.close()


def test_a_send_the_socket_timeout_ends_before_the_deadline_timer_is_a_408(
    gc_off: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket's timeout is set to the time left, and on a loaded machine it may end a blocked send
    before the deadline's timer fires: urllib3 raised ``ProtocolError("Connection aborted.",
    TimeoutError)``, which was a 489, retried and counted against the endpoint, where it is the
    deadline (once in CI, the test above; here with the timer kept from firing)."""
    from django_aio_request.transport.deadline_timer import deadline_timer

    monkeypatch.setattr(deadline_timer, "schedule", lambda when, callback: lambda: None)
    server = _AnswersEarly()
    client = dar.setup(endpoint=server.url, metrics=False, timeout=DEADLINE)
    try:
        with client.request(dar.post("upload", body=b"x" * (20 * 1024 * 1024))) as response:
            assert response.status == 408
    finally:
        server.done.set()
        client.close()
        server.close()


def test_close_closes_the_connections_to_a_proxy_too(
    server: LoopbackServer, gc_off: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls through an HTTP proxy from the environment use the proxy manager's pools: closed as well."""
    server.route("http://service.example.test/ok", lambda h: h.reply(200, b"proxied"))
    monkeypatch.setenv("HTTP_PROXY", server.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = dar.setup(endpoint="http://service.example.test/", metrics=False, timeout=DEADLINE)
    for _ in range(3):
        with client.request(dar.get("ok")) as response:
            assert (response.status, response.read()) == (200, b"proxied")
    assert _tcp(server.port)[0] == 1  # one keep-alive connection to the proxy, pooled
    client.close()
    assert _tcp(server.port)[0] == 0
    assert eventually(lambda: _tcp(server.port) == (0, 0))


POOLS_KEPT = 16  # hosts the transport keeps connection pools for


@pytest.fixture
def other_hosts() -> Iterator[list[LoopbackServer]]:
    """Servers on as many more ports than the transport keeps pools for, each answering ``/ok``."""
    hosts = [LoopbackServer() for _ in range(POOLS_KEPT + 2)]
    for host in hosts:
        host.route("/ok", lambda h: h.reply(200, b"ok"))
    yield hosts
    for host in hosts:
        host.close()


def _redirects_to(hosts: list[LoopbackServer], server: LoopbackServer) -> None:
    for index, host in enumerate(hosts):
        server.route(f"/to/{index}", lambda h, url=host.url: h.reply(302, b"", {"Location": url + "ok"}))  # type: ignore[misc]


def test_a_pool_dropped_for_newer_hosts_closes_its_connections_at_once(
    server: LoopbackServer, other_hosts: list[LoopbackServer], gc_off: None
) -> None:
    _redirects_to(other_hosts, server)
    client = dar.setup(endpoint=server.url, metrics=False, timeout=2.0)
    try:
        with client.request(dar.get("to/0")) as response:
            assert (response.status, response.read()) == (200, b"ok")
        assert _tcp(other_hosts[0].port)[0] == 1  # its connection, pooled
        for index in range(1, len(other_hosts)):  # one pool per host, and the endpoint's: 19 for 16 kept
            with client.request(dar.get(f"to/{index}")) as response:
                assert response.status == 200
        assert _tcp(other_hosts[0].port)[0] == 0  # dropped: closed now, not when the collector runs
        assert _tcp(other_hosts[-1].port)[0] == 1  # the newest pools keep theirs
        with client.request(dar.get("to/0")) as response:  # the host again: a new pool, a new connection
            assert (response.status, response.read()) == (200, b"ok")
    finally:
        client.close()
    assert [_tcp(host.port)[0] for host in other_hosts] == [0] * len(other_hosts)


def test_a_call_on_a_pool_dropped_meanwhile_succeeds_and_its_connection_is_closed(
    server: LoopbackServer, other_hosts: list[LoopbackServer], gc_off: None
) -> None:
    released = threading.Event()

    def slow(handler: Handler) -> None:
        released.wait(5)
        handler.reply(200, b"late")

    other_hosts[0].route("/ok", slow)
    _redirects_to(other_hosts, server)
    client = dar.setup(endpoint=server.url, metrics=False, timeout=5.0)
    outcome: list[tuple[int, bytes]] = []

    def call() -> None:
        with client.request(dar.get("to/0")) as response:
            outcome.append((response.status, response.read()))

    try:
        slow_call = threading.Thread(target=call)
        slow_call.start()
        assert eventually(lambda: _tcp(other_hosts[0].port)[0] == 1)
        for index in range(1, len(other_hosts)):  # its pool is dropped while the call waits
            with client.request(dar.get(f"to/{index}")) as response:
                assert response.status == 200
        released.set()
        slow_call.join(5)
        assert outcome == [(200, b"late")]
        assert _tcp(other_hosts[0].port)[0] == 0  # given back to a dropped pool: closed, not kept
    finally:
        released.set()
        client.close()


def test_many_threads_over_more_hosts_than_pools_all_succeed_and_leave_nothing_open(
    server: LoopbackServer, other_hosts: list[LoopbackServer], gc_off: None
) -> None:
    """16 threads calling 18 hosts in turn for a second: pools are dropped and made again all the time."""
    _redirects_to(other_hosts, server)
    client = dar.setup(endpoint=server.url, metrics=False, timeout=5.0)
    statuses: list[int] = []
    lock = threading.Lock()
    stop = time.monotonic() + 1.0

    def caller(offset: int) -> None:
        turn = offset
        mine = []
        while time.monotonic() < stop:
            with client.request(dar.get(f"to/{turn % len(other_hosts)}")) as response:
                mine.append(response.status)
            turn += 1
        with lock:
            statuses.extend(mine)

    threads = [threading.Thread(target=caller, args=(offset,)) for offset in range(16)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        # Only hosts whose pool is still kept (16 pools, the endpoint's among them) have connections open.
        assert sum(_tcp(host.port)[0] > 0 for host in other_hosts) <= POOLS_KEPT - 1
    finally:
        client.close()
    assert len(statuses) > 50
    assert set(statuses) == {200}
    assert [_tcp(host.port)[0] for host in other_hosts] == [0] * len(other_hosts)
