"""A socket whose blocked read of an answer can be woken without ending the connection.

An attempt a hedged call no longer needs was stopped by shutting its socket down: the only way to
wake a thread blocked in ``recv``. The server then wrote its answer to a closed connection, and the
next call needed a new one: together 0.9 ms of the server's CPU per hedge that won
(benchmarks/billing_connections.py), where the answer itself cost 0.68 ms.

Here a released read gives the connection away instead: the attempt's thread, told by an eventfd,
stops waiting, takes the socket off its connection and hands it to the connection drainer
(connection_drainer.py), which reads the answer when it comes and pools the connection.

A read is released only while no byte of its answer was read, its request sent: while it *listens*
(waits in ``poll`` on the socket and the eventfd), or while it still waits blind past
``release_after``. Until ``release_after`` (the call's first hedge's time, before which nothing can
win over the attempt) it waits in the socket's own ``recv``, as any read: a call answered before its
hedge was due pays no ``poll`` and no eventfd. An abort before that time, or one that finds the read
reading its answer or done, shuts the socket down, as before.
"""

import contextlib
import math
import os
import select
import socket
import threading
import time
from typing import Any, NoReturn, Protocol

__all__ = ["CAN_RELEASE", "Arm", "ReleasableSocket", "Released"]

#: eventfd and poll: Linux. Elsewhere attempts are stopped by shutting their sockets down, as before.
CAN_RELEASE = hasattr(os, "eventfd") and hasattr(select, "poll")

_recv_into = socket.socket.recv_into

_BLIND, _LISTENING, _RELEASED, _READING = range(4)

# The eventfds of the reads listening now, in any thread: a forked child closes its copies (the
# threads that would close them are not in it).
_listening: set[int] = set()


def _close_copies_in_child() -> None:
    for wake in list(_listening):
        with contextlib.suppress(OSError):
            os.close(wake)
    _listening.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_copies_in_child)


class Released(ConnectionAbortedError):
    """The attempt was stopped and its connection, its answer unread, given to the drainer."""


class _Owner(Protocol):
    """The attempt that armed the read (``AttemptSockets``)."""

    _lock: threading.Lock
    release_after: float | None

    def hand_over(self, conn: Any, sock: "ReleasableSocket") -> None: ...


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class ReleasableSocket(socket.socket):
    """A plain socket whose :attr:`arm`, while set, makes its reads releasable (:class:`Arm`)."""

    __slots__ = ("arm",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arm: Arm | None = None

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        arm = self.arm
        if arm is None:
            return _recv_into(self, buffer, nbytes, flags)
        return arm.receive(self, buffer, nbytes, flags)


class Arm:
    """One attempt's claim on the read of its answer: where that read is (``state``), and the
    eventfd that wakes it while it listens. Its state changes under the attempt's lock."""

    __slots__ = ("conn", "owner", "state", "wake")

    def __init__(self, owner: _Owner, conn: Any) -> None:
        self.owner = owner
        self.conn = conn
        self.state = _BLIND
        self.wake: int | None = None

    def release(self) -> bool:
        """(Holding the attempt's lock.) Have the read give its connection away; False when it
        cannot, and the socket must be shut down instead.

        A read still waiting blind past ``release_after`` is released too: its wait ends at that
        time, and it finds the release as it goes to listen. Shut down instead, a loser whose
        thread had not yet been given the CPU to start listening lost its connection: under a
        loaded CI, often enough to fail the drainer's tests."""
        if self.state == _LISTENING and self.wake is not None:
            self.state = _RELEASED
            os.eventfd_write(self.wake, 1)
            return True
        if self.state == _BLIND and time.monotonic() >= (self.owner.release_after or 0.0):
            self.state = _RELEASED
            return True
        return False

    def receive(self, sock: ReleasableSocket, buffer: Any, nbytes: int, flags: int) -> int:
        timeout = sock.gettimeout()
        began = time.monotonic()
        blind = (self.owner.release_after or 0.0) - began
        if blind > 0:
            if timeout is not None and timeout <= blind:
                self._read_on(sock)  # the read's own timeout comes first: it never listens
                return _recv_into(sock, buffer, nbytes, flags)
            sock.settimeout(blind)
            try:
                received = _recv_into(sock, buffer, nbytes, flags)
            except TimeoutError:
                received = None
            finally:
                sock.settimeout(timeout)
            if received is not None:
                if self._start_reading(sock):  # released as the answer's first bytes came
                    _shut(sock)
                    raise ConnectionAbortedError("the attempt was stopped as its answer came")
                return received
        if not self._listen():  # no eventfd to be had: read as any read (or handed over, released)
            self._read_on(sock)
            return _recv_into(sock, buffer, nbytes, flags)
        try:
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            poller.register(self.wake, select.POLLIN)  # type: ignore[arg-type]
            left = None if timeout is None else max(0.0, timeout - (time.monotonic() - began))
            ready = poller.poll(None if left is None else math.ceil(left * 1000))
        finally:
            released = self._stop_listening()
        sock.arm = None
        if released:
            self._give_away(sock)
        if not ready:
            raise TimeoutError("timed out")
        return _recv_into(sock, buffer, nbytes, flags)

    @property
    def released(self) -> bool:
        """(Holding the attempt's lock.) Whether a stop released the read, which has not yet seen it."""
        return self.state == _RELEASED

    def _read_on(self, sock: ReleasableSocket) -> None:
        """Read as any read from now on, never released; but a release that came meanwhile (its
        thread losing the CPU past ``release_after``) hands the connection over here: overwritten,
        the read waited for its whole timeout, stopped by nothing (a review)."""
        if self._start_reading(sock):
            self._give_away(sock)

    def _start_reading(self, sock: ReleasableSocket) -> bool:
        """From now on the read is never released; whether a release came before."""
        sock.arm = None
        with self.owner._lock:
            released = self.state == _RELEASED
            self.state = _READING
        return released

    def _give_away(self, sock: ReleasableSocket) -> NoReturn:
        """Hand the connection, its answer unread, to the drainer, and end the read."""
        self.owner.hand_over(self.conn, sock)
        raise Released("the attempt was stopped; its connection went to the drainer")

    def _listen(self) -> bool:
        """Start listening: False if it cannot (released meanwhile, or no eventfd to be had)."""
        with self.owner._lock:
            if self.state != _BLIND:
                return False
            try:
                self.wake = os.eventfd(0, os.EFD_CLOEXEC)
            except OSError:  # out of descriptors: read as any read (_read_on), shut down if stopped
                return False
            _listening.add(self.wake)
            self.state = _LISTENING
            return True

    def _stop_listening(self) -> bool:
        """Whether the read was released; from now on it never is."""
        with self.owner._lock:
            released = self.state == _RELEASED
            self.state = _READING
            wake, self.wake = self.wake, None
        if wake is not None:
            _listening.discard(wake)
            os.close(wake)  # no release writes to it now: that needs _LISTENING, under the lock
        return released
