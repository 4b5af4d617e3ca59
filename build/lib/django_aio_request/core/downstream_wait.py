"""How long a request being served waited on calls made through this package's clients.

Load shedding learns its concurrency limit from how long served requests take. A request that spends
most of its time waiting on another service (a call to billing that sometimes takes 400 ms) is not
queueing inside this process, and judging the limit by that time made it fall whenever the
downstream was slow: requests waiting on billing then held the few slots left and the demo's orders
refused 4.8% of its calls at 58% CPU (docs/benchmarks.md). So the server side opens a :class:`DownstreamWait` for each
request it limits, every call a client makes while it is open adds the time it took, and the limit
judges a request by the rest (the downstream sheds its own load; the call's deadline, breaker and
retry budget bound what it is sent).

Calls that overlap (hedges are one call; a view that fans out on threads or tasks makes several)
count once: the time during which at least one call was open. What counts is the wait *off* the
CPU: the CPU time a sync call's own thread spent in it (building the request, reading the answer)
is work done here, and the limit judges it with the rest of the request's (a call on this package's
client costs about as much CPU as the view around it in the demo).
"""

import contextvars
import threading
import time

__all__ = ["DownstreamWait", "current_downstream_wait", "measure_downstream_wait", "stop_measuring"]


class DownstreamWait:
    """The seconds during which at least one client call was open, and the CPU time calls reported (thread-safe)."""

    __slots__ = ("_cpu", "_lock", "_open", "_since", "_total")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open = 0
        self._since = 0.0
        self._total = 0.0
        self._cpu = 0.0

    def begin(self) -> None:
        with self._lock:
            if self._open == 0:
                self._since = time.monotonic()
            self._open += 1

    def end(self, cpu: float = 0.0) -> None:
        """A call ended; ``cpu``: the CPU time its thread spent in it (0 when unknown)."""
        with self._lock:
            if self._open <= 0:
                raise RuntimeError("end() without a begin()")
            self._cpu += cpu
            self._open -= 1
            if self._open == 0:
                self._total += time.monotonic() - self._since

    @property
    def seconds(self) -> float:
        """The time waited so far, a call still open counting up to now."""
        with self._lock:
            return self._seconds()

    @property
    def off_cpu(self) -> float:
        """:attr:`seconds` less the CPU time the calls reported: the wait that was not work done here."""
        with self._lock:  # both read at once: a call ending meanwhile adds to both
            return max(0.0, self._seconds() - self._cpu)

    def _seconds(self) -> float:
        if self._open:
            return self._total + time.monotonic() - self._since
        return self._total


_current: contextvars.ContextVar[DownstreamWait | None] = contextvars.ContextVar(
    "django_aio_request_downstream_wait", default=None
)


def current_downstream_wait() -> DownstreamWait | None:
    """The wait being measured for the request served here, or None (nothing measures it)."""
    return _current.get()


def measure_downstream_wait() -> tuple[DownstreamWait, contextvars.Token[DownstreamWait | None]]:
    """Start measuring in this context; reset the token when the request is done."""
    wait = DownstreamWait()
    return wait, _current.set(wait)


def stop_measuring(token: contextvars.Token[DownstreamWait | None]) -> None:
    _current.reset(token)
