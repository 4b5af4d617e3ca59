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
        self._free = _Slots(max_workers)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name)
        _pools.add(self)

    def try_submit(
        self,
        fn: Callable[[], T],
        stop: Callable[[], None] | None = None,
        caller: threading.Thread | None = None,
    ) -> "concurrent.futures.Future[T] | None":
        """Start ``fn`` on a free worker, or return None when all are busy (or the pool is closed).

        ``stop`` ends ``fn`` early; it is called if the interpreter exits while ``fn`` runs and
        ``caller``, the thread waiting for ``fn`` (this one by default), can no longer wait for it
        (see :func:`_stop_at_exit`).
        """
        if self._closed:  # the client closed while a call was in flight: as when all are busy
            return None
        free, executor = self._free, self._executor  # this task's, also when reopen() makes others meanwhile
        if not free.take():
            return None
        try:
            future = executor.submit(fn)
        except RuntimeError:  # shut down between the check and here
            free.give()
            return None
        except BaseException:
            free.give()
            raise
        if stop is not None:
            forget = stop_at_exit(stop, caller)
            future.add_done_callback(lambda _: forget())
        future.add_done_callback(lambda _: free.give())
        return future

    def for_caller(self, caller: threading.Thread) -> "AttemptThreadPool":
        """This pool, for one call made in ``caller``: the tasks submitted through it belong to
        ``caller`` whichever thread submits them (a hedge is started by the timer's)."""
        return _CallersPool(self, caller)

    def detach(self) -> "Detached":
        """Refuse new tasks from now on (until :meth:`reopen`); the pool's threads, for the caller to
        shut down. Split from :meth:`shutdown` so that a client can close its pool and mark itself
        closed in one step, and wait for the running tasks after it (a call may reopen the pool
        meanwhile)."""
        self._closed = True
        return Detached(self._executor, self._free)

    def shutdown(self) -> None:
        """Refuse new tasks, then wait for the running ones."""
        self.detach().shutdown(wait=True)

    def reopen(self) -> None:
        """After :meth:`shutdown` or :meth:`detach`: a new pool (threads started as tasks come), as large."""
        if self._closed:
            self._free = _Slots(self.max_workers)
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.max_workers, thread_name_prefix=self._name
            )
            self._closed = False

    def _after_fork_in_child(self) -> None:
        # The parent's workers do not exist here, but its executor still counts the idle ones and
        # would hand them work nobody runs: the first hedges of a client used before fork() were
        # never sent. A pool of the child's own.
        if not self._closed:
            self._free = _Slots(self.max_workers)
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.max_workers, thread_name_prefix=self._name
            )


class _Slots:
    """How many more tasks a pool's threads may take; as a BoundedSemaphore's ``acquire(blocking=False)``
    and ``release()``, that also tells how many are running."""

    __slots__ = ("_left", "_lock", "_size")

    def __init__(self, size: int) -> None:
        self._size = size
        self._left = size
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if not self._left:
                return False
            self._left -= 1
            return True

    def give(self) -> None:
        with self._lock:
            self._left += 1

    @property
    def taken(self) -> int:
        return self._size - self._left


class Detached:
    """The threads of a pool that :meth:`AttemptThreadPool.detach` closed: its tasks still running."""

    def __init__(self, executor: concurrent.futures.ThreadPoolExecutor, slots: _Slots) -> None:
        self._executor = executor
        self._slots = slots

    @property
    def running(self) -> int:
        """How many of its tasks have not ended yet."""
        return self._slots.taken

    def shutdown(self, wait: bool) -> None:
        """Let its threads end once idle; with ``wait``, wait for its running tasks and its threads."""
        self._executor.shutdown(wait=wait)


class _CallersPool(AttemptThreadPool):
    """What :meth:`AttemptThreadPool.for_caller` returns: submits to ``pool`` on ``caller``'s behalf."""

    def __init__(self, pool: AttemptThreadPool, caller: threading.Thread) -> None:
        # No pool of its own: not AttemptThreadPool.__init__.
        self.max_workers = pool.max_workers
        self._pool = pool
        self._caller = caller

    def try_submit(
        self,
        fn: Callable[[], T],
        stop: Callable[[], None] | None = None,
        caller: threading.Thread | None = None,
    ) -> "concurrent.futures.Future[T] | None":
        return self._pool.try_submit(fn, stop, caller or self._caller)

    def for_caller(self, caller: threading.Thread) -> AttemptThreadPool:
        return self._pool.for_caller(caller)

    def detach(self) -> Detached:
        return self._pool.detach()

    def shutdown(self) -> None:
        self._pool.shutdown()

    def reopen(self) -> None:
        self._pool.reopen()


_pools: "weakref.WeakSet[AttemptThreadPool]" = weakref.WeakSet()
# Each task running now: how to stop it (its ``stop``), and the thread waiting for it (its caller).
_running: dict[object, tuple[Callable[[], None], threading.Thread]] = {}


def stop_at_exit(stop: Callable[[], None], caller: threading.Thread | None = None) -> Callable[[], None]:
    """Call ``stop`` if the interpreter exits before the function returned here is called, and
    ``caller`` (the thread waiting for the work ``stop`` ends; this one by default) can no longer
    wait for it then: see :func:`_stop_at_exit`.

    For work running on a ``ThreadPoolExecutor`` worker, which the interpreter waits for at exit:
    a hedge (:meth:`AttemptThreadPool.try_submit`) and an async call (``Client.arequest``)."""
    token = object()
    _running[token] = (stop, caller or threading.current_thread())

    def forget() -> None:
        _running.pop(token, None)

    return forget


def _abandoned(caller: threading.Thread) -> bool:
    """At exit: ``caller`` will never wait for its work again. The thread exiting (the main thread) has
    returned; a daemon thread is killed once the non-daemon threads are done; an ended one is gone. A
    non-daemon thread still running is joined after this: it keeps running, and waits for its work."""
    return caller is threading.current_thread() or caller.daemon or not caller.is_alive()


def _stop_at_exit() -> None:
    """At interpreter exit, before ``concurrent.futures`` joins its workers: refuse new tasks and
    stop the running ones whose caller can no longer wait for them (:func:`_abandoned`). A hedge
    still waiting for its answer, or an async call whose event loop ran in a daemon thread, kept the
    process alive until the call's deadline (20 s by default) after the caller, a daemon thread, or
    the main thread had gone; its sockets are shut down now, as a lost hedge's are. A call made in a
    non-daemon thread still running (a ``threading.Thread``, a job of the user's own
    ``ThreadPoolExecutor``), which the interpreter goes on running, is left alone: it gets its answer
    (its hedges included), as it would before the main thread returned. Once exit began,
    ``concurrent.futures`` takes no new work: a hedge started from now on is skipped, as when the
    pool is full, and a new async call raises RuntimeError."""
    for pool in list(_pools):
        pool._closed = True
    for stop, caller in list(_running.values()):
        if _abandoned(caller):
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
