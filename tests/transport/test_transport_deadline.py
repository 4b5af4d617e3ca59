"""RequestsTransport bounds the whole attempt by its deadline on the wall clock, aborts on cancellation,
and leaves its pool and threads in order afterwards. All against a real server on loopback."""

import concurrent.futures
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from django_aio_request import Cancellation, Client, Deadline, RequestsTransport, get, setup, single_attempt_strategy
from django_aio_request.core.response import UnreachedResponse, UnsentResponse
from django_aio_request.transport.deadline_timer import deadline_timer
from tests.support.loopback import Handler, LoopbackServer, full_backlog, trickle
from tests.support.thread_limits import first_start_fails

#: The spec's hard bound: a trickling server may hold the caller at most this long past the deadline.
OVERSHOOT = 0.05
DEADLINE = 0.3
ROUNDS = 3


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Set at the end of the test, so routes waiting on it let their server threads finish."""
    event = threading.Event()
    yield event
    event.set()


def hold(release: threading.Event) -> Callable[[Handler], None]:
    """A route that sends nothing until ``release`` is set (at most 10 s), then answers 200."""

    def handle(handler: Handler) -> None:
        release.wait(10)
        handler.reply(200, b"late")

    return handle


def trickle_raw(data: bytes, interval: float) -> Callable[[Handler], None]:
    """A route writing ``data`` (status line and headers included) one byte every ``interval`` seconds."""

    def handle(handler: Handler) -> None:
        handler.close_connection = True
        for i in range(len(data)):
            handler.wfile.write(data[i : i + 1])
            handler.wfile.flush()
            time.sleep(interval)

    return handle


def timed(transport: RequestsTransport, server: LoopbackServer, path: str, deadline: float, **kwargs: object):
    started = time.monotonic()
    response = transport.send(server.url, get(path), deadline, **kwargs)  # type: ignore[arg-type]
    return response, time.monotonic() - started


def delayed(seconds: float, body: bytes, ports: list[int] | None = None) -> Callable[[Handler], None]:
    """A route answering 200 ``body`` after ``seconds``, noting the client's port in ``ports``."""

    def handle(handler: Handler) -> None:
        if ports is not None:
            ports.append(handler.client_address[1])
        time.sleep(seconds)
        handler.reply(200, body)

    return handle


def ports_route(ports: list[int]) -> Callable[[Handler], None]:
    def handle(handler: Handler) -> None:
        ports.append(handler.client_address[1])
        handler.reply(200, b"ok")

    return handle


# --- the deadline bounds the whole attempt ------------------------------------------------------------------


def test_trickling_body_is_cut_at_the_deadline(server: LoopbackServer, transport: RequestsTransport) -> None:
    # 200 bytes, one every 20 ms: 4 s in all, while each single read waits only 20 ms.
    server.route("/trickle", lambda h: trickle(h, size=200, interval=0.02))
    for _ in range(ROUNDS):
        response, elapsed = timed(transport, server, "trickle", DEADLINE)
        assert response.status == 408
        assert response.read() == b""
        assert DEADLINE - 0.01 <= elapsed <= DEADLINE + OVERSHOOT
        assert response.elapsed <= elapsed


def test_trickling_headers_are_cut_at_the_deadline(server: LoopbackServer, transport: RequestsTransport) -> None:
    head = b"HTTP/1.1 200 OK\r\nX-Padding: " + b"p" * 300 + b"\r\nContent-Length: 2\r\n\r\nok"
    server.route("/trickle-headers", trickle_raw(head, interval=0.01))
    for _ in range(ROUNDS):
        response, elapsed = timed(transport, server, "trickle-headers", DEADLINE)
        # What was read before the abort is no answer: not a 200 with half its headers and no body.
        assert response.status == 408
        assert dict(response.headers) == {}
        assert DEADLINE - 0.01 <= elapsed <= DEADLINE + OVERSHOOT


def test_trickling_body_without_content_length_is_not_taken_as_complete(
    server: LoopbackServer, transport: RequestsTransport
) -> None:
    # Without Content-Length the body ends when the connection closes: the abort must not pass for that.
    head = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"b" * 200
    server.route("/until-close", trickle_raw(head, interval=0.01))
    for _ in range(ROUNDS):
        response, elapsed = timed(transport, server, "until-close", DEADLINE)
        assert response.status == 408
        assert response.read() == b""
        assert elapsed <= DEADLINE + OVERSHOOT


