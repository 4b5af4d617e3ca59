"""Name resolution bounded by the attempt's deadline.

``getaddrinfo()`` blocks in the C library and nothing can interrupt it: with a name server that
does not answer, it takes the resolver's own timeout (5 s per try by default, several tries), far
past any deadline. So lookups run on a few daemon threads here, and an attempt waits for its
answer only until its deadline or its abort; a lookup it gave up on finishes on its thread.

One lookup of a (host, family) in flight serves every attempt that asks for it meanwhile, whatever
port it connects to, so a name server that hangs costs one thread per name, not one per call (keyed
by the port too, a downstream redirecting to one hanging name with a new port each time took a
thread per port, and all 32 after about 40 calls: a review). At most
:data:`MAX_THREADS` threads look names up at once; a lookup running for more than
:data:`STUCK_AFTER` does not count (its name server hangs), up to :data:`MOST_THREADS` threads in all:
eight names whose lookups hung held every thread, and every other name, ``localhost`` from
/etc/hosts included, waited for them past its deadline. Further names wait for a free thread,
within their deadlines; a queued lookup every asker gave up on is dropped, not run.
A lookup older than :data:`SHARE_FOR` is not joined any more but asked again: one stuck in the C
library for good (seen in a child forked while its parent's lookups hung) must not take its name
down with it. Answers are not cached: each new connection asks again, as ``urllib3`` does.
"""

import copy
import os
import queue
import socket
import threading
import time
from typing import Protocol

from django_aio_request.transport.deadline_timer import deadline_timer

MAX_THREADS = 8
#: Seconds after which a lookup in progress no longer counts against MAX_THREADS.
STUCK_AFTER = 1.0
#: Threads in all, stuck ones included.
MOST_THREADS = 32
#: Seconds a lookup in flight is shared with new attempts; glibc gives up on a silent name server
#: after 5 s per try by default, so a lookup older than this is most likely stuck.
SHARE_FOR = 10.0

_Key = tuple[str, int]  # host, address family


class Waiter(Protocol):
    """What an attempt waits with: :class:`~django_aio_request.transport.attempt_sockets.AttemptSockets`."""

    def wait(self, event: threading.Event) -> None:
        """Block until ``event`` is set, the deadline passes or the attempt is aborted."""


class ResolutionUnfinished(Exception):
    """The attempt's deadline passed, or it was aborted, before the name was resolved."""


class _Lookup:
    __slots__ = ("addresses", "error", "finished", "started", "taken", "waiters")

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.addresses: list[str] = []
        self.error: Exception | None = None
        self.finished = False
        self.taken = False  # a thread runs it
        self.waiters: list[threading.Event] = []


