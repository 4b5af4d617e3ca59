import concurrent.futures
import os
import threading
import weakref
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class AttemptThreadPool:
    """A bounded thread pool that never queues: a task is either started now or refused.

    Queued hedges would start late, after the caller stopped caring, and a caller waiting on a
    queued task can deadlock when every worker is itself waiting. Refusing instead lets the caller
    run the attempt itself or skip the hedge.
    """

    def __init__(self, max_workers: int, name: str = "django-aio-request") -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, not {max_workers}")
        self.max_workers = max_workers
        self._name = name
        self._closed = False
        self._free = threading.BoundedSemaphore(max_workers)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name)
        _pools.add(self)

    def try_submit(
        self, fn: Callable[[], T], stop: Callable[[], None] | None = None
    ) -> "concurrent.futures.Future[T] | None":
        """Start ``fn`` on a free worker, or return None when all are busy (or the pool is closed).

        ``stop`` ends ``fn`` early; it is called if the interpreter exits while ``fn`` runs (see
        :func:`_stop_at_exit`).
        """
        if self._closed:  # the client closed while a call was in flight: as when all are busy
            return None
        free, executor = self._free, self._executor  # this task's, also when reopen() makes others meanwhile
        if not free.acquire(blocking=False):
            return None
        try:
            future = executor.submit(fn)
        except RuntimeError:  # shut down between the check and here
            free.release()
            return None
        except BaseException:
            free.release()
            raise
        if stop is not None:
            forget = stop_at_exit(stop)
            future.add_done_callback(lambda _: forget())
        future.add_done_callback(lambda _: free.release())
        return future

    def detach(self) -> concurrent.futures.ThreadPoolExecutor:
        """Refuse new tasks from now on (until :meth:`reopen`); the executor, for the caller to shut
        down. Split from :meth:`shutdown` so that a client can close its pool and mark itself closed
        in one step, and wait for the running tasks after it (a call may reopen the pool meanwhile)."""
        self._closed = True
        return self._executor

    def shutdown(self) -> None:
        """Refuse new tasks, then wait for the running ones."""
        self.detach().shutdown(wait=True)

    def reopen(self) -> None:
        """After :meth:`shutdown` or :meth:`detach`: a new pool (threads started as tasks come), as large."""
        if self._closed:
            self._free = threading.BoundedSemaphore(self.max_workers)
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.max_workers, thread_name_prefix=self._name
            )
            self._closed = False

    def _after_fork_in_child(self) -> None:
        # The parent's workers do not exist here, but its executor still counts the idle ones and
        # would hand them work nobody runs: the first hedges of a client used before fork() were
        # never sent. A pool of the child's own.
        if not self._closed:
            self._free = threading.BoundedSemaphore(self.max_workers)
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.max_workers, thread_name_prefix=self._name
            )


_pools: "weakref.WeakSet[AttemptThreadPool]" = weakref.WeakSet()
_running: set[Callable[[], None]] = set()  # how to stop each task running now (its ``stop``)


def stop_at_exit(stop: Callable[[], None]) -> Callable[[], None]:
    """Call ``stop`` if the interpreter exits before the function returned here is called.

    For work running on a ``ThreadPoolExecutor`` worker, which the interpreter waits for at exit:
    a hedge (:meth:`AttemptThreadPool.try_submit`) and an async call (``Client.arequest``)."""
    _running.add(stop)
    return lambda: _running.discard(stop)


def _stop_at_exit() -> None:
    """At interpreter exit, before ``concurrent.futures`` joins its workers: refuse new tasks and
    stop the running ones. A hedge still waiting for its answer, or an async call whose event loop
    ran in a daemon thread, kept the process alive until the call's deadline (20 s by default) after
    the caller, a daemon thread, or the main thread had gone; its sockets are shut down now, as a
    lost hedge's are."""
    for pool in list(_pools):
        pool._closed = True
    for stop in list(_running):
        stop()


# Python joins the workers of every ThreadPoolExecutor at exit, before ``atexit`` handlers run, with
# the functions registered here (concurrent.futures registers its own when it is imported, above):
# they run last registered first, so this one runs before the join.
_register_atexit = getattr(threading, "_register_atexit", None)
if _register_atexit is not None:
    _register_atexit(_stop_at_exit)


def _after_fork_in_child() -> None:
    _running.clear()  # the parent's tasks: they do not run here, and nothing would take them out
    for pool in list(_pools):
        pool._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
