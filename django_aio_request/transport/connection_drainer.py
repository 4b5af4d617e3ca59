"""Reading the answers nobody waits for, so their connections go back to the pool.

A hedged call's losing attempt gives its connection away with the answer unread
(releasable_socket.py). One thread per process waits on all such connections at once (a
selector, non-blocking reads), finds where each answer ends (answer_end.py), and puts the
connection back in the pool it came from, taking the place of a slot that pool holds empty.
Anything else closes the connection, as a stopped attempt's was closed before:

* an answer whose end is not beyond doubt, or one larger than ``answer_end.MAX_BODY``;
* bytes past the answer's end;
* no answer within ``MAX_WAIT`` seconds of the release, nor by the attempt's deadline;
* a pool that was closed, retired (dropped_pools.py) or collected, or that holds no empty slot;
* more than ``MAX_DRAINING`` connections being drained at once (then the attempt is not released).

The thread starts with the first connection handed over, and ends after ``IDLE_EXIT`` seconds
with nothing to drain, closing its descriptors (a daemon: it never holds the process up).
A forked child closes its copies of the parent's connections and starts its own thread when needed.
"""

import collections
import contextlib
import logging
import os
import selectors
import socket
import threading
import time
import weakref
from typing import Any

from django_aio_request.core.after_fork import renewed_in_forked_child
from django_aio_request.transport.answer_end import AnswerEnd, NotReusable
from django_aio_request.transport.pool_slots import swap_empty_slot

__all__ = ["MAX_DRAINING", "MAX_WAIT", "ConnectionDrainer", "drainer"]

logger = logging.getLogger(__name__)

#: The most connections drained at once; the most seconds a released connection waits for its answer.
MAX_DRAINING = 256
MAX_WAIT = 1.0
#: Seconds with nothing to drain after which the thread ends (and starts again when needed).
IDLE_EXIT = 1.0

_READ_SIZE = 64 * 1024


class _Draining:
    __slots__ = ("data", "end", "expires", "pool", "sock", "timeout")

    def __init__(self, sock: socket.socket, pool: "weakref.ref[Any]", method: str, expires: float, timeout: Any):
        self.sock = sock
        self.pool = pool
        self.end = AnswerEnd(method)
        self.expires = expires
        self.timeout = timeout  # the socket's timeout when it was released, given back with it
        self.data = bytearray()


