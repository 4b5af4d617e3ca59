"""Observations handed off the request path and recorded in batches by one background thread.

prometheus_client's ``Histogram.observe()`` takes two locks and walks the buckets. Inside a Django
request, where its code and data are cold, that cost about 3 µs: a third of what
``AioRequestMiddleware`` added to a request (and a client call's metrics, about 20 µs of the call).
Here the request thread only appends a tuple to a deque, which is atomic under the GIL and takes
no lock. A daemon thread records the queued items every :data:`INTERVAL` seconds, back to back,
where each costs a fraction of that (see docs/benchmarks.md).

Nothing is dropped:

* the deque is unbounded (the thread records far faster than a Django process can serve);
* ``atexit`` records what is left when the interpreter exits, and so does a ``multiprocessing``
  child forked from this process (a ``Process``, a ``Pool`` or ``ProcessPoolExecutor`` worker),
  which ends with ``os._exit()``, skipping ``atexit``: 0 of 20 calls of four such workers were
  recorded before; a ``Pool`` worker, which ``terminate()`` ends with SIGTERM, records inline;
* a failing record is logged and the next item goes on.

A reader in the same process calls :meth:`DeferredObservations.flush` first and sees every item
added before. A reader in another process (prometheus_client's multiprocess mode, where a scrape
reads the workers' files) lags by at most :data:`INTERVAL`.

A fork never copies a recording half done: see :func:`recording`.
"""

import atexit
import collections
import logging
import multiprocessing.util
import os
import threading
import time
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)

INTERVAL = 0.1  # seconds between two rounds of the recording thread

T = TypeVar("T")

# Held while anything records into prometheus_client: each observation the recording thread
# records, and the few metrics recorded inline (breaker transitions, deadline and budget refusals,
# shedding). prometheus_client's locks (one per process for every value in multiprocess mode, one
# per value without) are not reinitialised in a forked child: a fork while the recording thread
# held one left it held there for ever, and the child hung at its first metric (a breaker
# transition on the calling thread, past the call's deadline) and in its own recording thread.
# The fork takes this lock first, so no recording is under way while it copies the process: the
# fork waits for at most one record (microseconds), never for a whole drain. Reentrant: a record
# may record inline metrics (breaker.py's).
_guard = threading.RLock()


def recording() -> AbstractContextManager[Any]:
    """The lock to hold around a recording into prometheus_client made outside :class:`DeferredObservations`
    (which holds it around each record); taken before any lock of the caller's own."""
    return _guard


def _before_fork() -> None:
    _guard.acquire()


def _after_fork_in_parent() -> None:
    _guard.release()


def _after_fork_in_child() -> None:
    global _guard
    _guard = threading.RLock()  # held by the forking thread in the parent: a new one, free


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


class DeferredObservations(Generic[T]):
    """Queues observations and hands each to ``record`` on a background thread."""

    #: Queue one observation; it is recorded within ``interval`` seconds, or by the next :meth:`flush`.
    #: Until the recording thread runs, a method that starts it; from then on the queue's own
    #: ``append``, so a request pays for no Python call (see docs/benchmarks.md, the middleware).
    add: Callable[[T], None]

    def __init__(
        self, record: Callable[[T], None], *, name: str, interval: float = INTERVAL, fed_by_gc: bool = False
    ) -> None:
        """``fed_by_gc``: ``add`` is called from inside the garbage collector (a weakref callback), on
        a thread that may hold the locks ``record`` takes: never recorded inline (see :func:`_record_inline`)."""
        self._record = record
        self._inline_allowed = not fed_by_gc
        self._name = name
        self._interval = interval
        self._pending: collections.deque[T] = collections.deque()
        self._flush_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.add = self._record_now if _inline and self._inline_allowed else self._add_and_start
        atexit.register(self.flush)
        os.register_at_fork(after_in_child=self._after_fork)
        _all.add(self)

    def _add_and_start(self, observation: T) -> None:
        self._pending.append(observation)
        self._start()

    def _record_now(self, observation: T) -> None:
        """``add`` in a ``multiprocessing.Pool`` worker: recorded on the caller's thread (:func:`_record_inline`)."""
        run_before_recording()
        try:
            with _guard:
                self._record(observation)
        except Exception:
            logger.exception("recording a %s observation failed", self._name)

    def flush(self) -> None:
        """Record everything queued so far; when this returns, every earlier :meth:`add` is recorded."""
        # The lock makes a reader's flush wait for an item the thread has taken but not yet recorded.
        with self._flush_lock:
            pending, record = self._pending, self._record
            while pending:
                observation = pending.popleft()
                try:
                    with _guard:  # per observation: a fork waits for one record, not the drain
                        record(observation)
                except Exception:
                    logger.exception("recording a %s observation failed", self._name)

    def pending(self) -> int:
        """How many observations are queued and not yet recorded."""
        return len(self._pending)

    def _start(self) -> None:
        # Without waiting: whoever holds the lock starts the thread, or found it started, and either
        # way it records what was just queued. So ``add`` may run inside the garbage collector (a
        # weakref callback, metrics/breaker.py) while this thread is in here already.
        if not self._start_lock.acquire(blocking=False):
            return
        try:
            if self._thread is not None:
                return
            thread = threading.Thread(target=self._run, name=f"django-aio-request-{self._name}", daemon=True)
            thread.start()
            self._thread = thread
            self.add = self._pending.append
        finally:
            self._start_lock.release()

    def _run(self) -> None:
        run_before_recording()
        while True:
            time.sleep(self._interval)
            self.flush()
            _run_callbacks(_after_round, "after a recording round")

    def _after_fork(self) -> None:
        # The parent records what it had queued; the child must not record it a second time. The
        # locks may have been held by the parent's thread, which does not exist here.
        self._pending = collections.deque()
        self._flush_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._thread = None
        self.add = self._add_and_start  # the parent's queue, and no thread here yet (or inline: _record_inline)