def test_slow_headers_beyond_the_deadline_are_408_near_it(
    server: LoopbackServer, transport: RequestsTransport, release: threading.Event
) -> None:
    server.route("/hang", hold(release))
    response, elapsed = timed(transport, server, "hang", DEADLINE)
    assert response.status == 408
    assert DEADLINE - 0.01 <= elapsed <= DEADLINE + 0.1
    assert len(server.received("/hang")) == 1  # it was sent, the answer was late


def test_stalled_body_is_408_even_when_the_socket_timeout_beats_the_watchdog(
    server: LoopbackServer, transport: RequestsTransport, release: threading.Event
) -> None:
    """On a loaded machine the deadline timer thread can run late; the socket timeout (the time left) then
    ends the body read first. That is still the deadline (408), not a network error (489)."""

    def stall_body(handler: Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "10")
        handler.end_headers()
        handler.wfile.write(b"x")
        handler.wfile.flush()
        release.wait(10)

    server.route("/stall", stall_body)
    watchdog_free = threading.Event()

    def busy() -> None:
        watchdog_free.wait(1.0)

    # Keep the (real, shared) deadline timer thread busy across the attempt's deadline.
    deadline_timer.schedule(time.monotonic() + 0.01, busy)
    try:
        response, elapsed = timed(transport, server, "stall", 0.2)
    finally:
        watchdog_free.set()
    assert response.status == 408
    assert elapsed <= 0.2 + 0.1


def test_redirects_share_one_deadline(server: LoopbackServer, transport: RequestsTransport) -> None:
    def hop(handler: Handler) -> None:
        n = int(handler.path.rsplit("/", 1)[1])
        time.sleep(0.12)
        handler.reply(302, b"", {"Location": f"/hop/{n + 1}"})

    server.route("/hop/*", hop)
    response, elapsed = timed(transport, server, "hop/0", DEADLINE)
    assert response.status == 408  # each hop is quick enough, all of them together are not
    assert elapsed <= DEADLINE + 0.1
    assert 2 <= len(server.received()) <= 4


def test_zero_deadline_is_408_without_reaching_the_server(server: LoopbackServer, transport: RequestsTransport) -> None:
    server.route("/ok", lambda h: h.reply(200, b"ok"))
    response, elapsed = timed(transport, server, "ok", 0)
    assert response.status == 408
    assert elapsed < 0.1
    time.sleep(0.05)
    assert server.received() == []


def test_fast_answer_within_the_deadline_is_not_disturbed(server: LoopbackServer, transport: RequestsTransport) -> None:
    server.route("/quick", delayed(0.05, b"in time"))
    for _ in range(ROUNDS):
        response, elapsed = timed(transport, server, "quick", DEADLINE)
        assert (response.status, response.read()) == (200, b"in time")
        assert elapsed < DEADLINE


# --- waiting for a connection slot counts against the deadline ----------------------------------------------


def test_attempt_that_cannot_get_a_slot_before_its_deadline_is_408(
    server: LoopbackServer, release: threading.Event
) -> None:
    server.route("/hang", hold(release))
    server.route("/other", lambda h: h.reply(200, b"ok"))
    transport = RequestsTransport(max_connections=1)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(transport.send, server.url, get("hang"), 5.0)
            _wait_until(lambda: len(server.received("/hang")) == 1)
            response, elapsed = timed(transport, server, "other", 0.2)
            assert response.status == 408
            assert 0.2 - 0.01 <= elapsed <= 0.2 + 0.1
            assert server.received("/other") == []  # it never had a connection to send on
            release.set()
            assert first.result(5).status == 200
        assert transport.send(server.url, get("other"), 1.0).status == 200  # the slot came back
    finally:
        transport.close()


def _threshold_client(url: str, transport: RequestsTransport, threshold: float) -> Client:
    """A client of ``url`` with single attempts whose LOW_TIMEOUT_THRESHOLD is ``threshold``."""
    return setup(
        endpoint=url,
        transport=transport,
        low_timeout_threshold=threshold,
        safe_method_strategy=single_attempt_strategy(),
        retry_budget=None,
        metrics=False,
    )