class ConnectionDrainer:
    """The drainer of this process (:data:`drainer`). ``counts`` says what became of the connections."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._incoming: collections.deque[_Draining] = collections.deque()
        self._draining = 0  # handed over and not yet pooled or closed
        self._thread: threading.Thread | None = None
        self._wake: int | None = None
        self._waiting: dict[int, _Draining] = {}  # the thread's: by descriptor, registered with its selector
        self._selector: selectors.BaseSelector | None = None  # the thread's
        #: "pooled", "closed" (its answer's end in doubt, too large, bytes past it, the peer closed),
        #: "expired", "no slot" (the pool closed, retired or full): connections that ended so.
        self.counts: collections.Counter[str] = collections.Counter()
        _renewed(self)

    def has_room(self) -> bool:
        return self._draining < MAX_DRAINING

    def take(self, sock: socket.socket, pool: "weakref.ref[Any]", method: str, expires: float) -> None:
        """Drain ``sock`` (now the drainer's) and pool it in ``pool``; close it past ``expires``."""
        item = _Draining(sock, pool, method, min(expires, time.monotonic() + MAX_WAIT), sock.gettimeout())
        with self._lock:
            if self._draining >= MAX_DRAINING:
                self._end(item, "no room")
                return
            if self._thread is None:
                try:
                    self._wake = os.eventfd(0, os.EFD_CLOEXEC)
                    thread = threading.Thread(target=self._run, name="aio-request-drainer", daemon=True)
                    thread.start()
                except (OSError, RuntimeError):  # out of descriptors, or the interpreter is exiting
                    if self._wake is not None:
                        os.close(self._wake)
                        self._wake = None
                    self._end(item, "no room")
                    return
                self._thread = thread
            self._draining += 1
            self._incoming.append(item)
            os.eventfd_write(self._wake, 1)  # type: ignore[arg-type]

    def _run(self) -> None:
        wake = self._wake
        assert wake is not None
        with selectors.DefaultSelector() as selector:
            self._selector = selector  # a forked child closes its copy (_after_fork_in_child)
            selector.register(wake, selectors.EVENT_READ)
            waiting = self._waiting
            while True:
                timeout = IDLE_EXIT
                if waiting:
                    timeout = max(0.0, min(item.expires for item in waiting.values()) - time.monotonic())
                events = selector.select(timeout)
                if not events and not waiting and self._stopped_idle(selector, wake):
                    return
                for key, _ in events:
                    if key.fd == wake:
                        os.eventfd_read(wake)
                        self._admit(selector, waiting)
                        continue
                    item = waiting[key.fd]
                    try:
                        outcome = self._read(item)
                    except Exception:  # a defect here must not stop the thread: the connection is closed
                        logger.exception("the connection drainer failed to read an answer")
                        outcome = "closed"
                    if outcome is not None:
                        del waiting[key.fd]
                        selector.unregister(key.fd)
                        self._finish(item, outcome)
                now = time.monotonic()
                for fd, item in list(waiting.items()):
                    if item.expires <= now:
                        del waiting[fd]
                        selector.unregister(fd)
                        self._finish(item, "expired")

    def _stopped_idle(self, selector: selectors.BaseSelector, wake: int) -> bool:
        """Whether the thread, with nothing to drain for ``IDLE_EXIT``, ends (the next take starts
        another): a process that stopped hedging keeps no thread, eventfd or epoll descriptor."""
        with self._lock:
            if self._incoming or self._wake != wake:
                return False
            selector.unregister(wake)
            os.close(wake)
            self._wake = None
            self._thread = None
            self._selector = None  # closed by the thread on its way out
            return True

    def _admit(self, selector: selectors.BaseSelector, waiting: dict[int, _Draining]) -> None:
        while True:
            with self._lock:
                if not self._incoming:
                    return
                item = self._incoming.popleft()
            try:
                item.sock.setblocking(False)
                fd = item.sock.fileno()
                selector.register(fd, selectors.EVENT_READ)
            except (OSError, ValueError):
                self._finish(item, "closed")
                continue
            waiting[fd] = item

    def _read(self, item: _Draining) -> str | None:
        """Read what arrived: None while the answer goes on, else what to do with the connection."""
        try:
            chunk = item.sock.recv(_READ_SIZE)
        except BlockingIOError:
            return None
        except OSError:
            return "closed"
        if not chunk:
            return "closed"  # the peer closed it: no answer, or one ended by the connection's end
        item.data += chunk
        try:
            end = item.end.feed(item.data)
        except NotReusable:
            return "closed"
        if end is None:
            return None
        return "pooled" if end == len(item.data) else "closed"

    def _finish(self, item: _Draining, outcome: str) -> None:
        if outcome == "pooled":
            pool = item.pool()
            try:
                item.sock.settimeout(item.timeout)
                if pool is None or not _into_pool(pool, item.sock):
                    outcome = "no slot"
            except Exception:  # as in _run: closed, and said
                logger.exception("the connection drainer failed to pool a connection")
                outcome = "closed"
        with self._lock:
            self._draining -= 1
            self._end(item, outcome)

    def _end(self, item: _Draining, outcome: str) -> None:
        self.counts[outcome] += 1
        if outcome != "pooled":
            with contextlib.suppress(OSError):
                item.sock.close()

    def _after_fork_in_child(self) -> None:
        """The parent's connections are the parent's: the child closes its copies (close, never
        shutdown, which would end the parent's connection too) and drains its own from scratch."""
        self._lock = threading.Lock()
        for item in self._incoming:
            with contextlib.suppress(OSError):
                item.sock.close()
        self._incoming.clear()
        for item in self._waiting.values():
            with contextlib.suppress(OSError):
                item.sock.close()
        self._waiting = {}
        if self._selector is not None:  # the parent's thread's epoll descriptor, copied by the fork
            with contextlib.suppress(OSError):
                self._selector.close()
            self._selector = None
        self._draining = 0
        self._thread = None
        if self._wake is not None:
            with contextlib.suppress(OSError):
                os.close(self._wake)
            self._wake = None


_renewed = renewed_in_forked_child(ConnectionDrainer._after_fork_in_child)


def _into_pool(pool: Any, sock: socket.socket) -> bool:
    """Put a connection around ``sock`` in ``pool`` in place of one of its empty slots (None, or a
    connection with no socket); False if it holds none, or is closed or retired."""
    waiting = pool.pool
    if waiting is None or getattr(pool, "_retired", False):
        return False
    conn = pool.ConnectionCls(host=pool.host, port=pool.port, timeout=pool.timeout.connect_timeout, **pool.conn_kw)
    conn.sock = sock
    conn._aio_request_requests = 1  # it carried one: a stale end of it is a StaleConnection
    conn._aio_request_pool = weakref.ref(pool)
    return swap_empty_slot(waiting, conn)


#: This process's drainer.
drainer = ConnectionDrainer()
