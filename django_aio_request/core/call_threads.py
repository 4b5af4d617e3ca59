"""The threads that drive async calls (``Client.arequest``): a thread pool that never starts a thread
on an event loop's thread.

``ThreadPoolExecutor.submit()`` starts a new worker when none is idle, and ``Thread.start()`` waits
until the new thread has run: on the event loop's thread that wait held every task of the loop, 36-40
ms in all for a fresh client's first 32 async calls on a quiet machine and 0.4 s for 8 once on a
loaded CI machine. Here a submit made on a thread that runs an event loop takes an idle worker as
before, and when it would start one, leaves that to the starter: one thread per process, made the
first time it is needed, which grows the pool as ``submit()`` would have. The call waits for its
thread as long as before; the loop does not.
"""

import asyncio
import concurrent.futures
import logging
import queue
import threading
from concurrent.futures import thread as executor_threads

from django_aio_request.core.after_fork import renewed_in_forked_child

__all__ = ["CallThreadPool"]

logger = logging.getLogger(__name__)


class CallThreadPool(concurrent.futures.ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` whose new threads, asked for on an event loop's thread, start elsewhere."""

    def _adjust_thread_count(self) -> None:
        """What ``submit()`` calls (holding the pool's locks) once the work is queued: take an idle
        worker, or start one. On an event loop's thread, the start is the starter's."""
        if asyncio._get_running_loop() is None:
            super()._adjust_thread_count()
            return
        if self._idle_semaphore.acquire(timeout=0):
            return  # an idle worker takes it
        if len(self._threads) < self._max_workers:
            _starter.grow(self)

    def _grow(self) -> None:
        """On the starter's thread: what ``submit()`` would have done, under the locks it holds. An idle
        worker that came meanwhile is taken instead, as submit() takes one. A pool shut down since
        still gets its thread (the calls queued before the shutdown run, as they would have), but not
        once the interpreter is exiting: it joins the pools' threads it knows of, and no other."""
        with self._shutdown_lock, executor_threads._global_shutdown_lock:
            if executor_threads._shutdown:
                return
            super()._adjust_thread_count()


class _Starter:
    """The thread that starts the pools' threads asked for on event loops' threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._asked: queue.SimpleQueue[CallThreadPool] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        _renewed_in_forked_child(self)

    def grow(self, pool: CallThreadPool) -> None:
        """Start a thread for ``pool`` soon (``pool._grow()``), from the starter's thread."""
        self._asked.put(pool)
        thread = self._thread
        if thread is None or not thread.is_alive():
            # The first time in this process (or after a fork): this one start still waits on the
            # loop's thread, once, where each new worker of every pool did.
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(
                        target=self._run, name="django-aio-request-thread-starter", daemon=True
                    )
                    self._thread.start()

    def _run(self) -> None:
        asked = self._asked
        while True:
            pool = asked.get()
            try:
                pool._grow()
            except Exception:
                # Out of threads (RuntimeError: can't start new thread): the call waits for a thread
                # of the pool to free up, answered 408 at its deadline if none does.
                logger.exception("could not start a thread for async calls")
            del pool  # not held while waiting: a pool no longer used is freed, its threads end


def _renew(starter: _Starter) -> None:
    """The parent's starter thread is not in the child, and a lock it held at the fork stays held."""
    starter._lock = threading.Lock()
    starter._asked = queue.SimpleQueue()
    starter._thread = None


_renewed_in_forked_child = renewed_in_forked_child(_renew)
_starter = _Starter()
