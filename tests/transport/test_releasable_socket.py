"""A read of an answer that a stop releases (gives its connection away) rather than shuts down, on a
real socket pair: when a release is taken, and what the read does then."""

import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from django_aio_request.transport import releasable_socket
from django_aio_request.transport.releasable_socket import Arm, ReleasableSocket, Released


class Owner:
    """What an attempt (``AttemptSockets``) gives the arm: its lock, its first hedge's time, and
    where a released connection goes (here: a list)."""

    def __init__(self, release_after: float) -> None:
        self._lock = threading.Lock()
        self.release_after: float | None = release_after
        self.handed: list[ReleasableSocket] = []

    def hand_over(self, conn: Any, sock: ReleasableSocket) -> None:
        self.handed.append(sock)


@pytest.fixture
def pair() -> Iterator[tuple[ReleasableSocket, socket.socket]]:
    mine, peer = socket.socketpair()
    reader = ReleasableSocket(mine.family, mine.type, mine.proto, fileno=mine.detach())
    reader.settimeout(5.0)
    yield reader, peer
    reader.close()
    peer.close()


def armed(reader: ReleasableSocket, release_after: float) -> tuple[Arm, Owner]:
    owner = Owner(release_after)
    arm = reader.arm = Arm(owner, conn=None)
    return arm, owner


def release(arm: Arm, owner: Owner) -> bool:
    with owner._lock:
        return arm.release()


def test_a_read_answered_before_the_first_hedge_s_time_reads_as_any_read(
    pair: tuple[ReleasableSocket, socket.socket],
) -> None:
    reader, peer = pair
    arm, owner = armed(reader, time.monotonic() + 5.0)
    peer.sendall(b"answer")
    buffer = bytearray(16)
    assert reader.recv_into(buffer) == 6
    assert reader.arm is None  # reading its answer: never released from now on
    assert not release(arm, owner)
    assert reader.gettimeout() == 5.0  # the blind wait's timeout undone


def test_a_stop_before_the_first_hedge_s_time_is_not_a_release(pair: tuple[ReleasableSocket, socket.socket]) -> None:
    """Nothing can win over the attempt yet (an async caller went away, say): the socket is shut
    down, as before, since the read waits blind until then and nothing would wake it."""
    reader, _ = pair
    arm, owner = armed(reader, time.monotonic() + 5.0)
    assert not release(arm, owner)


def test_a_listening_read_released_gives_its_connection_away_at_once(
    pair: tuple[ReleasableSocket, socket.socket],
) -> None:
    reader, _ = pair
    arm, owner = armed(reader, time.monotonic())  # past the first hedge's time: it listens
    raised: list[BaseException] = []

    def read() -> None:
        try:
            reader.recv_into(bytearray(16))
        except BaseException as error:  # the test looks at what it was
            raised.append(error)

    thread = threading.Thread(target=read)
    thread.start()
    end = time.monotonic() + 2.0
    while arm.wake is None and time.monotonic() < end:  # listening: its eventfd made
        time.sleep(0.001)
    released_at = time.monotonic()
    assert release(arm, owner)
    thread.join(2.0)
    assert time.monotonic() - released_at < 0.1
    assert [type(error) for error in raised] == [Released]
    assert owner.handed == [reader]
    assert arm.wake is None  # its eventfd closed
    assert releasable_socket._listening == set()


def test_a_read_released_while_still_waiting_blind_gives_its_connection_away_when_it_wakes(
    pair: tuple[ReleasableSocket, socket.socket],
) -> None:
    """Past the first hedge's time, before the read's thread got the CPU to listen: released all the
    same (shut down, the loser lost its connection; under a loaded CI, often enough to fail tests)."""
    reader, _ = pair
    arm, owner = armed(reader, time.monotonic() - 0.001)
    assert release(arm, owner)  # the read has not started listening yet
    with pytest.raises(Released):
        reader.recv_into(bytearray(16))
    assert owner.handed == [reader]


def test_an_answer_that_comes_in_the_blind_wait_of_a_released_read_ends_the_read(
    pair: tuple[ReleasableSocket, socket.socket],
) -> None:
    """Released as its wait ended, the read got its answer's first bytes instead of listening: it
    stops there, its socket shut down, rather than read on while the caller has its answer."""
    reader, peer = pair
    arm, owner = armed(reader, time.monotonic() + 5.0)
    arm.state = releasable_socket._RELEASED  # what release() sets once the wait's end has come
    peer.sendall(b"answer")
    with pytest.raises(ConnectionAbortedError):
        reader.recv_into(bytearray(16))
    assert owner.handed == []
    peer.settimeout(1.0)
    assert peer.recv(16) == b""  # shut down: the peer sees the connection end


def test_a_read_whose_timeout_ends_before_the_first_hedge_s_time_still_sees_a_release(
    pair: tuple[ReleasableSocket, socket.socket],
) -> None:
    """Such a read never listens; released as its thread lost the CPU past the first hedge's time, it
    overwrote the release and waited for its whole timeout, stopped by nothing (a review)."""
    reader, _ = pair
    reader.settimeout(0.2)
    arm, owner = armed(reader, time.monotonic() + 5.0)
    arm.state = releasable_socket._RELEASED  # what release() sets once that time has come
    started = time.monotonic()
    with pytest.raises(Released):
        reader.recv_into(bytearray(16))
    assert time.monotonic() - started < 0.1
    assert owner.handed == [reader]


def test_a_read_with_no_eventfd_to_listen_on_is_not_released_but_shut_down(
    pair: tuple[ReleasableSocket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of descriptors, the read waits as any read: a release would wake nothing, so the stop
    must shut the socket down."""
    reader, _ = pair

    def no_eventfd(*args: int) -> int:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(os, "eventfd", no_eventfd)
    arm, owner = armed(reader, time.monotonic())
    got: list[int] = []
    thread = threading.Thread(target=lambda: got.append(reader.recv_into(bytearray(16))))
    thread.start()
    end = time.monotonic() + 2.0
    while reader.arm is not None and time.monotonic() < end:
        time.sleep(0.001)
    assert not release(arm, owner)
    reader.shutdown(socket.SHUT_RDWR)  # what the stop does then
    thread.join(2.0)
    assert got == [0]  # woken, at the connection's end
    assert owner.handed == []