class Resolver:
    def __init__(self, max_threads: int = MAX_THREADS, share_for: float = SHARE_FOR) -> None:
        self._max_threads = max_threads
        self._share_for = share_for
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        # Also after fork(): the parent's threads, and the attempts waiting on them, are not in the child.
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[_Key, _Lookup]] = queue.SimpleQueue()
        self._in_flight: dict[_Key, _Lookup] = {}
        self._threads = 0
        self._idle = 0  # threads waiting for a lookup
        self._starting = 0  # threads started that have not taken their first lookup: idle ones to come
        self._queued = 0  # lookups no thread has taken yet
        self._running: dict[int, float] = {}  # thread ident: when its lookup started
        self._recheck_due = False  # a look for stuck threads is scheduled

    def resolve(self, host: str, family: int, waiter: Waiter) -> list[str]:
        """The addresses of ``host``, in ``getaddrinfo()`` order.

        Raises ``socket.gaierror`` (and whatever else ``getaddrinfo()`` raised) if the lookup
        failed, and :class:`ResolutionUnfinished` if the waiter's deadline or abort came first.
        """
        key = (host, family)
        woken = threading.Event()
        with self._lock:
            lookup = self._in_flight.get(key)
            if lookup is None or time.monotonic() - lookup.started > self._share_for:
                lookup = self._in_flight[key] = _Lookup()
                self._queue.put((key, lookup))
                self._queued += 1
            lookup.waiters.append(woken)
            # Queued (a new lookup, or one its earlier askers may all have given up on, when the look
            # for stuck threads found nobody waiting for it): a thread, if there is room. Without
            # asking again, a name whose first asker gave up in the queue waited for a new name to
            # come, or for SHARE_FOR (a review).
            if not lookup.taken:
                try:
                    self._start_thread_if_room()
                except BaseException:  # no thread could be started (a pids limit): this asker is gone
                    lookup.waiters.remove(woken)
                    raise
        waiter.wait(woken)
        with self._lock:
            if not lookup.finished:
                lookup.waiters.remove(woken)
                raise ResolutionUnfinished(host)
        if lookup.error is not None:
            # A copy: one exception object raised in several threads at once would mix their tracebacks.
            raise copy.copy(lookup.error).with_traceback(None)
        return lookup.addresses

    def _start_thread_if_room(self) -> None:
        """With the lock held: a thread for a queued lookup if no idle one will take it and the
        bounds allow; else, if only stuck lookups hold the threads back, look again once they count
        as stuck."""
        waited_for = sum(1 for lookup in self._in_flight.values() if lookup.waiters and not lookup.taken)
        # (queued lookups nobody waits for any more take no thread; a thread just started takes one)
        if waited_for <= self._idle + self._starting:
            return
        if self._threads < self._max_threads:
            self._start_thread()
            return
        if self._threads >= MOST_THREADS:
            return
        now = time.monotonic()
        stuck = sum(1 for started in self._running.values() if now - started > STUCK_AFTER)
        if self._threads - stuck < self._max_threads:
            self._start_thread()
        elif not self._recheck_due:
            due = min(self._running.values(), default=now) + STUCK_AFTER + 0.01
            deadline_timer.schedule(max(due, now + 0.01), self._recheck)
            self._recheck_due = True  # once scheduled: set before a schedule() that raised, it stayed set

    def _recheck(self) -> None:
        """On the deadline timer's thread: the lock is held only for a few comparisons."""
        with self._lock:
            self._recheck_due = False
            self._start_thread_if_room()

    def _start_thread(self) -> None:
        self._threads += 1
        self._starting += 1
        try:
            threading.Thread(target=self._work, name="django-aio-request-resolver", daemon=True).start()
        except BaseException:  # counted, it would be waited for as an idle thread to come, for ever
            self._threads -= 1
            self._starting -= 1
            raise

    def _work(self) -> None:
        starting = True
        while True:
            with self._lock:
                if starting:  # from a thread to come to an idle one in one step: no joiner sees neither
                    self._starting -= 1
                    starting = False
                self._idle += 1
            key, lookup = self._queue.get()
            me = threading.get_ident()
            with self._lock:
                self._idle -= 1
                self._queued -= 1
                if not lookup.waiters:
                    # Every attempt that asked gave up: not worth a thread that may hang on it (a
                    # name server that does not answer) while other names wait behind it.
                    lookup.finished = True
                    if self._in_flight.get(key) is lookup:
                        del self._in_flight[key]
                    continue
                self._running[me] = time.monotonic()
                lookup.taken = True
            try:
                host, family = key
                found = socket.getaddrinfo(host, None, family, socket.SOCK_STREAM)  # addresses only
                lookup.addresses = list(dict.fromkeys(str(sockaddr[0]) for *_, sockaddr in found))
            except Exception as error:  # handed to the waiting attempts, whatever it is
                lookup.error = error
            finally:
                with self._lock:
                    del self._running[me]
                    lookup.finished = True
                    if self._in_flight.get(key) is lookup:  # not replaced as stale meanwhile
                        del self._in_flight[key]
                    for woken in lookup.waiters:
                        woken.set()


resolver = Resolver()
