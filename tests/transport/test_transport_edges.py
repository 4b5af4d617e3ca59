"""Edges of the transport's hard deadline: TLS handshakes, far deadlines, templates without values."""

import threading
import time
from collections.abc import Iterator

import pytest

import django_aio_request as dar
from django_aio_request.core import status
from tests.support.loopback import Handler, LoopbackServer, silent_listener


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a stuck TLS server)."""
    with silent_listener() as port:
        yield port


def test_a_stuck_tls_handshake_ends_by_the_deadline(silent_port: int) -> None:
    transport = dar.RequestsTransport()
    started = time.monotonic()
    response = transport.send(f"https://127.0.0.1:{silent_port}/", dar.get("x"), 0.3)
    elapsed = time.monotonic() - started
    assert response.status == status.TIMEOUT
    assert elapsed < 0.3 + 0.05


def test_cancelling_an_attempt_stuck_in_its_tls_handshake_stops_it_at_once(silent_port: int) -> None:
    transport = dar.RequestsTransport()
    cancellation = dar.Cancellation()
    threading.Timer(0.1, cancellation.cancel).start()
    started = time.monotonic()
    response = transport.send(f"https://127.0.0.1:{silent_port}/", dar.get("x"), 5.0, cancellation)
    elapsed = time.monotonic() - started
    assert response.status == status.CANCELLED
    # Far from the 5 s the handshake would wait; a loaded machine (load average 7.6) took over 0.2 s.
    assert elapsed < 0.1 + 0.5, "the handshake's socket was not reachable by the abort"


def test_a_far_deadline_neither_raises_nor_stops_the_watchdog(server: LoopbackServer) -> None:
    server.route("/ok", lambda h: h.reply(200, b"ok"))

    def late(handler: Handler) -> None:
        time.sleep(1.0)
        handler.reply(200, b"late")

    server.route("/slow", late)
    client = dar.setup(endpoint=server.url, safe_method_strategy=dar.single_attempt_strategy())
    try:
        for _ in range(3):
            with client.request(dar.get("ok"), deadline=dar.Deadline.from_timeout(1e10)) as response:
                assert response.status == 200
        # the deadline timer thread still enforces deadlines afterwards
        started = time.monotonic()
        with client.request(dar.get("slow"), deadline=dar.Deadline.from_timeout(0.2)) as response:
            assert response.status == status.TIMEOUT
        assert time.monotonic() - started < 0.2 + 0.05
    finally:
        client.close()


def test_a_placeholder_without_a_value_is_a_clear_error_and_nothing_is_sent(server: LoopbackServer) -> None:
    client = dar.setup(endpoint=server.url)
    try:
        with (
            pytest.raises(ValueError, match=r"request URL 'things/\{id\}/\{part\}' has a placeholder \{part\}"),
            client.request(dar.get("things/{id}/{part}", path_parameters={"id": 1})),
        ):
            pass
    finally:
        client.close()
    assert server.received() == []
