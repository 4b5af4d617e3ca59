"""``PriorityThreadWorker``: gunicorn's gthread worker with its request queue ordered by priority.

    gunicorn -k django_aio_request.server.priority_worker.PriorityThreadWorker --threads 4 mysite.wsgi

Under gunicorn's own gthread worker, a request that finds every thread busy waits in the worker's
thread pool queue, first come first served, before any code of the application sees it. The
middleware orders only the requests that reach it, so with the limit at or above the threads (and
always with one thread) a high-priority request waits behind every low-priority one ahead of it
(docs/budgets-and-shedding.md, "Threads and the queue the process cannot see"). This worker changes
these things and nothing else:

* its pool (:class:`~django_aio_request.server.shedding.priority_pool.PriorityThreadPool`) gives a
  freed thread to the best request waiting: the priority it claims (``X-Request-Priority``, read
  from the socket with ``MSG_PEEK`` when the request is queued, after any bytes of it gunicorn's
  parser already read with the request before it; capped by ``PRIORITY_POLICY`` as the middleware
  would cap it), then arrival order;
* the time a request waited in that queue is taken off its ``X-Request-Timeout`` (cut to
  ``MAX_TIMEOUT`` first, as the middleware cuts it) before Django sees it, so a request whose
  caller gave up while it waited is refused at once (503 with ``Retry-After``, see
  :class:`QueueWaitApp`) instead of running its view for nobody. The value received is kept in
  ``environ["django_aio_request.received_timeout"]``. A
  request whose time ran out in the queue is refused then, on a thread of its own if every thread
  is busy (else it waited for the next free thread: 2.8 s for a 2 s deadline behind a 3 s view, a
  review), so nothing waits in the queue past its caller's deadline;
* a request whose caller hung up while it queued runs no view: answered 499 for nobody, recorded in
  ``aio_request_server_latency`` as the middleware records a caller that left while it waited for a
  slot (:func:`_caller_left`);
* a request without a valid ``X-Request-Timeout`` has no deadline in the queue, as in the
  middleware's (``TIMEOUT`` is a default nobody waits for): it never expires, so it is never taken
  ahead of better priorities, and it comes after the requests of its priority that have one.
  Judged by ``TIMEOUT``, one that outwaited it was taken before high priority and served in full
  (with ``TIMEOUT`` 0.5 s and 0.2 s views on one thread, high-priority requests were answered after
  every such request queued before them);
* with ``SHEDDING`` no request waits longer than ``QUEUE_TIMEOUT``, as for a slot: then it is taken
  before any other and refused (503 with ``Retry-After``, and ``X-Do-Not-Retry`` only when its
  caller's deadline ends before ``Retry-After``: its caller may try again).

A new connection waits on the worker's poller until its first bytes arrive, then is queued (gthread
queues it at once and a thread waits for them); a connection its caller closed is queued to be
closed, before any other (closing it is quick). The order is a hint read before the request is
parsed: a request whose head has not fully arrived when it is queued, arrives over TLS, or does
not carry the header on a complete line within the first :data:`PEEK_BYTES` is queued with the
default priority (``AIO_REQUEST["PRIORITY"]``), and likewise without a deadline for
``X-Request-Timeout``. A custom ``PRIORITY_POLICY`` callable needs the parsed request, so every
claim is queued as an untrusted caller's (at most ``UNTRUSTED_PRIORITY``). The middleware still
decides everything from the parsed headers. A request without ``X-Request-Timeout`` gets the
default deadline from when the middleware sees it, as under gthread. Metrics:
``aio_request_server_thread_queue_length`` and ``aio_request_server_thread_queue_wait_seconds``, by
the priority a request queued with.
"""

import functools
import logging
import math
import selectors
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import gunicorn
from gunicorn.workers.gthread import ThreadWorker