def _status_and_time(client: Client, path: str, deadline: float) -> tuple[int, float]:
    started = time.monotonic()
    with client.request(get(path), deadline=Deadline.from_timeout(deadline)) as response:
        return response.status, time.monotonic() - started


def test_an_attempt_whose_slot_frees_with_less_than_the_threshold_left_is_not_sent(server: LoopbackServer) -> None:
    """A review: an attempt that waited for one of MAX_CONNECTIONS took the slot freed at its
    deadline's edge and went out with X-Request-Timeout under the threshold, or 0.000 (2 of 10 calls),
    to a peer that then worked for a caller that had given up. It now waits only while at least the
    threshold is left, and gives up then, sending nothing."""
    server.route("/held", delayed(0.3, b"ok"))
    server.route("/other", lambda h: h.reply(200, b"ok"))
    transport = RequestsTransport(max_connections=1)
    client = _threshold_client(server.url, transport, 0.1)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(_status_and_time, client, "held", 5.0)
            _wait_until(lambda: len(server.received("/held")) == 1)
            # The slot frees about 0.3 s from now, with about 0.05 s of these 0.35 s left.
            code, elapsed = _status_and_time(client, "other", 0.35)
            assert first.result(5)[0] == 200
        assert code == 408
        assert server.received("/other") == []
        assert 0.25 - 0.01 <= elapsed <= 0.35  # it gave up with the threshold left, not at the deadline
        assert _status_and_time(client, "other", 1.0)[0] == 200  # the slot came back
    finally:
        client.close()


@pytest.fixture
def late_accepting_port() -> Iterator[tuple[int, list[bytes]]]:
    """A port whose accept queue is full for its first 0.5 s (a connect's SYN is dropped, and sent
    again by the kernel 1 s later), then accepted from: what each connection sent is listed."""
    with full_backlog() as listener:
        yield from _accepting_late(listener)


def _accepting_late(listener: socket.socket) -> Iterator[tuple[int, list[bytes]]]:
    received: list[bytes] = []
    stop = threading.Event()

    def accept() -> None:
        time.sleep(0.5)
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=read, args=(conn,), daemon=True).start()  # the fillers send nothing

    def read(conn: socket.socket) -> None:
        conn.settimeout(1.0)
        with conn, contextlib.suppress(OSError):
            received.append(conn.recv(65536))

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1], received
    stop.set()
    thread.join(5)


def test_an_attempt_connected_with_less_than_the_threshold_left_is_not_sent(
    late_accepting_port: tuple[int, list[bytes]],
) -> None:
    """A review: a connect that took the rest of the time (its SYN sent again after 1 s) went on to
    send a request stamped X-Request-Timeout 0.000849, below the client's threshold (8 of 10 calls
    reached the peer). Connected with less than the threshold left, the attempt writes nothing; the
    time went in connecting, so it is counted as a connect that timed out is (a second review: as
    unsent, the breaker never saw an endpoint this slow to accept)."""
    port, received = late_accepting_port
    client = _threshold_client(f"http://127.0.0.1:{port}/", RequestsTransport(), 0.1)
    try:
        started = time.monotonic()
        with client.request(get("late"), deadline=Deadline.from_timeout(1.05)) as response:
            code, elapsed = response.status, time.monotonic() - started  # connected at about 1.0 s
    finally:
        client.close()
    assert code == 408
    assert isinstance(response, UnreachedResponse)  # what the breaker counts, as for a connect timeout
    assert elapsed <= 1.05 + OVERSHOOT
    time.sleep(0.3)  # the accepting thread reads what the connection carried
    assert elapsed >= 0.95, "the connect did not wait for the kernel's second SYN: the queue was not full"
    print("DEBUG", code, elapsed, received)
    assert not any(received), received  # connections, maybe, and no byte of a request on them


def test_a_redirect_s_next_hop_with_less_than_the_threshold_left_is_a_timeout_of_a_request_sent(
    server: LoopbackServer,
) -> None:
    """The first hop went out, its answer (a redirect) came late, and the next hop had less than the
    threshold left: nothing more is sent, and the attempt is a 408 of a request that was sent (a
    review: taken for one never sent, a slow redirecting endpoint was never counted by the breaker,
    the transport latency or the retry budget)."""

    def slow_redirect(handler: Handler) -> None:
        time.sleep(0.08)
        handler.reply(302, b"", headers={"Location": "/hop"})

    server.route("/redirect", slow_redirect)
    server.route("/hop", lambda h: h.reply(200, b"ok"))
    client = _threshold_client(server.url, RequestsTransport(), 0.05)
    try:
        with client.request(get("redirect"), deadline=Deadline.from_timeout(0.12)) as response:
            code = response.status
    finally:
        client.close()
    assert code == 408
    assert len(server.received("/redirect")) == 1
    assert server.received("/hop") == []
    assert not isinstance(response, UnsentResponse | UnreachedResponse)  # sent: the endpoint was slow


