import asyncio
import contextvars
import functools
import threading
import time
from collections.abc import Callable
from typing import Any


class Cancellation:
    """A one-way flag a strategy raises to stop an attempt it no longer needs.

    Threads have nothing like asyncio's task cancellation, so attempts take this object and
    the transport registers a callback that aborts the attempt's socket when it is raised.

    It is also how a strategy asks a running attempt whether its answer has already arrived
    (:meth:`answer_arrived`): the transport registers how to tell (:meth:`watch_attempt`).
    """

    __slots__ = ("_answer_probe", "_callbacks", "_cancelled", "_lock", "_watched", "release_after")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._callbacks: list[Callable[[], None]] = []
        self._answer_probe: Callable[[], bool] | None = None
        # The abort of the attempt that holds the slot (watch_attempt): one key, 0, or none. A dict
        # for its setdefault(), which claims the slot in one step.
        self._watched: dict[int, Callable[[], None]] = {}
        #: Set by a hedging strategy: a cancel may let the attempt's connection be drained and kept
        #: rather than shut down (transport/releasable_socket.py), and none comes before this time
        #: (``time.monotonic()``). None: a cancel shuts the connection down.
        self.release_after: float | None = None

    def watch_attempt(self, abort: Callable[[], None], answer_arrived: Callable[[], bool]) -> Callable[[], None]:
        """The transport's hold on the attempt it runs: ``abort`` runs on cancel (at once if the
        cancellation was raised already), and ``answer_arrived`` is how :meth:`answer_arrived`
        tells meanwhile (a look at the attempt's socket).

        Returns what to call once the attempt is over: a cancel that starts after it runs ``abort``
        no more (one already running may still: ``abort`` must expect it, and to run twice), and
        :meth:`answer_arrived` says True from then on, since whatever the attempt got is in its
        caller's hands, and a hedge due then must wait for the caller to take over from it.

        Every attempt of a hedged call comes here, and most are never cancelled: the first attempt
        watched takes a slot with no lock. Its ``abort`` is stored, then the flag read; :meth:`cancel`
        raises the flag, then reads the slot. Whichever comes second sees the other's write, so a
        cancel racing with the start of an attempt aborts it (twice, at worst). Attempts watched
        while another holds the slot (one cancellation shared by attempts at once, which this
        package's strategies never do) are callbacks, as :meth:`on_cancel`'s are."""
        self._answer_probe = answer_arrived
        if self._watched.setdefault(0, abort) is abort:
            if self._cancelled:
                abort()
            return self._attempt_over
        with self._lock:
            if not self._cancelled:
                self._callbacks.append(abort)
                return functools.partial(self._other_attempt_over, abort)
        abort()
        return functools.partial(self._other_attempt_over, None)

    def _attempt_over(self) -> None:
        self._answer_probe = _over
        self._watched.clear()  # called by the slot's holder only

    def _other_attempt_over(self, abort: Callable[[], None] | None) -> None:
        self._answer_probe = _over
        if abort is not None:
            self._remove(abort)

    def answer_arrived(self) -> bool:
        """Whether the attempt's answer has reached this process, unread yet; False when unknown."""
        probe = self._answer_probe
        return probe is not None and probe()

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            callbacks, self._callbacks = self._callbacks, []
        abort = self._watched.get(0)  # read after the flag was raised: see watch_attempt()
        if abort is not None:
            abort()
        for callback in callbacks:
            callback()

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` on cancel (at once if already cancelled); returns an unregister function."""
        with self._lock:
            if not self._cancelled:
                self._callbacks.append(callback)
                return functools.partial(self._remove, callback)  # no Python frame of its own
        callback()
        return lambda: None

    def _remove(self, callback: Callable[[], None]) -> None:
        with self._lock:
            # Not contextlib.suppress: an object a call, on every attempt's way out.
            if callback in self._callbacks:
                self._callbacks.remove(callback)


class TaskCancellation(Cancellation):
    """An async call's cancellation: :attr:`cancelled` also from the moment its awaiting task is
    asked to cancel (``task.cancel()``, counted at once in ``Task.cancelling()``), before the task
    runs the step that raises it (``cancel()``, which also aborts the attempts in flight).

    When many calls were cancelled together (one ``asyncio.timeout`` around a ``gather``), the
    event loop ran their tasks' steps one after the other, 1 ms or more each, and meanwhile their
    hedges, due then, were sent: up to 28 of 32 calls' hedges reached their server after the cancel
    (a review). Read from the call's thread, as ``Client._run_unless_cancelled`` reads it for a call
    not yet started. ``requests``: the task's count when the call was made (a task may go on after
    a cancellation it caught without ``uncancel()``).

    Also once the task's event loop is closed: the task never runs again, and nobody is left to
    take an answer. A call still queued for a call thread then was sent all the same, POSTs among
    them, 0.4-0.6 s after the loop was gone (a review).
    """

    __slots__ = ("_loop", "_requests", "_task")

    def __init__(self, task: "asyncio.Task[Any]", requests: int) -> None:
        super().__init__()
        self._task = task
        self._requests = requests
        self._loop = task.get_loop()

    @property
    def cancelled(self) -> bool:
        return self._cancelled or self._task.cancelling() > self._requests or self._loop.is_closed()


def _over() -> bool:
    """What ``answer_arrived()`` says once the attempt is over (:meth:`Cancellation.watch_attempt`)."""
    return True


# The cancellation of the call whose strategy runs in this context (async calls only: a sync call
# cannot be cancelled from outside its thread).
_call_cancellation: contextvars.ContextVar[Cancellation | None] = contextvars.ContextVar(
    "django_aio_request_call_cancellation", default=None
)


def heed_in_pauses(cancellation: Cancellation) -> None:
    """Make ``cancellation`` the one :func:`pause` heeds in this context: an async call runs it in
    the context its strategy will run in (``contextvars.Context.run``), which no other call shares."""
    _call_cancellation.set(cancellation)


def pause(seconds: float) -> None:
    """Wait ``seconds`` between a call's attempts, or until the call is cancelled if that is sooner.

    A strategy's pause before a retry, where ``time.sleep`` held the call's thread to its end after
    the awaiting task was cancelled (an async call). After a cancellation no attempt is sent, so the
    strategy ends at once.
    """
    cancellation = _call_cancellation.get()
    if cancellation is None:
        time.sleep(seconds)
        return
    woken = threading.Event()
    undo = cancellation.on_cancel(woken.set)
    try:
        woken.wait(seconds)
    finally:
        undo()
