import abc
import dataclasses
import functools
import threading
import urllib.parse
import weakref
from collections.abc import Callable

from django_aio_request.core.attempt_threads import AttemptThreadPool
from django_aio_request.core.cancellation import Cancellation
from django_aio_request.core.classifier import ResponseVerdict
from django_aio_request.core.deadline import Deadline, too_little_to_send
from django_aio_request.core.priority import Priority
from django_aio_request.core.request import Request
from django_aio_request.core.response import Response
from django_aio_request.strategies.delays import RequestAttemptDelaysProvider


@dataclasses.dataclass(frozen=True, slots=True)
class ResponseWithVerdict:
    response: Response
    verdict: ResponseVerdict
    attempt: int = 0  # which attempt of the call produced it, 0 for the first

    @property
    def accepted(self) -> bool:
        return self.verdict is ResponseVerdict.ACCEPT


#: Sends one attempt through the client's pipeline: ``send(request, deadline, priority, attempt, cancellation)``.
#: It returns None, sending nothing, when the client's retry budget refuses an extra attempt
#: (``attempt > 0``: a retry or a hedge); a strategy then makes no more attempts. It never refuses
#: a call's first attempt (``attempt == 0``): see :func:`first_attempt`.
SendAttempt = Callable[[Request, Deadline, Priority, int, Cancellation | None], ResponseWithVerdict | None]


def first_attempt(result: ResponseWithVerdict | None) -> ResponseWithVerdict:
    """The result of a call's first attempt, which no retry budget refuses."""
    if result is None:
        raise RuntimeError("send() refused a call's first attempt: only attempts > 0 may be refused")
    return result


class RequestStrategy(abc.ABC):
    """Decides how many attempts a call makes, when, and which response it ends with."""

    @abc.abstractmethod
    def request(
        self, send: SendAttempt, workers: AttemptThreadPool, request: Request, deadline: Deadline, priority: Priority
    ) -> ResponseWithVerdict: ...

    def claim(self, endpoint: str) -> None:  # noqa: B027 - a default that learns nothing, not abstract
        """Called by each client that uses this strategy, with its endpoint: when it is made, and at a
        call given this strategy (``strategy=``). A strategy that learns per method and URL template
        (its stragglers rule, a learning delays provider: :func:`claim_learner`) refuses a second
        endpoint. This one learns nothing."""

    def first_attempt_deadline(self, deadline: Deadline) -> Deadline:
        """The deadline this strategy gives the first attempt of a call whose deadline is ``deadline``:
        all of it, unless the strategy shares it between its attempts (``sequential`` with a split
        deadline). A strategy that runs this one again (``retry_until_deadline_expired``) asks it
        before it pauses for a round whose first attempt would have too little time to be sent."""
        return deadline


#: The most attempts one strategy makes in a call: a call works out its attempts' delays before it
#: sends the first, and a million of them held it past its deadline with nothing sent.
MAX_ATTEMPTS = 100


def too_late_to_send(deadline: Deadline, after: float = 0.0) -> bool:
    """Whether an extra attempt with ``deadline``, sent ``after`` seconds from now, would have too
    little time left to be sent: its deadline passed, or less than the client's low-timeout
    threshold left (the client then refuses it, as ``send`` returning None).

    A strategy asks before pausing ``after`` seconds for a retry: it ended with the response it had
    only when the time left was shorter than the pause, so with 0.30 s left, a 0.25 s pause and a
    0.1 s threshold it slept 0.25 s for a retry that was then refused, and answered that much later.
    """
    return too_little_to_send(deadline.timeout - after)


# What learns latencies per method and URL template, by identity (id -> a weak reference to it, and
# the endpoint whose calls it learns from). Not a WeakKeyDictionary: that matches keys by ==, and two
# learners of equal value (a frozen dataclass's) were one, the second client refused (a review).
_claimed: dict[int, tuple["weakref.ref[object]", str]] = {}
_claimed_lock = threading.RLock()  # reentrant: _forget may run from the garbage collector inside claim_learner


def claim_learner(learner: object, endpoint: str) -> None:
    """Record that ``learner`` (a strategy's stragglers rule, a delays provider that observes) learns
    from the calls to ``endpoint``; ``ValueError`` if it learns from another service's already.

    What they learn is kept per method and URL template, which say nothing of the endpoint: one
    ``PercentileDelaysProvider`` shared by the clients of a service answering in 2 ms and of one
    answering in 100 ms hedged every call of the slow one after the fast one's delay (twice its
    requests; a review). A delays provider that learns nothing (``observe`` not overridden) may be
    shared. Endpoints are one service when they differ only in how they are written
    (:func:`_service`)."""
    learns = not isinstance(learner, RequestAttemptDelaysProvider) or (
        type(learner).observe is not RequestAttemptDelaysProvider.observe
    )
    if not learns:
        return
    key, service = id(learner), _service(endpoint)
    with _claimed_lock:
        claimed = _claimed.get(key)
        if claimed is not None and claimed[0]() is learner:
            owner = claimed[1]
        else:
            try:
                reference = weakref.ref(learner, functools.partial(_forget, key))
            except TypeError:  # a class of the project's with __slots__ and no __weakref__: not tracked
                return
            _claimed[key], owner = (reference, endpoint), endpoint
    if _service(owner) != service:
        raise ValueError(
            f"{learner!r} learns latencies per method and URL template, and learns them from {owner!r} already:"
            f" the calls to {endpoint!r} would mix theirs with that endpoint's (hedge delays and stragglers learned"
            " from the other service). Give each client its own strategy and delays provider"
        )


def _forget(key: int, reference: "weakref.ref[object]") -> None:
    """A claimed learner is gone: its entry goes (unless its id was claimed by another since)."""
    with _claimed_lock:
        claimed = _claimed.get(key)
        if claimed is not None and claimed[0] is reference:
            del _claimed[key]


def _service(endpoint: str) -> tuple[str, ...]:
    """``endpoint`` as a service: its scheme and host in lower case, its port (the scheme's default
    when none is written) and its path without a trailing slash, so that ``http://Billing:80/api/``
    and ``http://billing/api`` are one service."""
    try:
        parts = urllib.parse.urlsplit(endpoint)
        scheme = parts.scheme.lower()
        port = parts.port or {"http": 80, "https": 443}.get(scheme, 0)
    except ValueError:
        return (endpoint,)
    return (scheme, (parts.hostname or "").lower(), str(port), parts.path.rstrip("/"))


def claim_strategy(strategy: RequestStrategy, endpoint: str) -> None:
    """``strategy.claim(endpoint)``, for a strategy that may not be a :class:`RequestStrategy` (one
    of the project's with a ``request`` method alone learns nothing this package can see)."""
    claim = getattr(strategy, "claim", None)
    if claim is not None:
        claim(endpoint)