from django_aio_request.conf.current import current
from django_aio_request.core.priority import Priority
from django_aio_request.core.timeout_header import MICROSECONDS_BELOW
from django_aio_request.metrics import server as metrics
from django_aio_request.metrics.deferred import recording
from django_aio_request.metrics.prometheus import ENABLED as METRICS_ENABLED
from django_aio_request.server.shedding import shedding_for
from django_aio_request.server.shedding.policy import ANY, KNOWN_SERVICES, RANK, lower
from django_aio_request.server.shedding.priority_pool import PriorityThreadPool, ran_expired, take_queued_for
from django_aio_request.server.shedding.request_head import NOTHING, Claims, read_claims
from django_aio_request.server.socket_peek import CLIENT_CLOSED_REQUEST, META_SOCKET, hung_up, peek
from django_aio_request.server.view_timeout import RECEIVED_TIMEOUT

__all__ = ["PEEK_BYTES", "RECEIVED_TIMEOUT", "PriorityThreadWorker", "QueueWaitApp", "queue_priority", "queue_timeout"]

#: How much of a request's head is peeked at to find its priority.
PEEK_BYTES = 8192
#: How long gthread's thread waits for a new connection's first bytes before handing it to the poller.
FIRST_BYTES_TIMEOUT = 5.0
#: On a stop, how long new connections still waiting for their first bytes stay open at most (gunicorn
#: 27.0.1 gives its kept-alive connections as long, for a request already on its way).
STOP_LINGER = 2.0
#: gunicorn versions whose gthread queues a connection at once instead of waiting on the poller for
#: its first bytes (22-23 wait on the poller, 25.2 and later keep ``pending_conns``).
ACCEPT_QUEUES_AT_ONCE = ((24, 0), (25, 2))
#: A request without a deadline is taken ahead of any other once ``QUEUE_TIMEOUT`` has passed since
#: it was ranked, and refused when it waited ``QUEUE_TIMEOUT`` less this: the pool counts its wait
#: from a moment after the ranking, so at the promotion it has waited a little less (and, refused
#: only from ``QUEUE_TIMEOUT`` on, would have been served ahead of every other).
QUEUE_TIMEOUT_SLACK = 0.01
#: The least a request may wait in the queue, whatever ``QUEUE_TIMEOUT`` says: a request handed to an
#: idle thread waits 50 µs to a few ms for it to start, and with ``QUEUE_TIMEOUT`` 1 µs every request
#: on an idle worker was refused (1-5 % at 1 ms). None was at 5 ms.
MIN_QUEUE_BOUND = 0.005
META_TIMEOUT = "HTTP_X_REQUEST_TIMEOUT"
REASON_QUEUE_TIMEOUT = "queue_timeout"  # the limiter's reason: waited as long as a request may for a slot
logger = logging.getLogger(__name__)
_NAMES = {rank: priority.value for priority, rank in RANK.items()}


class _Head:
    """What a priority policy reads of a request, from the peeked head (``known_services``: one header)."""

    def __init__(self, service: str | None) -> None:
        self.META = {} if service is None else {"HTTP_X_SERVICE_NAME": service}


def queue_priority(claims: Claims) -> Priority:
    """The priority a request waits in the queue with: its claim (or the default) under the policy."""
    conf = current.settings
    claimed = claims.priority if claims.priority is not None else conf.priority
    shedding = conf.shedding
    if shedding is None or shedding.priority_policy == ANY:
        return claimed
    if shedding.priority_policy == KNOWN_SERVICES:
        policy = shedding_for(shedding, conf.known_services).policy  # the middleware's own
        assert policy is not None
        return policy(_Head(claims.service), claimed)
    return lower(claimed, shedding.untrusted_priority)  # a callable needs the parsed request


def queue_timeout(claims: Claims) -> float:
    """Seconds the caller waits, as the middleware will count them: its valid ``X-Request-Timeout``
    (at most ``MAX_TIMEOUT``), else ``math.inf``: no deadline, as load shedding judges such a request
    (the ``TIMEOUT`` default is not what anybody waits for, and a view's ``@timeout`` replaces it)."""
    from django_aio_request.server.middleware import parse_timeout  # imports Django: after setup

    conf = current.settings
    seconds = None if claims.timeout is None else parse_timeout(claims.timeout)
    return math.inf if seconds is None else min(seconds, conf.max_timeout)