# --- the pool after aborts ----------------------------------------------------------------------------------


def test_pool_still_works_after_a_deadline_abort(
    server: LoopbackServer, transport: RequestsTransport, release: threading.Event
) -> None:
    ports: list[int] = []
    server.route("/hang", hold(release))
    server.route("/ok", ports_route(ports))
    assert transport.send(server.url, get("ok"), 1.0).status == 200
    for _ in range(3):
        assert transport.send(server.url, get("hang"), 0.1).status == 408
        response = transport.send(server.url, get("ok"), 1.0)
        assert (response.status, response.read()) == (200, b"ok")
    assert len(ports) == 4


def test_aborted_connection_is_not_handed_to_the_next_call(
    server: LoopbackServer, transport: RequestsTransport
) -> None:
    ports: list[int] = []

    def record_and_trickle(handler: Handler) -> None:
        ports.append(handler.client_address[1])
        trickle(handler, size=100, interval=0.02)

    server.route("/trickle", record_and_trickle)
    server.route("/ok", ports_route(ports))
    assert transport.send(server.url, get("trickle"), 0.1).status == 408
    assert transport.send(server.url, get("ok"), 1.0).status == 200
    assert transport.send(server.url, get("ok"), 1.0).status == 200
    trickled, first_ok, second_ok = ports
    assert first_ok != trickled  # the half-read connection was dropped ...
    assert second_ok == first_ok  # ... and the new one is kept alive


# --- cancellation -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def cancelled_after(seconds: float) -> Iterator[Cancellation]:
    """A cancellation that another thread cancels ``seconds`` after the block starts."""
    cancellation = Cancellation()
    canceller = threading.Timer(seconds, cancellation.cancel)
    canceller.start()
    try:
        yield cancellation
    finally:
        canceller.join()


def test_cancellation_from_another_thread_aborts_a_blocked_attempt_at_once(
    server: LoopbackServer, transport: RequestsTransport, release: threading.Event
) -> None:
    server.route("/hang", hold(release))
    server.route("/ok", lambda h: h.reply(200, b"ok"))
    with cancelled_after(0.1) as cancellation:
        response, elapsed = timed(transport, server, "hang", 5.0, cancellation=cancellation)
    assert response.status == 499
    # At the cancellation, not at the 5 s deadline (0.29 s seen in a loaded CI run).
    assert 0.1 - 0.01 <= elapsed <= 0.1 + 0.4
    assert transport.send(server.url, get("ok"), 1.0).status == 200


def test_cancellation_aborts_a_trickling_body(server: LoopbackServer, transport: RequestsTransport) -> None:
    server.route("/trickle", lambda h: trickle(h, size=200, interval=0.02))
    with cancelled_after(0.1) as cancellation:
        response, elapsed = timed(transport, server, "trickle", 5.0, cancellation=cancellation)
    assert response.status == 499
    assert elapsed <= 0.1 + 0.4  # at the cancellation, not at the 5 s deadline (0.37 s seen in a loaded CI run)


def test_cancellation_ends_the_wait_for_a_connection_slot(server: LoopbackServer, release: threading.Event) -> None:
    server.route("/hang", hold(release))
    server.route("/other", lambda h: h.reply(200, b"ok"))
    transport = RequestsTransport(max_connections=1)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(transport.send, server.url, get("hang"), 5.0)
            _wait_until(lambda: len(server.received("/hang")) == 1)
            with cancelled_after(0.1) as cancellation:
                response, elapsed = timed(transport, server, "other", 5.0, cancellation=cancellation)
            assert response.status == 499
            assert elapsed <= 0.1 + 0.15
            release.set()
            assert first.result(5).status == 200
        assert server.received("/other") == []
        assert transport.send(server.url, get("other"), 1.0).status == 200  # no slot was lost
    finally:
        transport.close()


