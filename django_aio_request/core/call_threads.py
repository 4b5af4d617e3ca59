"""The threads that drive async calls (``Client.arequest``): a thread pool that never starts a thread
on an event loop's thread.

``ThreadPoolExecutor.submit()`` starts a new worker when none is idle, and ``Thread.start()`` waits
until the new thread has run: on the event loop's thread that wait held every task of the loop, 36-40
ms in all for a fresh client's first 32 async calls on a quiet machine and 0.4 s for 8 once on a
loaded CI machine. Here a submit made on a thread that runs an event loop takes an idle worker as
before, and when it would start one, leaves that to the starter: one thread per process, made the
first time it is needed, which starts each pool's threads as ``submit()`` would have, one after
another. The loop goes on meanwhile; a call waits for its thread about as long as before, longer where
many loops make their first calls at once (they share the one starter: a review's 8 loops of 32 calls
each waited 165 ms at the median against 79 ms, and their loops' worst pause was 88 ms against 261).
"""

import asyncio
import concurrent.futures
import logging
import queue
import sys
import threading
from concurrent.futures import thread as executor_threads
from typing import Any

from django_aio_request.core.after_fork import renewed_in_forked_child

__all__ = ["CallThreadPool"]

logger = logging.getLogger(__name__)

# Python 3.12.0-3.12.2 start no thread once the main thread has returned (3.12.3 does again): a call
# taken just before, from a non-daemon thread, could then get no thread from the starter, where one
# started at once by submit() answers it (a review: 64 of 64 such calls failed). There threads start
# on the loop, as ThreadPoolExecutor starts them.
_STARTS_ON_THE_LOOP = (3, 12, 0) <= sys.version_info[:3] <= (3, 12, 2)


class CallThreadPool(concurrent.futures.ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` whose new threads, asked for on an event loop's thread, start elsewhere."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # One start at a time, by submit() or by the starter: never more threads than max_workers.
        # Not the pool's own lock, which submit() takes: the loop's next submit waited on it
        # while the starter started a thread (a review: up to 11.7 ms, any pool's submits alike
        # while concurrent.futures' global lock was held too).
        self._growing = threading.Lock()
        self._work_queue = _NotingQueue()  # no thread holds the first one yet

    def _adjust_thread_count(self) -> None:
        """What ``submit()`` calls once the work is queued: take an idle worker, or start one. On an
        event loop's thread, the start is the starter's.

        Where that raises (no thread, or no starter, could be started), ``submit()`` raises, and the
        work it queued is cancelled here: left queued, a later failed start ended it in place of the
        call whose start failed, which then waited for its deadline (a review). A busy worker may
        take it first, in the moment between: what keeps such a call from being sent is the
        client's cancellation of it (``Client._submit_async``), which its work checks first."""
        try:
            if _STARTS_ON_THE_LOOP or asyncio._get_running_loop() is None:
                self._start_thread()
            elif self._idle_semaphore.acquire(timeout=0):
                return  # an idle worker takes it
            elif len(self._threads) < self._max_workers:
                _starter.grow(self)
        except BaseException:
            queued = self._work_queue
            if isinstance(queued, _NotingQueue) and queued.last is not None:
                queued.last.future.cancel()
            raise
        finally:
            if isinstance(self._work_queue, _NotingQueue):
                self._work_queue.last = None  # not kept: its call, done, holds the answer

    def _start_thread(self) -> None:
        """``submit()``'s own step: take an idle worker that came meanwhile, or start a thread."""
        with self._growing:
            super()._adjust_thread_count()

    def _grow(self) -> None:
        """On the starter's thread: start a thread, as ``submit()`` would have.

        Also once the interpreter's exit began: the calls queued were taken before it (``submit()``
        refuses new ones from then on), and a non-daemon thread waits for their answers, which the
        process must give (docs/architecture.md; refused here, a review's calls from such a thread
        answered 408 at their deadline, 12-49 of 64). The thread then runs what is queued and ends,
        as concurrent.futures' exit tells the threads it knows of, and the interpreter waits for it.
        Where the thread cannot be started and the pool has none, one call queued ends at once with the
        error, as ``submit()`` raised it for the call that asked for the thread, rather than wait for
        its deadline; only one: the others asked for threads of their own, which may start (ending
        all, one failed start failed 8 of 8 calls made together, a review)."""
        try:
            self._start_thread()
        except Exception as error:  # RuntimeError: can't start new thread (the process's limit)
            if not any(thread.is_alive() for thread in list(self._threads)):
                self._fail_one_queued(error)
            raise
        if executor_threads._shutdown:
            self._work_queue.put(None)  # type: ignore[arg-type]  # what concurrent.futures' exit puts for each thread

    def _fail_one_queued(self, error: Exception) -> None:
        """End the oldest call still queued (not started, nor cancelled) with ``error``."""
        while True:
            try:
                item = self._work_queue.get_nowait()
            except queue.Empty:
                return
            if item is None:  # a shutdown's wake-up, for the threads: left for them
                self._work_queue.put(None)
                return
            if item.future.set_running_or_notify_cancel():
                item.future.set_exception(error)
                return


class _NotingQueue(queue.SimpleQueue[Any]):
    """The pool's work queue, noting the last item put: the work ``submit()`` queued just before it
    calls ``_adjust_thread_count()``, under the pool's lock."""

    last: Any = None

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        self.last = item
        super().put(item, block, timeout)


class _Starter:
    """The thread that starts the pools' threads asked for on event loops' threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._asked: queue.SimpleQueue[CallThreadPool] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        _renewed_in_forked_child(self)

    def grow(self, pool: CallThreadPool) -> None:
        """Start a thread for ``pool`` soon (``pool._grow()``), from the starter's thread. The starter
        is started first, the first time (in this process, or after a fork): where that start fails,
        it raises out of ``submit()`` with nothing asked of the starter."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            # This one start still waits on the loop's thread, once, where each new worker of every pool did.
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    thread = threading.Thread(target=self._run, name="django-aio-request-thread-starter", daemon=True)
                    thread.start()
                    self._thread = thread
        self._asked.put(pool)

    def _run(self) -> None:
        asked = self._asked
        while True:
            pool = asked.get()
            try:
                pool._grow()
            except Exception:
                # Out of threads: a call queued behind the pool's threads waits for one of them to
                # free up (answered 408 at its deadline if none does); with none, it ended at once.
                logger.exception("could not start a thread for async calls")
            del pool  # not held while waiting: a pool no longer used is freed, its threads end


def _renew(starter: _Starter) -> None:
    """The parent's starter thread is not in the child, and a lock it held at the fork stays held."""
    starter._lock = threading.Lock()
    starter._asked = queue.SimpleQueue()
    starter._thread = None


_renewed_in_forked_child = renewed_in_forked_child(_renew)
_starter = _Starter()