_all: "weakref.WeakSet[DeferredObservations[Any]]" = weakref.WeakSet()


def flush_all() -> None:
    """Record what every queue in this process holds (client calls, server requests)."""
    run_before_recording()
    for queue in list(_all):
        queue.flush()


def _flush_at_multiprocessing_exit(_: object) -> None:
    """In a child ``multiprocessing`` started by forking (after it cleared the parent's finalizers):
    it ends with ``os._exit()``, which runs no ``atexit``, but runs these finalizers first."""
    multiprocessing.util.Finalize(None, flush_all, exitpriority=0)
    if "PoolWorker-" in multiprocessing.current_process().name:
        _record_inline()


_inline = False  # observations recorded on the caller's thread, not queued (a multiprocessing.Pool worker)


def _record_inline() -> None:
    """Record every observation of this process as it is made, not 0.1 s later.

    For a ``multiprocessing.Pool`` worker (named ``ForkPoolWorker-N``, ``SpawnPoolWorker-N``): a
    pool used as a context manager (``with Pool() as pool:``) ends its workers with ``terminate()``,
    SIGTERM, whose default action skips ``atexit`` and the finalizers, and the queued calls of the
    workers' last 0.1 s were lost (5 to 20 of 20 calls in 27 of 44 runs). A worker's own calls pay
    the few microseconds of recording; a server's requests, on other processes, do not. A queue fed
    from inside the garbage collector stays queued: recorded inline there, it took a lock its thread
    already held, and the worker hung."""
    global _inline
    _inline = True
    for queue in list(_all):
        if queue._inline_allowed:
            queue.flush()
            queue.add = queue._record_now


multiprocessing.util.register_after_fork(flush_all, _flush_at_multiprocessing_exit)
if multiprocessing.parent_process() is not None:  # imported in such a child, after its fork
    _flush_at_multiprocessing_exit(None)


_before_recording: list[Callable[[], None]] = []


def before_recording(callback: Callable[[], None]) -> None:
    """Have ``callback`` run by :func:`flush_all` and by each recording thread as it starts (in every
    process: a forked child starts threads of its own): what a process owes its metrics before it
    records any (metrics/breaker.py, after fork). It runs often: it must be cheap when there is nothing to do."""
    _before_recording.append(callback)


def run_before_recording() -> None:
    _run_callbacks(_before_recording, "before recording")


_after_round: list[Callable[[], None]] = []


def after_each_round(callback: Callable[[], None]) -> None:
    """Have ``callback`` run by each recording thread after each of its rounds (every
    :data:`INTERVAL`), in every process that records metrics: housekeeping that must go on while the
    process lives (metrics/dead_workers.py). It must be cheap when there is nothing to do."""
    _after_round.append(callback)


def _run_callbacks(callbacks: list[Callable[[], None]], when: str) -> None:
    for callback in callbacks:
        try:
            callback()
        except Exception:
            logger.exception("a metrics callback %s failed", when)