def _queue_bound() -> float:
    """How long a request may wait in the queue (one with a deadline no longer than that allows):
    ``QUEUE_TIMEOUT`` with ``SHEDDING`` (as it may for a slot), at least :data:`MIN_QUEUE_BOUND`,
    else for ever. ``QUEUE_TIMEOUT`` 0 bounds nothing here: every request queues for a moment, even
    for an idle thread, and would be refused."""
    shedding = current.settings.shedding
    if shedding is None or shedding.queue_timeout <= 0:
        return math.inf
    return max(float(shedding.queue_timeout), MIN_QUEUE_BOUND)


def _waited_too_long(waited: float) -> bool:
    """Whether a request that waited ``waited`` seconds in the queue waited as long as it may
    (:func:`_queue_bound`, less the slack, which is never more than a tenth of it: a ``QUEUE_TIMEOUT``
    below the 10 ms slack refused every request, each having queued for a moment, on an idle server)."""
    bound = _queue_bound()
    return waited >= bound - min(QUEUE_TIMEOUT_SLACK, bound / 10)


# The pool's rank of a request: its priority's (0 high, 1 normal, 2 low) twice, plus 1 without a
# deadline, so that it comes after those of its priority that have one. Metrics are by priority.
def _pool_rank(priority: Priority, deadline: bool) -> int:
    return 2 * RANK[priority] + (0 if deadline else 1)


# The rank of a connection its caller closed without a request: taken before any request (closing
# it is quick), and no request in the queue's metrics. Ranked as a request of the default priority,
# each hang-up was one more entry near 0 s in that priority's wait (20 high priority requests on
# connections their caller closed showed as 20 high and 20 normal).
_HUNG_UP = -1


