"""urllib3 retries that end with the attempt's deadline.

A plain ``HTTPAdapter`` the user mounted on their session for a longer prefix brings its own
``urllib3`` ``Retry``: retries inside one attempt, on a refused connection or on a status in its
``status_forcelist``, with a pause before each (a backoff, or the answer's ``Retry-After``). The pause
is a ``time.sleep()``, which the deadline's timer cannot wake (it shuts sockets down), so a call
returned its 408 seconds past its deadline (3 s for a 0.5 s deadline with ``Retry-After: 3``, 5.6 s
with a backoff). :func:`deadline_bound` gives the transport a copy of such a ``Retry`` that:

* makes no retry whose pause would not end before the attempt's deadline: it gives up as urllib3
  does when the retries are spent (the last answer is the attempt's, or its error a failed
  connection's), so the call ends at once with what the server said rather than at the deadline;
* pauses on the attempt's guard, which an abort (a hedge that won, a cancelled async call) wakes.

The pause is worked out as urllib3's ``Retry.sleep()`` does (``get_retry_after()``, else
``get_backoff_time()``), so a subclass's own rules for those are kept; its own ``sleep()`` is not.
"""

import copy
import threading
from typing import Any, Self, cast

from urllib3.exceptions import MaxRetryError, ResponseError
from urllib3.util.retry import Retry

from django_aio_request.core.send_again import may_send_again
from django_aio_request.transport.attempt_sockets import current_attempt


class _DeadlineBound(Retry):
    """Mixed before the class of the user's ``Retry`` (see :func:`deadline_bound`)."""

    _judged_pause: float | None = None  # the pause increment() judged would fit: the one sleep() makes

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: Any = None,
        error: Exception | None = None,
        _pool: Any = None,
        _stacktrace: Any = None,
    ) -> Self:
        # Bound again: a subclass whose new() makes its own class (one whose __init__ takes more
        # arguments must) handed back an unbounded Retry, whose next pause slept 30 s past a 2.5 s deadline.
        retried = cast(Self, deadline_bound(super().increment(method, url, response, error, _pool, _stacktrace)))
        guard = current_attempt()
        if guard is None:
            return retried
        # Judged once, and this is the pause sleep() makes: a backoff with jitter is a new draw each
        # time it is asked, and a second, longer one slept to the deadline (the attempt's 503 became a 408).
        pause = retried._judged_pause = _pause(retried, response)
        # A retry of the adapter's is one more request to the server, made below the strategy: the
        # call's retry budget pays for it as for a retry of the strategy's (core/send_again.py).
        # Unasked, 4 threads of calls with 3 sequential attempts through Retry(total=3) sent 5.8
        # requests a call to a failing server where the budget allows 1.2 plus its floor.
        if pause >= guard.remaining() or not may_send_again():
            # As urllib3 when the retries are spent: the answer is returned (raise_on_status=False)
            # or MaxRetryError raised with what failed.
            reason = error or ResponseError(
                ResponseError.SPECIFIC_ERROR.format(status_code=response.status)
                if response is not None and response.status
                else ResponseError.GENERIC_ERROR
            )
            raise MaxRetryError(_pool, url or "", reason) from reason
        return retried

    def sleep(self, response: Any = None) -> None:
        guard = current_attempt()
        if guard is None:
            super().sleep(response)
            return
        guard.pause(_pause(self, response, strict=True, backoff=self._judged_pause))
        if guard.reason is not None:
            raise ConnectionAbortedError("the attempt was aborted while it waited to retry")


def _pause(retries: Retry, response: Any, *, strict: bool = False, backoff: float | None = None) -> float:
    """How long ``retries.sleep(response)`` would sleep (as urllib3 2.x's ``Retry.sleep``). An
    unparsable ``Retry-After`` raises ``InvalidHeader`` from urllib3's sleep(), and from ours
    (``strict``); :meth:`_DeadlineBound.increment` only estimates, and takes the backoff then.
    ``backoff``: the backoff already drawn, if any (a jittered one differs on every draw)."""
    if retries.respect_retry_after_header and response:
        try:
            after = retries.get_retry_after(response)
        except Exception:
            if strict:
                raise
            after = None
        if after:
            return float(after)
    return float(retries.get_backoff_time()) if backoff is None else backoff


_classes: dict[type[Retry], type[Retry]] = {}
_classes_lock = threading.Lock()


def deadline_bound(retries: Retry) -> Retry:
    """A copy of ``retries`` (of its class, with its settings and history) bounded by the deadline."""
    if isinstance(retries, _DeadlineBound):
        return retries
    kind = type(retries)
    with _classes_lock:
        bound = _classes.get(kind)
        if bound is None:
            bound = _classes[kind] = type(kind.__name__, (_DeadlineBound, kind), {"__module__": kind.__module__})
    made = copy.copy(retries)
    made.__class__ = bound
    return made