def test_already_cancelled_attempt_spends_no_connection(server: LoopbackServer, transport: RequestsTransport) -> None:
    ports: list[int] = []
    server.route("/ok", ports_route(ports))
    assert transport.send(server.url, get("ok"), 1.0).status == 200
    cancellation = Cancellation()
    cancellation.cancel()
    response, elapsed = timed(transport, server, "ok", 5.0, cancellation=cancellation)
    assert response.status == 499
    assert elapsed < 0.1
    # the pooled keep-alive connection was not used up (shut down) by the cancelled attempt
    assert transport.send(server.url, get("ok"), 1.0).status == 200
    assert len(ports) == 2
    assert len(set(ports)) == 1


def test_already_cancelled_attempt_ends_at_once(server: LoopbackServer, transport: RequestsTransport) -> None:
    server.route("/ok", delayed(0.5, b"ok"))
    cancellation = Cancellation()
    cancellation.cancel()
    response, elapsed = timed(transport, server, "ok", 5.0, cancellation=cancellation)
    assert response.status == 499
    assert elapsed < 0.3


def test_cancelling_after_the_attempt_leaves_its_pooled_connection_alone(
    server: LoopbackServer, transport: RequestsTransport
) -> None:
    ports: list[int] = []
    server.route("/ok", ports_route(ports))
    cancellation = Cancellation()
    assert transport.send(server.url, get("ok"), 1.0, cancellation).status == 200
    cancellation.cancel()  # late: the connection is back in the pool, maybe already in another call's hands
    response = transport.send(server.url, get("ok"), 1.0)
    assert (response.status, response.read()) == (200, b"ok")
    assert len(set(ports)) == 1


def test_late_deadline_does_not_hit_a_reused_connection(server: LoopbackServer, transport: RequestsTransport) -> None:
    """A call that ended well before its deadline: when the deadline comes, the next call on the same
    keep-alive connection must not be aborted by it."""
    ports: list[int] = []
    server.route("/ok", ports_route(ports))
    server.route("/slow", delayed(0.6, b"slow", ports))
    # Its deadline passes during the next call (0.3 s: a first call, connect included, on a loaded
    # two-core machine took 0.2 s once).
    assert transport.send(server.url, get("ok"), 0.3).status == 200
    response = transport.send(server.url, get("slow"), 2.0)
    assert (response.status, response.read()) == (200, b"slow")
    assert len(set(ports)) == 1


# --- no threads left behind ---------------------------------------------------------------------------------


def _client_threads() -> int:
    """Threads in this process except the loopback server's own (which finish on their own schedule)."""
    return sum(
        1
        for t in threading.enumerate()
        if not t.name.endswith("(process_request_thread)") and not t.name.startswith("loopback-")
    )


def test_no_thread_is_left_behind_after_aborted_calls(server: LoopbackServer, release: threading.Event) -> None:
    server.route("/hang", hold(release))
    server.route("/trickle", lambda h: trickle(h, size=100, interval=0.01))
    transport = RequestsTransport()
    try:
        transport.send(server.url, get("trickle"), 0.01)  # starts the deadline timer thread, if nothing had yet
        baseline = _client_threads()
        total_baseline = threading.active_count()
        for i in range(50):
            response = transport.send(server.url, get("hang" if i % 2 else "trickle"), 0.02)
            assert response.status == 408
    finally:
        transport.close()
        release.set()
    assert _client_threads() <= baseline
    # and once the server's threads have seen their clients go, the whole process is back where it was
    _wait_until(lambda: threading.active_count() <= total_baseline + 1, timeout=5.0)


def _wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.01)


def test_a_timer_thread_that_could_not_be_started_is_started_at_the_next_schedule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A timer whose thread failed to start (a pids limit) kept the thread as its own, unstarted, and
    no callback of the process ever ran again: hedges, delays, the database bound (a review)."""
    from django_aio_request.transport.deadline_timer import DeadlineTimer

    timer = DeadlineTimer()
    first_start_fails(monkeypatch, "django-aio-request-deadline-timer")
    with pytest.raises(RuntimeError):
        timer.schedule(time.monotonic(), lambda: None)
    fired = threading.Event()
    timer.schedule(time.monotonic() + 0.05, fired.set)
    assert fired.wait(2)