def _queue_wait(rank: int, seconds: float) -> None:
    if rank != _HUNG_UP:
        with recording():  # a fork must not copy prometheus_client's lock held (see metrics/deferred.py)
            metrics.thread_queue_wait.labels(_NAMES[rank // 2]).observe(seconds)


class _QueueLength:
    """``on_length`` of the pool: the requests waiting of each priority, with and without a deadline."""

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}

    def __call__(self, rank: int, count: int) -> None:  # called with the pool's lock held: no race
        if rank == _HUNG_UP:
            return
        self._counts[rank] = count
        first = rank - rank % 2
        with recording():
            metrics.thread_queue_length.labels(_NAMES[rank // 2]).set(
                self._counts.get(first, 0) + self._counts.get(first + 1, 0)
            )


def _read_ahead(conn: Any) -> bytes:
    """Bytes gunicorn's parser already read off the connection (the next of pipelined requests)."""
    buffer = getattr(getattr(getattr(conn, "parser", None), "unreader", None), "buf", None)
    value = getattr(buffer, "getvalue", None)
    return bytes(value()) if callable(value) else b""


def _peek(sock: Any) -> bytes | None:
    """The bytes waiting on ``sock`` (left there), None when none has arrived, b"" at its end."""
    return peek(sock, PEEK_BYTES)


class QueueWaitApp:
    """The WSGI application, given requests whose ``X-Request-Timeout`` lost the time they queued.

    A request whose time the queue used up (nothing left, or less than ``LOW_TIMEOUT_THRESHOLD``
    where what it was sent was not) is answered here, without Django: 503 with ``Retry-After`` (the
    shedding setting's, else 1 s) and ``X-Do-Not-Retry``, counted in ``aio_request_server_shed_total``
    with reason ``deadline``. It was refused for the server's load, not for its caller's timeout, and
    a caller that honours ``Retry-After`` steps back (a 408 would bring it back at once). A request
    without a valid ``X-Request-Timeout`` that waited ``QUEUE_TIMEOUT`` (with ``SHEDDING``) is
    answered the same 503 without ``X-Do-Not-Retry``, with reason ``queue_timeout``.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], log: Any = None) -> None:
        self.app = app
        self._log = log if log is not None else logger  # the worker's: gunicorn's error log
        self._failed = False

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        waited = take_queued_for()
        if waited > 0:
            try:
                if hung_up(environ.get(META_SOCKET)):
                    return _caller_left(environ, start_response, waited)
                refused = self._take_off(waited, environ, start_response, expired=ran_expired())
            except Exception:  # settings that do not load, an app that is not Django: as received
                if not self._failed:
                    self._failed = True
                    self._log.exception(
                        "PriorityThreadWorker could not take the time queued off X-Request-Timeout: requests it "
                        "cannot adjust go on as received (logged once per worker)"
                    )
                refused = None
            if refused is not None:
                return refused
        return self.app(environ, start_response)

    def _take_off(
        self, waited: float, environ: dict[str, Any], start_response: Callable[..., Any], *, expired: bool = False
    ) -> Iterable[bytes] | None:
        """Rewrite the timeout in ``environ``, or answer the 503 and return its body. ``expired``: the
        pool runs it on a thread of its own, every thread busy (``ran_expired``): it is refused."""
        from django_aio_request.server.middleware import parse_timeout  # imports Django: after setup

        raw = environ.get(META_TIMEOUT)
        seconds = None if raw is None else parse_timeout(raw)
        if seconds is None:  # no deadline (a malformed value is left to the middleware to count and ignore)
            if expired or _waited_too_long(waited):
                return _refuse(environ, start_response, REASON_QUEUE_TIMEOUT, waited)
            return None
        conf = current.settings
        threshold = conf.low_timeout_threshold
        if seconds == 0 or seconds < threshold:
            # Refused by the middleware as it came, under the reason it names ("expired" for 0,
            # "low_timeout" for 1 ms left): rewritten, 1 ms less the time queued would read "0".
            return None
        # Clamped to MAX_TIMEOUT first, as the middleware and the queue (queue_timeout) count it: the
        # queue took this request ahead of every other as expired once MAX_TIMEOUT had passed, and
        # taken off the value as sent ("100") the view would then run with a fresh MAX_TIMEOUT.
        seconds = min(seconds, conf.max_timeout)
        # Whole milliseconds, rounded down: the time left may only shrink (rounded up, 0.0049 s less a
        # few µs would read 0.005 and pass a LOW_TIMEOUT_THRESHOLD of 5 ms).
        left = math.floor((seconds - waited) * 1000 + 1e-6) / 1000  # 1e-6: 0.3 - 0.25 is 0.04999...
        shown = f"{left:.3f}"
        if left < MICROSECONDS_BELOW:
            # Under 10 ms left, where a server's threshold is, in whole microseconds, as the client
            # stamps it (core/timeout_header.py): under a millisecond, rounded to 0 ms, a request
            # gthread serves was refused here, and 5.9 ms left, read as 5 ms, was refused at a
            # LOW_TIMEOUT_THRESHOLD of 5.5 ms, and handed to an aio-request-like threshold as its 5 ms.
            left = math.floor((seconds - waited) * 1e6 + 1e-3) / 1e6
            shown = f"{left:.6f}"
        if left <= 0 or left < threshold:
            return _refuse(environ, start_response, "deadline", waited)
        if _waited_too_long(waited):
            # Waited QUEUE_TIMEOUT with time left: refused as the limiter refuses a request that waited
            # that long for a slot. Left in the queue, it waited for a thread for its whole deadline
            # (5 s, up to MAX_TIMEOUT) under a flood of better priority, then was refused anyway.
            return _refuse(environ, start_response, REASON_QUEUE_TIMEOUT, waited, left=left)
        if expired:  # its deadline came, less the microseconds between its ranking and its queueing
            return _refuse(environ, start_response, "deadline", waited)
        environ[RECEIVED_TIMEOUT] = raw
        environ[META_TIMEOUT] = shown
        return None


def _refuse(
    environ: dict[str, Any],
    start_response: Callable[..., Any],
    reason: str,
    waited: float,
    *,
    left: float | None = None,
) -> Iterable[bytes]:
    """The 503 of a request whose time ran out while it queued (reason ``deadline``: see
    :class:`QueueWaitApp`), or that waited ``QUEUE_TIMEOUT`` (reason ``queue_timeout``) with ``left``
    seconds of its deadline (None: it has none), after ``waited`` seconds in the queue. ``X-Do-Not-Retry``
    as the limiter decides it: for the deadline, or when what is left ends before ``Retry-After``.

    Counted as the middleware counts its own refusals: in ``aio_request_server_shed_total``, and in
    ``aio_request_server_latency`` (status 503, no route, timed by its wait). Only in the first, an
    error ratio over the server's latency left out every request this queue refused (a review)."""
    from django_aio_request.server.middleware import parse_priority  # imports Django: after setup

    conf = current.settings
    raw = environ.get("HTTP_X_REQUEST_PRIORITY")
    claims = Claims(None if raw is None else parse_priority(raw), environ.get("HTTP_X_SERVICE_NAME"))
    metrics.shed(queue_priority(claims).value, reason)
    if METRICS_ENABLED:
        metrics.server_observations.add(
            (claims.service, environ.get("REQUEST_METHOD"), metrics.UNMATCHED_ROUTE, 503, conf.known_services, waited)
        )
    retry_after = conf.shedding.retry_after if conf.shedding is not None else 1
    headers = [("Retry-After", str(retry_after)), ("Content-Length", "0")]
    if reason != REASON_QUEUE_TIMEOUT or (left is not None and left < retry_after):
        headers.insert(1, ("X-Do-Not-Retry", "1"))
    start_response("503 Service Unavailable", headers)
    return [b""]


def _caller_left(environ: dict[str, Any], start_response: Callable[..., Any], waited: float) -> Iterable[bytes]:
    """The answer to a request whose caller hung up while it queued: its view would run for nobody,
    holding a thread from the callers still waiting (a review: on one thread, a live caller waited
    out the view of one that had left). Recorded as the middleware records a caller that left while
    it waited for a slot: in ``aio_request_server_latency`` as a 499 with no route, timed by its wait;
    not in ``aio_request_server_shed_total`` (nothing was refused). Nobody reads the answer."""
    logger.debug("its caller went away while it queued: %s", environ.get("REQUEST_METHOD"))
    if METRICS_ENABLED:
        service, method = environ.get("HTTP_X_SERVICE_NAME"), environ.get("REQUEST_METHOD")
        observation = (service, method, metrics.UNMATCHED_ROUTE, CLIENT_CLOSED_REQUEST, current.settings.known_services)
        metrics.server_observations.add((*observation, waited))
    start_response(f"{CLIENT_CLOSED_REQUEST} Client Closed Request", [("Content-Length", "0"), ("Connection", "close")])
    return [b""]


def _nothing() -> None:
    pass


class PriorityThreadWorker(ThreadWorker):  # type: ignore[misc]  # gunicorn has no type hints
    """gunicorn's gthread worker whose waiting requests are taken by priority (see the module)."""

    _stopping = False

    def init_process(self) -> None:
        if ACCEPT_QUEUES_AT_ONCE[0] <= gunicorn.version_info < ACCEPT_QUEUES_AT_ONCE[1]:
            self.log.warning(
                "PriorityThreadWorker under gunicorn %s: this gunicorn queues a new connection as soon as it "
                "accepts it, so a request whose bytes were not there yet is queued at the default priority "
                "(requests on kept-alive connections are ordered); gunicorn 22-23 and 25.2 or later order both",
                gunicorn.__version__,
            )
        super().init_process()

    def get_thread_pool(self) -> PriorityThreadPool:
        return PriorityThreadPool(
            self.cfg.threads, self._rank, name="gunicorn-priority", on_length=_QueueLength(), on_start=_queue_wait
        )

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.wsgi: Any = QueueWaitApp(self.wsgi, self.log)

    def enqueue_req(self, conn: Any) -> None:
        if not self._arrives_later(conn):
            super().enqueue_req(conn)

    def _arrives_later(self, conn: Any) -> bool:
        """Put a new connection whose request has not arrived yet on the poller, as gunicorn puts one
        a thread gave up waiting for; it is queued when readable, with its priority known.

        gthread queues a connection as soon as it accepts it and a thread then waits for the request
        (up to 5 s), so the queue's order could not see a new connection's priority. The connection
        waits as long as gthread would let it (5 s, then ``--keep-alive``). Only where the worker
        keeps gunicorn's list of connections waiting for data (``pending_conns``), and not over TLS.
        """
        if conn.initialized or getattr(conn, "data_ready", True) or self.cfg.is_ssl:
            return False
        pending, poller = getattr(self, "pending_conns", None), getattr(self, "poller", None)
        on_readable = getattr(self, "on_pending_socket_readable", None)
        if pending is None or poller is None or on_readable is None:
            return False
        if peek(conn.sock, 1) is not None:
            return False  # the request, the end of the stream or an error: the thread meets it as in gthread
        conn.sock.setblocking(False)
        conn.timeout = time.monotonic() + FIRST_BYTES_TIMEOUT + self.cfg.keepalive
        pending.append(conn)
        poller.register(conn.sock, selectors.EVENT_READ, functools.partial(on_readable, conn))
        return True

    def murder_pending(self) -> None:
        """Close the connections whose first bytes did not come in time; once the worker stops (a
        signal, ``--max-requests``), those still waiting get :data:`STOP_LINGER` more at most.

        Without the cap a stop would wait for each its whole 5 s + ``--keep-alive``; and gunicorn
        25.2-27.0.0 sleep on the poller during a stop until the graceful timeout (30 s) unless
        something wakes them, so a timer wakes the loop when the linger ends.
        """
        if not self.alive and not self._stopping:
            self._stopping = True
            deadline = time.monotonic() + STOP_LINGER
            for conn in self.pending_conns:
                conn.timeout = min(conn.timeout, deadline)  # one deadline for all: the deque stays sorted
            defer = getattr(getattr(self, "method_queue", None), "defer", None)  # absent: nothing to wake
            if defer is not None:
                waker = threading.Timer(STOP_LINGER, defer, args=(_nothing,))
                waker.daemon = True
                waker.start()
        super().murder_pending()

    def _rank(self, args: tuple[Any, ...]) -> tuple[int, float]:
        """The queue rank of ``handle(conn)`` (:func:`_pool_rank`: by priority, then with a deadline
        before without) and when it is to be taken ahead of any other: when its caller gives up, or
        once it waited as long as it may (:func:`_queue_bound`), whichever comes first.

        It runs on gunicorn's main loop, where an exception would end the worker with every request
        it holds: one that cannot be ranked (settings that do not load, an app that is not Django)
        queues at normal priority without expiring, and the first such failure is logged.
        """
        try:
            conn = args[0] if args else None
            sock = getattr(conn, "sock", None)
            claims = NOTHING
            if sock is not None and not self.cfg.is_ssl:
                ahead, waiting = _read_ahead(conn), _peek(sock)
                if not ahead and waiting == b"":
                    # No request: the caller hung up (a kept-alive connection it closed, a check that
                    # the port listens), or the socket failed. Handling it only closes it: at once,
                    # as expired, rather than hold the connection after every request with a deadline.
                    return _HUNG_UP, time.monotonic()
                claims = read_claims(ahead + (waiting or b""))
            priority, seconds = queue_priority(claims), queue_timeout(claims)
            if seconds == math.inf:
                return _pool_rank(priority, False), time.monotonic() + _queue_bound()
            return _pool_rank(priority, True), time.monotonic() + min(seconds, _queue_bound())
        except Exception:
            if not getattr(self, "_rank_failed", False):
                self._rank_failed = True
                self.log.exception(  # gunicorn's error log
                    "PriorityThreadWorker could not rank a request by priority: requests it cannot rank are "
                    "queued at normal priority, in arrival order (logged once per worker)"
                )
            return _pool_rank(Priority.NORMAL, False), math.inf
