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

    def try_submit(self, fn: Callable[[], T]) -> "concurrent.futures.Future[T] | None":
        """Start ``fn`` on a free worker, or return None when all are busy."""
        free = self._free  # the one this task takes, also when reopen() makes another meanwhile
        if not free.acquire(blocking=False):
            return None
        try:
            future = self._executor.submit(fn)
        except RuntimeError:  # shut down (the client closed while a call was in flight): as when all are busy
            free.release()
            return None
        except BaseException:
            free.release()
            raise
        future.add_done_callback(lambda _: free.release())
        return future

    def shutdown(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=True)

    def reopen(self) -> None:
        """After :meth:`shutdown`, workers of a new pool (started as tasks come), as many as before."""
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


def _after_fork_in_child() -> None:
    for pool in list(_pools):
        pool._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
