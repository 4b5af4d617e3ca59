"""transport/attempt_sockets.py: an attempt still connecting is aborted at once, on real sockets.

A listener whose accept queue is full drops new SYNs: the connecting side waits in ``connect()``
for the kernel to send its SYN again (about 1 s later, then 3 s, ...). Its socket was registered
with the attempt only once connected, so neither a winning hedge nor a cancellation could end it.
"""

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

import django_aio_request as dar
from django_aio_request.core import status


class FullListener:
    """A listener on 127.0.0.1 whose accept queue is full until :meth:`drain`, then answers ``ok``."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.fillers: list[socket.socket] = []
        for _ in range(3):  # more than the queue holds: the next SYN is dropped
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", self.port))
            self.fillers.append(filler)
        time.sleep(0.05)
        self.requests_at: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def drain(self, after: float) -> None:
        """From ``after`` seconds on, empty the queue and answer every request."""
        self._thread = threading.Thread(target=self._serve, args=(after,), daemon=True)
        self._thread.start()

    def _serve(self, after: float) -> None:
        time.sleep(after)
        for filler in self.fillers:
            filler.close()
        self.listener.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    if conn.recv(4096):
                        self.requests_at.append(time.monotonic())
                        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        for filler in self.fillers:
            filler.close()
        self.listener.close()


@pytest.fixture
def full_listener() -> Iterator[FullListener]:
    listener = FullListener()
    yield listener
    listener.close()


def test_a_hedge_that_wins_while_attempt_0_is_still_connecting_answers_at_once(full_listener: FullListener) -> None:
    strategy = dar.parallel_strategy(attempts_count=2, delays_provider=dar.constant_delays(delay=0.05))
    client = dar.setup(
        endpoint=f"http://127.0.0.1:{full_listener.port}/", safe_method_strategy=strategy, max_workers=2, metrics=False
    )
    try:
        started = time.monotonic()
        full_listener.drain(after=0.03)  # attempt 0's SYN is dropped by then; the hedge's is accepted
        with client.request(dar.get("x"), deadline=dar.Deadline.from_timeout(5.0)) as response:
            elapsed = time.monotonic() - started
            assert (response.status, response.read()) == (200, b"ok")
    finally:
        client.close()
    assert len(full_listener.requests_at) == 1  # the hedge's; attempt 0 never connected
    assert elapsed < 0.5, elapsed  # not at attempt 0's second SYN, about 1 s in


def test_cancelling_an_attempt_that_is_still_connecting_stops_it_at_once(full_listener: FullListener) -> None:
    transport = dar.RequestsTransport()
    cancellation = dar.Cancellation()
    threading.Timer(0.1, cancellation.cancel).start()
    try:
        started = time.monotonic()
        response = transport.send(f"http://127.0.0.1:{full_listener.port}/", dar.get("x"), 5.0, cancellation)
        elapsed = time.monotonic() - started
    finally:
        transport.close()
    assert response.status == status.CANCELLED
    assert elapsed < 0.1 + 0.1, elapsed  # not at the deadline, 5 s


def test_a_connect_that_waits_still_ends_at_the_deadline(full_listener: FullListener) -> None:
    transport = dar.RequestsTransport()
    try:
        started = time.monotonic()
        response = transport.send(f"http://127.0.0.1:{full_listener.port}/", dar.get("x"), 0.3)
        elapsed = time.monotonic() - started
    finally:
        transport.close()
    assert response.status == status.TIMEOUT
    assert elapsed < 0.3 + 0.05, elapsed
