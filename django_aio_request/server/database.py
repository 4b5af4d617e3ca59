"""Bound every PostgreSQL query by the deadline in the context (Django layer).

With ``AIO_REQUEST["DATABASE_STATEMENT_TIMEOUT"] = True``, a query sent on a PostgreSQL connection
while a deadline is in the context (``get_context().deadline``: set per request by the middleware
from ``X-Request-Timeout``) ends by that deadline:

- Each connection that ran a query under a deadline has a timer at that deadline (less
  :data:`CANCEL_LEAD`). If a query of the connection is still running when it fires, the timer
  sends PostgreSQL a cancel request for it (``Connection.cancel_safe()``, the wire protocol's
  CancelRequest). That reaches every statement the server runs for the connection, whatever it is:
  the ``DECLARE ... WITH HOLD`` of ``.iterator()`` outside a transaction (whose query runs at the
  implicit commit, where ``statement_timeout`` does not reach), ``FETCH`` from a server-side cursor,
  a whole ``executemany`` batch, DDL. Nothing is parsed and nothing is ``SET``: the application's
  own ``statement_timeout`` stays exactly what it made it, and nothing of one request's deadline
  stays on the connection.
- A query sent when the deadline is (all but) up is not sent: :class:`DeadlineExceeded` at once.
  Statements that only end a transaction or a savepoint still go, so cleaning up always works.
- A query the timer cancelled raises :class:`DeadlineExceeded` in place of the driver's error.
- When the server cannot be told (its cancel request got no answer within :data:`CANCEL_TIMEOUT`:
  a network partition, a proxy that drops cancel requests) or the statement has not ended
  :data:`CANCEL_TIMEOUT` after it was told (the connection's own packets lost), the connection's
  socket is shut down: the thread waiting on it gets an error at once (:class:`DeadlineExceeded`)
  and Django opens a new connection for the next request. Without it the request waited for the
  statement's end, or for TCP to give up on a dead network (minutes). Inside ``atomic()`` the
  connection is closed as the statement raises (Django's "closed in transaction"): the block's exit
  touches it no more and opens no new one.
- Django's health check (``CONN_HEALTH_CHECKS``: ``is_usable()``'s ``SELECT 1`` on the driver's
  cursor) is bounded like a query when it runs under a deadline, and a connection the deadline
  closed is not opened again while the deadline is up: :class:`DeadlineExceeded`.
- psycopg 3's ``cursor.copy()`` and ``cursor.stream()`` send their statement without passing an
  execute wrapper: the connection's cursor wrappers bound them the same way, for as long as the
  ``with cursor.copy(...)`` block or the iteration over ``cursor.stream(...)`` lasts.

The middleware turns those into a 408 (see :func:`catch_deadline_below`), also when they come
from below the view (an inner middleware's ``process_response``, a signal). See
``docs/database.md``. Other backends (SQLite, MySQL, ...) are left alone.
"""

import collections
import contextlib
import functools
import itertools
import logging
import os
import re
import socket
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Generator, Iterator
from types import TracebackType
from typing import Any, TypeVar

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.signals import got_request_exception, request_finished
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created
from django.db.utils import DatabaseError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase

from django_aio_request.conf.current import current
from django_aio_request.core.context import get_context
from django_aio_request.core.deadline import Deadline
from django_aio_request.metrics import server as metrics
from django_aio_request.server.log_text import escaped
from django_aio_request.server.view_timeout import deadline_answer_headers
from django_aio_request.transport.deadline_timer import deadline_timer

__all__ = [
    "CANCEL_LEAD",
    "SETTING_KEY",
    "DeadlineBelowView",
    "DeadlineExceeded",
    "QueryBound",
    "attach",
    "catch_deadline_below",
    "install",
    "is_deadline_cancellation",
    "is_enabled",
    "wrapper_for",
]

logger = logging.getLogger("django_aio_request.server.database")

SETTING_KEY = "DATABASE_STATEMENT_TIMEOUT"

#: The timer fires this long before the deadline: a cancel request (a new connection to the server)
#: takes 2-6 ms on the same host, more under load; a query sent with less time left is refused.
CANCEL_LEAD = 0.01
#: A cancel request that has not gone through after this long is given up (and logged), and the
#: connection is closed; so is one whose cancelled statement has not ended this long after.
CANCEL_TIMEOUT = 2.0
#: After a cancel request went through, how often another is sent while the statement has not returned.
RECANCEL_EVERY = 0.1
#: SQLSTATE of PostgreSQL's query_canceled: a cancel request, or statement_timeout.
QUERY_CANCELED = "57014"

# Statements that only end a transaction or a savepoint: sent even after the deadline (atomic()'s
# cleanup). A full match, so nothing can ride along: "ROLLBACK; SELECT ..." is not one of them.
_ENDS_TRANSACTION = re.compile(
    r"\s*(?:(?:ROLLBACK|ABORT|COMMIT|END)(?:\s+(?:WORK|TRANSACTION))?"
    r'|(?:ROLLBACK(?:\s+(?:WORK|TRANSACTION))?\s+TO|RELEASE)(?:\s+SAVEPOINT)?\s+(?:"[^"]+"|\w+))\s*;?\s*',
    re.IGNORECASE,
)
_forks = 0  # how many times this process's ancestors forked: QueryBound state from before is void
# Set on a request whose AioRequestMiddleware turns a deadline into 408 (its sync path writes the name out).
_CATCHER = "_aio_request_catches_deadline"
# The query_canceled errors of statements the bound had not cancelled (the application's own
# statement_timeout, a pg_cancel_backend of someone's): never the deadline's, whenever they are
# judged (is_deadline_cancellation), also once the deadline is up. Kept here rather than in an
# attribute of the error: psycopg2's errors pickle and copy their SQLSTATE only while their
# __dict__ is empty (a review: an attribute cost a pickled error its pgcode).
_not_the_deadlines: "weakref.WeakSet[BaseException]" = weakref.WeakSet()


# What a DeadlineExceeded whose transaction is lost adds to its message.
_LOST = (
    " (the transaction it was in is lost: nothing it wrote is committed, the enclosing atomic blocks' writes included)"
)


class DeadlineExceeded(OperationalError):
    """A database query ran out of the deadline in the context.

    Raised before the query is sent when the deadline is (all but) up (``sent`` is False), and in
    place of the driver's query_canceled when the deadline's timer cancelled the query (``sent``
    is True; the driver's error is the ``__cause__``). An ``OperationalError``, like the error it
    replaces, so existing handlers of database errors still catch it.
    """

    def __init__(
        self, message: str, *, alias: str = "", sent: bool = False, sql: str = "", transaction_lost: bool = False
    ) -> None:
        super().__init__(message)
        self.alias = alias
        self.sent = sent
        #: The start of the statement (placeholders, never parameters): what was lost.
        self.sql = sql
        #: The whole transaction is lost: the connection was closed inside it (its cancel request got
        #: no answer), or the statement cancelled had no savepoint of its own to roll back to (it ran
        #: in the outermost ``atomic()`` block, one made with ``savepoint=False``, or a transaction of
        #: the application's own). The server rolls back what the enclosing ``atomic()`` blocks wrote
        #: before too, and the outermost block ends without committing and without an error. A view
        #: that catches this must not carry on as if only the query failed (docs/database.md).
        self.transaction_lost = transaction_lost


def _no_savepoint_of_its_own(connection: BaseDatabaseWrapper) -> bool:
    """Whether a statement that failed on ``connection`` took its whole transaction with it: it ran in
    a transaction (an ``atomic()`` block, or the application's own with autocommit off) whose
    innermost block has no savepoint to roll back to (the outermost block, one made with
    ``savepoint=False``, ``durable=True``, or none). PostgreSQL then refuses every statement until
    the transaction ends, and its end rolls back all it wrote: the outermost block ended without
    an error and committed nothing, where the view had caught the deadline and answered 200 with
    ``transaction_lost`` False (a review)."""
    if connection.get_autocommit():
        return False
    savepoints = connection.savepoint_ids
    return not savepoints or savepoints[-1] is None


def is_deadline_cancellation(exc: BaseException) -> bool:
    """True for a query stopped by the deadline in the context: a :class:`DeadlineExceeded` (raised
    or wrapped), or a query_canceled (SQLSTATE 57014) that came when that deadline was up (a
    cancel request that reached a statement sent outside Django's cursors).

    A ``statement_timeout`` of the application's own that fires before the deadline is the
    application's error, not the deadline's: False; one that reached the bound before the deadline's
    last moments is that too when the deadline is up by the time it is judged (the bound had sent no
    cancel request for it). With ``DATABASE_STATEMENT_TIMEOUT`` off nothing cancels a query at the
    deadline, so only a :class:`DeadlineExceeded` counts.
    """
    deadline: Deadline | None = None
    for error in _chain(exc):
        if isinstance(error, DeadlineExceeded):
            return True
        if _sqlstate(error) == QUERY_CANCELED and error not in _not_the_deadlines and is_enabled():
            deadline = deadline or get_context().deadline
            if deadline is not None and deadline.timeout <= CANCEL_LEAD:
                return True
    return False


def is_enabled() -> bool:
    """``AIO_REQUEST["DATABASE_STATEMENT_TIMEOUT"]`` (see ``CurrentSettings.database_statement_timeout``)."""
    return current.database_statement_timeout


def install() -> None:
    """Bound the queries of every PostgreSQL connection by the context's deadline.

    Called from ``AppConfig.ready()``. Idempotent. Reads no setting (``ready()`` must not fail on an
    invalid ``AIO_REQUEST``: ``manage.py check`` reports it) and also equips the connections this
    thread has already made (open, or made and not connected yet). The bound goes on every
    PostgreSQL connection and reads the setting per query, so ``override_settings`` turns the
    feature on and off.
    """
    uid = "django_aio_request.server.database"
    connection_created.connect(_connection_created, dispatch_uid=f"{uid}.connection_created")
    request_finished.connect(_request_finished, dispatch_uid=f"{uid}.request_finished")
    got_request_exception.connect(_got_request_exception, dispatch_uid=f"{uid}.got_request_exception")
    _equip_new_connections()
    for connection in connections.all(initialized_only=True):
        if connection.connection is not None:
            attach(connection)
        elif connection.vendor == "postgresql":
            # Made and not connected yet: Django makes this thread's default connection while it
            # imports the models, before ready(). Unguarded, its first connect failed past the
            # deadline with a 500 (gunicorn's sync worker serves on this thread).
            _guard_connects(connection)


def attach(connection: BaseDatabaseWrapper) -> "QueryBound | None":
    """Put the bound on a PostgreSQL connection (once); None for other backends."""
    if connection.vendor != "postgresql":
        return None
    bound = wrapper_for(connection)
    if bound is None:
        bound = QueryBound(connection.alias)
        # First in the list (the outermost wrapper), not last: a connection opened inside an app's
        # ``with connection.execute_wrapper(w):`` block would otherwise have the bound appended after
        # ``w``, and the block's exit, which pops the last wrapper, would take the bound off instead.
        connection.execute_wrappers.insert(0, bound)
        _bound_copy_and_stream(connection)
        _guard_connects(connection)
        _bound_health_check(connection, bound)
    return bound


def wrapper_for(connection: BaseDatabaseWrapper) -> "QueryBound | None":
    """The connection's :class:`QueryBound`, if it has one."""
    for wrapper in connection.execute_wrappers:
        if isinstance(wrapper, QueryBound):
            return wrapper
    return None


Execute = Callable[[str, Any, bool, dict[str, Any]], Any]
_T = TypeVar("_T")


class QueryBound:
    """The execute wrapper of one PostgreSQL connection (one ``DatabaseWrapper``, so one thread).

    It keeps one timer per connection, at the deadline of the last query that ran under one: a
    request's queries share it, and a query under the same deadline costs a comparison. ``busy``
    counts the statements of ours under way (an application's execute wrapper may run one of its own
    inside ours: a flag the inner one cleared left the outer one unbounded); the timer cancels only then, so a deadline
    that passes while the connection is idle costs the server nothing.

    ``lock`` orders the timer's cancel request against the owner thread: the owner clears ``busy``
    and moves the timer while holding it, so a cancel request is either sent while the statement
    it was meant for is still running, or not at all (libpq's cancel returns once the server has
    passed the signal on, and a signal that reaches an idle backend is dropped).
    """

    def __init__(self, alias: str) -> None:
        self.alias = alias
        #: Cancel requests sent; statements refused because the deadline was up.
        self.cancels = 0
        self.refused = 0
        self.lock = threading.Lock()
        self.busy = 0
        self._due: float | None = None  # the deadline the timer is at, on the monotonic clock
        self._timer_at: float | None = None  # when the earliest pending timer entry fires
        self._generation = 0
        self._cancelled = -1  # the generation whose timer sent a cancel request
        self._severed = -1  # the generation whose connection was shut down (the cancel did not end it)
        # Statements returned (counted before the owner takes the lock to clear busy): a cancel that
        # holds the lock can tell the statement it was sent for has ended meanwhile.
        self._ended = 0
        # Django's connection the raw one belongs to; weak, as it holds this bound (its execute
        # wrappers): a strong reference made a cycle that kept closed connections until the GC ran.
        self._wrapper: weakref.ref[BaseDatabaseWrapper] | None = None
        self._raw: Any = None  # the driver connection the timer cancels on
        # The driver connection _close_severed closed inside a transaction: Django keeps it until
        # the outermost atomic block ends (closed in transaction), and a cursor made on it failed.
        self.closed_at_deadline: Any = None
        self._forks = _forks  # the process this state belongs to (see _after_fork)

    def __repr__(self) -> str:
        return f"<QueryBound {self.alias!r} due={self._due} busy={self.busy}>"

    @property
    def armed(self) -> bool:
        """Whether a timer is waiting to cancel this connection's query at a deadline."""
        return self._due is not None

    def __call__(self, execute: Execute, sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        deadline = get_context().deadline if current.database_statement_timeout else None
        if deadline is None:
            if self._due is not None:
                self.disarm()
            return execute(sql, params, many, context)
        result = self._bounded(deadline, context["connection"], sql, execute, sql, params, many, context)
        cursor = context["cursor"]
        if getattr(cursor.cursor, "name", None):  # a server-side cursor: its FETCHes skip execute wrappers
            self._bound_fetches(cursor, context["connection"], sql)
        return result

    def _bounded(
        self, deadline: Deadline, connection: BaseDatabaseWrapper, sql: object, call: Callable[..., _T], *args: Any
    ) -> _T:
        """Run ``call(*args)`` (one statement's round trip) so that it ends by ``deadline``."""
        self.busy += 1  # before the clock is read: a timer that saw busy 0 fired before the check below
        try:
            generation = self._start(deadline, connection, sql)
            try:
                return call(*args)
            except Exception as error:
                self._raise_if_cancelled(error, generation, sql, connection)
                raise
        finally:
            self._ended += 1
            with self.lock:
                self.busy -= 1

    @contextlib.contextmanager
    def spanning(self, deadline: Deadline, connection: BaseDatabaseWrapper, sql: object) -> Generator[None]:
        """:meth:`_bounded` for a statement whose round trips span a block of the caller's code:
        psycopg 3's ``copy()`` (the ``with`` block) and ``stream()`` (the iteration). The statement
        is on the wire, and cancelled at the deadline, until the block ends. The same steps as
        :meth:`_bounded`, which does not go through this: it runs for every query, and a generator
        context manager would cost each one a microsecond or so."""
        self.busy += 1
        try:
            generation = self._start(deadline, connection, sql)
            try:
                yield
            except Exception as error:
                self._raise_if_cancelled(error, generation, sql, connection)
                raise
        finally:
            self._ended += 1
            with self.lock:
                self.busy -= 1

    def _start(self, deadline: Deadline, connection: BaseDatabaseWrapper, sql: object) -> int:
        """With ``busy`` set: refuse the statement if the deadline is (all but) up, else point the
        timer at the deadline; the generation a cancel request for this statement will carry."""
        if deadline.timeout <= CANCEL_LEAD:
            if not (isinstance(sql, str) and _ENDS_TRANSACTION.fullmatch(sql)):
                self.refused += 1
                raise DeadlineExceeded(
                    f"the deadline was up before the query was sent to database {self.alias!r} "
                    f"({deadline.timeout * 1000:.1f} ms left): {_head(sql)}",
                    alias=self.alias,
                    sql=_head(sql),
                )
            self.disarm()  # waits for a cancel request in progress: it cannot reach this statement
        elif deadline.expires_at != self._due or connection.connection is not self._raw:
            self._wrapper = weakref.ref(connection)
            self._arm(deadline.expires_at, connection.connection)
        return self._generation

    def _raise_if_cancelled(
        self, error: Exception, generation: int, sql: object, connection: BaseDatabaseWrapper
    ) -> None:
        """Raise :class:`DeadlineExceeded` from ``error`` if the timer's cancel request ended the statement."""
        if self._severed == generation:
            # Inside atomic() (closed here), or in a transaction of the application's own
            # (set_autocommit(False): left to Django, whose next set_autocommit fails): either way
            # the server rolls back all the transaction wrote.
            lost = self._close_severed(connection) or not connection.autocommit
            if lost:
                logger.warning(
                    "the transaction on database %r is lost: its connection was closed at the deadline, the server"
                    " rolls back all it wrote, and no atomic block around it commits (their on_commit callbacks"
                    " dropped), also where the view catches the deadline",
                    self.alias,
                )
            raise DeadlineExceeded(
                f"database {self.alias!r} did not end the query at the deadline, and its connection was "
                f"closed{_LOST if lost else ''}: {_head(sql)}",
                alias=self.alias,
                sent=True,
                sql=_head(sql),
                transaction_lost=lost,
            ) from error
        if self._cancelled == generation and _sqlstate_in_chain(error) == QUERY_CANCELED:
            lost = _no_savepoint_of_its_own(connection)
            raise DeadlineExceeded(
                f"database {self.alias!r} cancelled the query at the deadline{_LOST if lost else ''}: {_head(sql)}",
                alias=self.alias,
                sent=True,
                sql=_head(sql),
                transaction_lost=lost,
            ) from error
        due = self._due
        if due is not None and time.monotonic() >= due - CANCEL_LEAD:
            return  # the deadline's cancel may be on its way too: left to the clock (both fired)
        cause: BaseException | None = error
        for _ in range(8):  # this statement's error and the driver's below it, not what it was
            # raised while handling (a query the deadline did cancel: a review)
            if cause is None:
                break
            if _sqlstate(cause) == QUERY_CANCELED:
                # Ended before the deadline and not cancelled here (a cancel request sets _cancelled
                # before it is sent): the application's own. Judged by the clock later, after the
                # deadline passed while Django answered it (a slow error reporter), it read as the
                # deadline's 408 (a review).
                _not_the_deadlines.add(cause)
            cause = cause.__cause__

    def _close_severed(self, connection: BaseDatabaseWrapper) -> bool:
        """In the owner thread, as its statement fails inside ``atomic()``: close Django's connection
        whose socket :meth:`_sever` shut down, the way Django closes one that broke in a transaction
        (which the server rolls back). The block's exit then sends no ``ROLLBACK`` or ``COMMIT`` on
        it, which failed with an error that was not the deadline's (a 500, also where the view had
        caught the deadline and answered), and opens no new connection to restore autocommit, which
        made the 408 wait for that connect (``connect_timeout``, or for ever when the server hangs).
        Outside a transaction the connection is left to Django, which closes it when the request
        ends (``errors_occurred``, set by :meth:`_sever`). Whether it closed one inside a transaction,
        which is then lost whole (the caller logs it, as nothing else may say so: a view that caught
        the deadline in a nested block and carried on answered 200 for writes never committed, a review)."""
        if not connection.in_atomic_block or connection.connection is not self._raw:
            return False
        self.closed_at_deadline = self._raw
        try:
            connection.close()
        except Exception as error:  # its socket is shut down: closing may fail, it is closed all the same
            logger.debug("closing the severed connection of database %r: %s", self.alias, error)
        return True

    def _bound_fetches(self, cursor: Any, connection: BaseDatabaseWrapper, sql: object) -> None:
        """Route the cursor's fetches through :meth:`_bounded`: each is a FETCH statement that
        runs (part of) the query on the server and never passes an execute wrapper. So is its
        ``close()``, a CLOSE statement (:meth:`_closer`)."""
        if "fetchmany" in vars(cursor):
            return  # executed again: its fetches are bounded already
        for name in ("fetchone", "fetchmany", "fetchall"):
            fetch = getattr(cursor, name)  # Django's error-wrapping method of the driver cursor
            setattr(cursor, name, self._fetcher(fetch, connection, sql))
        cursor.close = self._closer(cursor.close, connection)

    def _fetcher(self, fetch: Callable[..., _T], connection: BaseDatabaseWrapper, sql: object) -> Callable[..., _T]:
        def bounded_fetch(*args: Any) -> _T:
            deadline = get_context().deadline if is_enabled() else None
            if deadline is None:
                return fetch(*args)
            return self._bounded(deadline, connection, sql, fetch, *args)

        return bounded_fetch

    def _closer(self, close: Callable[[], None], connection: BaseDatabaseWrapper) -> Callable[[], None]:
        """The server-side cursor's ``close()``, which sends ``CLOSE`` (Django calls it when an
        ``.iterator()`` ends, however it ends), outside a transaction. Before the deadline it is
        bounded like a fetch. After it, it is sent all the same, since the cursor (a WITH HOLD one
        outside a transaction) would otherwise stay open on the server, but on a server that does not
        answer it is cut off CANCEL_TIMEOUT later. Unbounded, a fetch refused at the deadline was followed by a CLOSE
        that waited for a server gone silent as long as it stayed so (a review: 12 s for a 0.5 s
        deadline)."""

        def bounded_close() -> None:
            deadline = get_context().deadline if is_enabled() else None
            if deadline is None or connection.in_atomic_block:
                # Inside a transaction the cursor is WITHOUT HOLD and ends with it; its CLOSE goes as
                # COMMIT and ROLLBACK go, unbounded. Cut off there, the connection was closed in the
                # transaction, and the error raised where Django closes the cursor (a generator's
                # finaliser, after a `break`) is ignored by Python: atomic() then ended quietly and the
                # view answered 200 for a write never committed (a review).
                close()
            elif deadline.timeout > CANCEL_LEAD:
                self._bounded(deadline, connection, "CLOSE", close)
            else:
                self._past_deadline(connection, "CLOSE", close)

        return bounded_close

    def _past_deadline(self, connection: BaseDatabaseWrapper, sql: str, call: Callable[[], None]) -> None:
        """Run ``call`` (a statement let through after the deadline) with no cancel request, which
        could end a healthy one, and the connection shut down if it has not returned CANCEL_TIMEOUT
        from now (:meth:`_sever_if_running`)."""
        self.busy += 1
        try:
            with self.lock:
                self._generation += 1
                self._due = None  # the deadline's timer has nothing left to cancel
                generation = self._generation
                self._raw = connection.connection
                self._wrapper = weakref.ref(connection)
            ended = self._ended
            sever_at = time.monotonic() + CANCEL_TIMEOUT
            unwatch = deadline_timer.schedule(
                sever_at, functools.partial(self._check_ended, generation, ended, sever_at, sent_late=True)
            )
            try:
                call()
            except Exception as error:
                self._raise_if_cancelled(error, generation, sql, connection)
                raise
            finally:
                unwatch()
        finally:
            self._ended += 1
            with self.lock:
                self.busy -= 1

    def _arm(self, due: float, raw: Any) -> None:
        """Point the timer at ``due``. A timer entry is added only when ``due`` comes before the one
        pending; a later ``due`` is picked up when that one fires (see :meth:`_timer`). So a stream
        of requests with the same timeout schedules about one entry per timeout, not one per request."""
        if self._forks != _forks:
            self._forget_parent()
        with self.lock:
            self._generation += 1
            self._due = due
            self._raw = raw
            fire_at = due - CANCEL_LEAD
            if self._timer_at is None or fire_at < self._timer_at:
                self._schedule(fire_at)

    def _forget_parent(self) -> None:
        """In a forked child: the parent's timer entries are gone (the deadline timer starts afresh)
        and its lock may have been held by a thread that does not exist here."""
        self.lock = threading.Lock()
        self._due = self._timer_at = None
        self._forks = _forks

    def disarm(self) -> None:
        """Forget the deadline (after a cancel request in progress has gone through); the pending
        timer entry finds nothing to do when it fires."""
        with self.lock:
            self._generation += 1
            self._due = None

    def _schedule(self, fire_at: float) -> None:
        self._timer_at = fire_at
        # Weakly: this bound holds its driver connection, and the timer's entry lived until the
        # deadline. Under ASGI each request's sync code runs in a thread of its own, whose
        # connection Django leaves open (CONN_MAX_AGE > 0) until the thread's objects go: every
        # request's connection stayed open for its whole deadline (20 s by default) after it ended.
        deadline_timer.schedule(fire_at, functools.partial(_timer_of, weakref.ref(self), fire_at))

    def _timer(self, fire_at: float) -> None:
        """On the deadline timer's thread: at the deadline, hand a cancel over to a thread that may block;
        before it (the connection moved on to a later deadline), wait on for that one."""
        if not self.lock.acquire(blocking=False):
            # A cancel request holds the lock (up to CANCEL_TIMEOUT): never make the shared deadline timer,
            # which also bounds HTTP calls, wait for it.
            _cancellers().submit(self._timer_locked, fire_at)
            return
        try:
            self._fire(fire_at)
        finally:
            self.lock.release()

    def _timer_locked(self, fire_at: float) -> None:
        with self.lock:
            self._fire(fire_at)

    def _fire(self, fire_at: float) -> None:
        """With the lock held."""
        if fire_at != self._timer_at:
            return  # an entry an earlier one replaced
        self._timer_at = None
        if self._due is None:
            return
        due_at = self._due - CANCEL_LEAD
        if time.monotonic() < due_at:
            self._schedule(due_at)
        elif self.busy and self._cancelled != self._generation:
            _cancellers().submit(self._cancel, self._generation)

    def _cancel(self, generation: int) -> None:
        with self.lock:
            if not self.busy or generation != self._generation:
                return  # the statement ended, or the connection moved on to another deadline
            self._cancelled = generation
            self.cancels += 1
            ended = self._ended
            if not self._send_cancel(generation, ended):
                return
        # Told: the statement ends at once, unless its connection's own packets are lost.
        sever_at = time.monotonic() + CANCEL_TIMEOUT
        self._look_again(generation, ended, sever_at)

    def _send_cancel(self, generation: int, ended: int, timeout: float | None = None) -> bool:
        """(Holding the lock.) Send the server a cancel request for what runs on the connection now,
        waiting for it at most ``timeout`` (None: CANCEL_TIMEOUT); whether it was sent (if not, the
        connection is severed, or the statement ended meanwhile)."""
        raw = self._raw
        try:
            cancel_safe = getattr(raw, "cancel_safe", None)
            if cancel_safe is not None:  # psycopg 3: waits without holding the GIL, with a timeout
                cancel_safe(timeout=CANCEL_TIMEOUT if timeout is None else timeout)
            else:  # psycopg2
                raw.cancel()
        except Exception as error:
            if self._ended == ended:  # not when the statement returned while the cancel hung: its
                self._sever(generation, f"could not cancel it ({error})")  # rows are the caller's
            else:
                logger.warning(
                    "could not cancel a query of database %r at its deadline (%s); it ended meanwhile",
                    self.alias,
                    error,
                )
            return False
        return True

    def _look_again(self, generation: int, ended: int, sever_at: float) -> None:
        later = min(time.monotonic() + RECANCEL_EVERY, sever_at)
        deadline_timer.schedule(later, functools.partial(self._check_ended, generation, ended, sever_at))

    def _check_ended(self, generation: int, ended: int, sever_at: float, *, sent_late: bool = False) -> None:
        """On the deadline timer's thread, which must never wait for the lock (a cancel request may hold it)."""
        _cancellers().submit(self._sever_if_running, generation, ended, sever_at, sent_late)

    def _sever_if_running(self, generation: int, ended: int, sever_at: float, sent_late: bool = False) -> None:
        """After a cancel request went through: while the statement it was sent for has not returned,
        send another every RECANCEL_EVERY, and shut the connection down at ``sever_at``.

        Another, since what runs may be a statement sent after the cancel ended the first: an execute
        wrapper of the application's that sends a failed statement again runs it within the bound's
        one call, past the deadline; with one cancel it ran until the connection was shut down, 2 s
        later, and on in the server after it (a review: 7 of 7 requests, the retried ``pg_sleep``
        still active). A cancel request that finds nothing running cancels nothing."""
        with self.lock:
            still = self.busy and self._ended == ended  # the statement the cancel was sent for, not a later one
            if not (still and generation == self._generation and self._severed != generation):
                return
            if time.monotonic() >= sever_at:
                after = "it was sent, after the deadline" if sent_late else "it was cancelled"
                self._sever(generation, f"it was still running {CANCEL_TIMEOUT:g} s after {after}")
                return
            if not self._send_cancel(generation, ended, timeout=max(0.01, sever_at - time.monotonic())):
                return
        self._look_again(generation, ended, sever_at)

    def _sever(self, generation: int, why: str) -> None:
        """With the lock held: shut the connection's socket down, so the thread waiting for the
        statement's answer gets an error now. The statement may run on in the server until it
        notices; the next request gets a new connection."""
        self._severed = generation
        logger.warning("a query of database %r ran past its deadline and %s: its connection is closed", self.alias, why)
        try:
            pgconn = getattr(self._raw, "pgconn", None)  # psycopg 3; psycopg2 has fileno()
            fileno = pgconn.socket if pgconn is not None else self._raw.fileno()
            # A duplicate of the descriptor: shutdown() acts on the socket both share, close() on the
            # duplicate alone, so the driver's descriptor is never closed under it.
            with socket.socket(fileno=os.dup(fileno)) as duplicate:
                duplicate.shutdown(socket.SHUT_RDWR)
        except Exception as error:
            logger.warning("could not close the connection of database %r: %s", self.alias, error)
        wrapper = self._wrapper() if self._wrapper is not None else None
        if wrapper is not None and wrapper.connection is self._raw:
            # Django closes a connection with errors when a request ends (close_if_unusable_or_obsolete),
            # also one whose statement returned just before the shutdown, so no later request gets it.
            wrapper.errors_occurred = True


class _CopyAndStreamBound:
    """Mixed into the class of a PostgreSQL connection's cursor wrappers (psycopg 3): ``copy()`` and
    ``stream()``, which Django passes through to the driver cursor past its execute wrappers, go
    through :meth:`QueryBound.spanning` like any statement. Django's ``CursorDebugWrapper.copy()``
    (which logs the statement) is kept: it comes next in the method order."""

    cursor: Any  # Django's CursorWrapper: the driver cursor and the connection
    db: BaseDatabaseWrapper

    @contextlib.contextmanager
    def copy(self, statement: Any, *args: Any, **kwargs: Any) -> Generator[Any]:
        inner = getattr(super(), "copy", None) or self.cursor.copy
        with _spanning(self.db, statement), inner(statement, *args, **kwargs) as copy:
            yield copy

    def stream(self, query: Any, *args: Any, **kwargs: Any) -> Generator[Any]:
        inner = getattr(super(), "stream", None) or self.cursor.stream
        with _spanning(self.db, query):
            yield from inner(query, *args, **kwargs)


def _spanning(connection: BaseDatabaseWrapper, sql: object) -> contextlib.AbstractContextManager[None]:
    bound = wrapper_for(connection)
    if bound is None:
        return contextlib.nullcontext()
    deadline = get_context().deadline if is_enabled() else None
    if deadline is None:
        if bound.armed:
            bound.disarm()
        return contextlib.nullcontext()
    return bound.spanning(deadline, connection, sql)


def _guard_connects(connection: BaseDatabaseWrapper) -> None:
    """Make the connection's ``ensure_connection()`` answer for the deadline in the context.

    - With the deadline (all but) up it raises :class:`DeadlineExceeded` rather than connect:
      whatever the connection would have sent is refused anyway, and the connect itself is not
      bounded (a server that hangs holds it for ``connect_timeout``, or for ever). Reached by a
      thread's first query with little time left (under an ASGI server every request's sync code
      runs in a thread of its own, which connects), and after the connection was closed at the
      deadline (a query after an ``atomic()`` block whose connection was shut down, Django
      restoring autocommit after a failed ``ROLLBACK``).
    - A connect that fails once the deadline has passed (``connect_timeout`` ran out on a server
      that hangs) raises :class:`DeadlineExceeded` from the driver's error: the middleware's 408,
      where it was Django's 500. One that fails in time is the database's failure and raised as it
      came.

    Put on each PostgreSQL connection as Django makes it (:func:`_equip_new_connections`), so before
    its first connect, and by :func:`attach` on those made before :func:`install`.
    """
    if "ensure_connection" in vars(connection):
        return
    owner = weakref.ref(connection)  # the connection holds this function: no cycle through it

    def ensure_connection() -> None:
        connection = owner()
        assert connection is not None  # it is calling its own method
        bound = wrapper_for(connection)
        closed = None if bound is None else bound.closed_at_deadline
        if closed is not None:
            assert bound is not None
            if connection.closed_in_transaction and connection.connection is closed:
                # Closed at the deadline inside atomic(): a cursor on it failed with the driver's
                # "the connection is closed" (not the deadline's error: a 500), until the outermost
                # block ended, as in a nested block whose deadline the view caught.
                bound.refused += 1
                raise DeadlineExceeded(
                    f"database {bound.alias!r}'s connection was closed at the deadline inside this transaction{_LOST}",
                    alias=bound.alias,
                    transaction_lost=True,
                )
            bound.closed_at_deadline = None  # the transaction ended: Django has let it go
        # The class's method looked up at each call, not kept: pytest-django blocks database access
        # by replacing it on the class between tests.
        if connection.connection is not None or not current.database_statement_timeout:
            type(connection).ensure_connection(connection)
            return
        deadline = get_context().deadline
        if deadline is None:
            type(connection).ensure_connection(connection)
            return
        if deadline.timeout <= CANCEL_LEAD:
            if bound is not None:
                bound.refused += 1
            raise DeadlineExceeded(
                f"the deadline was up before connecting to database {connection.alias!r} "
                f"({deadline.timeout * 1000:.1f} ms left)",
                alias=connection.alias,
            )
        try:
            type(connection).ensure_connection(connection)
        except DatabaseError as error:
            if deadline.timeout > 0:
                raise  # failed in time: the database's failure, not the deadline's
            raise DeadlineExceeded(
                f"connecting to database {connection.alias!r} failed after the deadline: {error}",
                alias=connection.alias,
            ) from error

    connection.ensure_connection = ensure_connection  # type: ignore[method-assign]


def _equip_new_connections() -> None:
    """Guard the connects (:func:`_guard_connects`) of each PostgreSQL connection Django makes from
    now on (one per thread and alias), before its first connect: ``connection_created``, where the
    rest of the bound goes on, comes after it. Django has no signal for a connection object made,
    so the handler's ``create_connection`` is wrapped, once."""
    create = connections.create_connection
    if getattr(create, "_aio_request_guard", False):
        return

    def create_connection(alias: str) -> BaseDatabaseWrapper:
        connection = create(alias)
        if connection.vendor == "postgresql":
            _guard_connects(connection)
        return connection

    create_connection._aio_request_guard = True  # type: ignore[attr-defined]
    connections.create_connection = create_connection  # type: ignore[method-assign]


#: What a health check's refusal or cancellation names as lost.
HEALTH_CHECK = "SELECT 1 (Django's CONN_HEALTH_CHECKS)"


def _bound_health_check(connection: BaseDatabaseWrapper, bound: QueryBound) -> None:
    """Bound the connection's ``is_usable()`` like a query: with ``CONN_HEALTH_CHECKS``, Django runs
    it (a ``SELECT 1`` on the driver's cursor, past the execute wrappers) before the request's first
    query, under the request's deadline, and a server that hangs held it for ever. Cancelled or cut
    off at the deadline it returns False, like any failed check: Django closes the connection, and
    the query's connect is refused (:func:`_guard_connects`). With the deadline
    (all but) up it is refused: :class:`DeadlineExceeded`, as the query it comes before would be."""
    owner = weakref.ref(connection)  # the connection holds this function: no cycle through it

    def is_usable() -> bool:
        connection = owner()
        assert connection is not None  # it is calling its own method
        deadline = get_context().deadline if current.database_statement_timeout else None
        usable = type(connection).is_usable  # looked up at each call (see _guard_connects)
        if deadline is None or connection.connection is None:
            return bool(usable(connection))
        return bool(bound._bounded(deadline, connection, HEALTH_CHECK, usable, connection))

    connection.is_usable = is_usable  # type: ignore[method-assign]


_bounded_classes: dict[type, type] = {}


def _bound_copy_and_stream(connection: BaseDatabaseWrapper) -> None:
    """Give the cursor wrappers the connection makes from now on a bounded ``copy()`` and ``stream()``
    (psycopg 3; psycopg2's cursors have neither)."""
    from django.db.backends.postgresql.psycopg_any import is_psycopg3  # type: ignore[import-untyped]

    if not is_psycopg3:
        return
    for name in ("make_cursor", "make_debug_cursor"):
        setattr(connection, name, functools.partial(_bounded_cursor, getattr(connection, name)))


def _bounded_cursor(make: Callable[[Any], Any], cursor: Any) -> Any:
    """The cursor wrapper ``make`` returns (Django's, or the debug one with DEBUG), as an instance of
    a subclass with :class:`_CopyAndStreamBound` mixed in: the same object, nothing copied."""
    wrapped = make(cursor)
    cls = type(wrapped)
    bounded = _bounded_classes.get(cls)
    if bounded is None:
        if issubclass(cls, _CopyAndStreamBound):
            return wrapped
        bounded = type(cls.__name__, (_CopyAndStreamBound, cls), {"__module__": __name__})
        bounded = _bounded_classes.setdefault(cls, bounded)
    wrapped.__class__ = bounded
    return wrapped


def _head(sql: object) -> str:
    """The start of a statement's text, for errors and logs: never a value in it (see :func:`_text`)."""
    text = " ".join(_text(sql).split())
    return text if len(text) <= 120 else text[:117] + "..."


def _text(sql: object) -> str:
    """A statement's text with a placeholder for each value composed into it.

    Django hands the bound a ``str`` with placeholders; psycopg's ``cursor.copy()`` takes an
    ``sql.Composed`` too, whose ``str()`` is its repr, values and all (``Literal('secret')``): its
    SQL, names and placeholders are kept and each ``Literal`` written ``%s``. An object of another
    kind is named by its type alone."""
    if isinstance(sql, str):
        return sql
    if isinstance(sql, bytes):
        return sql.decode("utf-8", "replace")
    kind = type(sql)
    if kind.__module__ not in ("psycopg.sql", "psycopg2.sql"):
        return f"<{kind.__name__}>"
    if kind.__name__ == "Composed":
        return "".join(_text(part) for part in sql)  # type: ignore[attr-defined]
    string = getattr(sql, "string", None)  # psycopg2's SQL
    if kind.__name__ == "SQL" and isinstance(string, str):
        return string
    if kind.__name__ in ("SQL", "Identifier", "Placeholder"):
        try:
            return str(sql.as_string(None))  # type: ignore[attr-defined]
        except Exception:  # psycopg2's, and older psycopg 3's, want a connection
            return f"<{kind.__name__}>"
    return "%s"  # Literal, and whatever else carries a value


class _Cancellers:
    """Threads for the work that may block for up to :data:`CANCEL_TIMEOUT` (psycopg 3): cancel
    requests, each a new connection to the server (about 2 ms on the same host, longer across a
    network, 2 s when it gets no answer), and what waits for a connection's lock one of them holds. None of it may hold
    up the deadline timer's other callbacks, nor wait for another cancel request to end.

    A task starts at once: on an idle thread, else on a new one. So there is no fixed number of
    threads: as many as tasks in progress, which are a few per connection whose statement is past
    its deadline (its cancel request, at most one at a time, and the timer entries waiting for it),
    never more than a few times the connections to PostgreSQL the process has open. A thread idle
    for :attr:`IDLE` seconds ends. (A pool of 4 made the fifth of five unanswered cancel requests
    sent at once wait 2 s for a thread, and its query raise 4 s after the deadline, not 2.)
    """

    IDLE = 30.0

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._tasks: collections.deque[Callable[[], object]] = collections.deque()
        self._idle = 0  # threads waiting for a task
        self.threads = 0
        self._names = itertools.count()

    def submit(self, call: Callable[..., object], *args: Any) -> None:
        with self._condition:
            self._tasks.append(functools.partial(call, *args))
            if len(self._tasks) > self._idle:  # every idle thread has a task already: start one
                self.threads += 1
                name = f"django-aio-request-pg-cancel_{next(self._names)}"
                threading.Thread(target=self._work, name=name, daemon=True).start()
            else:
                self._condition.notify()

    def _work(self) -> None:
        while True:
            with self._condition:
                if not self._tasks:
                    self._idle += 1
                    self._condition.wait(self.IDLE)
                    self._idle -= 1
                if not self._tasks:
                    self.threads -= 1
                    return
                task = self._tasks.popleft()
            try:
                task()
            except Exception:
                logger.exception("a cancel task of the database bound failed")
            # Not kept while this thread waits (up to IDLE): a task holds its QueryBound, which holds
            # the driver's connection, and a connection the deadline cancelled stayed open 30 s after
            # its request and thread had ended (one per cancel thread of a burst).
            del task


_executor: _Cancellers | None = None
_executor_lock = threading.Lock()


def _cancellers() -> _Cancellers:
    global _executor
    if _executor is None:
        with _executor_lock:
            if _executor is None:
                _executor = _Cancellers()
    return _executor


def _after_fork() -> None:
    global _executor, _executor_lock, _forks
    _executor, _executor_lock = None, threading.Lock()  # the threads did not survive fork()
    _forks += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes (Django re-raises driver errors ``from`` them), at most a few deep.

    The error being handled when another was raised (``__context__``) is followed only from a
    database error (a rollback that failed after the query was cancelled). From any other error it
    is not: an application's ``except DatabaseError: ...`` block that then fails (a ``KeyError``,
    ``raise ValueError(...) from None``) has a bug of its own, which must answer 500 and reach the
    error log, not 408 as if the deadline had stopped it.
    """
    seen: list[BaseException] = []
    error: BaseException | None = exc
    while error is not None and len(seen) < 8 and all(error is not s for s in seen):
        seen.append(error)
        yield error
        if error.__cause__ is not None:
            error = error.__cause__
        elif _is_database_error(error) and not error.__suppress_context__:
            error = error.__context__
        else:
            error = None


def _is_database_error(error: BaseException) -> bool:
    """Django's database errors and the PostgreSQL drivers' (psycopg 3, psycopg2)."""
    return isinstance(error, DatabaseError) or type(error).__module__.partition(".")[0] in ("psycopg", "psycopg2")


def _sqlstate(error: BaseException) -> str | None:
    # psycopg 3: .sqlstate; psycopg2: .pgcode.
    state = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    return state if isinstance(state, str) else None


def _timer_of(bound: "weakref.ref[QueryBound]", fire_at: float) -> None:
    """The deadline timer's entry of a bound: nothing once the bound's connection is gone."""
    alive = bound()
    if alive is not None:
        alive._timer(fire_at)


def _sqlstate_in_chain(error: BaseException) -> str | None:
    for cause in _chain(error):
        state = _sqlstate(cause)
        if state is not None:
            return state
    return None


def _connection_created(*, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    attach(connection)


def _request_finished(**kwargs: Any) -> None:
    """Drop this thread's timers when a request ends: a later request must never meet one."""
    for connection in connections.all(initialized_only=True):
        bound = wrapper_for(connection)
        if bound is not None and bound.armed:
            bound.disarm()


# --- A deadline exceeded below the view answers 408 -------------------------------------------------


class DeadlineBelowView(Exception):
    """A deadline cancellation raised below the view (an inner middleware, a signal), carried up to
    AioRequestMiddleware past Django's exception-to-500 conversion of the middleware in between."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _got_request_exception(sender: object, request: HttpRequest | None = None, **kwargs: Any) -> None:
    """Django is about to turn an exception into a 500 (and log "Internal Server Error"): when it is
    a deadline cancellation under AioRequestMiddleware, raise it on to the middleware instead.

    Django sends this signal from ``response_for_exception`` for every layer that catches an
    exception; raising here skips that layer's 500 handler and log line, and the next layer up
    sends the signal again, until AioRequestMiddleware catches the exception (it marked the request).
    """
    if request is None or not getattr(request, _CATCHER, False):
        return
    exc = sys.exc_info()[1] or _exception_being_converted()
    if isinstance(exc, DeadlineBelowView):
        raise exc
    if exc is not None and is_deadline_cancellation(exc):
        raise DeadlineBelowView(exc) from exc


def _exception_being_converted() -> BaseException | None:
    """The exception ``response_for_exception(request, exc)`` is handling. Under ASGI Django calls it
    in a worker thread where ``sys.exc_info()`` is empty; it is then a local of that frame."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "response_for_exception" and frame.f_globals.get("__name__", "").startswith(
            "django.core.handlers"
        ):
            exc = frame.f_locals.get("exc")
            return exc if isinstance(exc, BaseException) else None
        frame = frame.f_back  # type: ignore[assignment]
    return None


def answer_if_deadline_below(request: HttpRequest, exc: Exception) -> HttpResponse | None:
    """The 408 for ``exc`` when it is the deadline run out below the view, else None (the caller
    raises it on).

    Either a :class:`DeadlineBelowView` carried up past Django's conversions, or a query cancelled at
    the deadline that reached AioRequestMiddleware as it was raised: Django's wrapper of each layer
    converts once, so a cancellation raised while it turned another error of the layer right below
    into a response (in a ``got_request_exception`` receiver, or a ``handler500`` view) went on up,
    and the wrapper above the middleware answered it 500 (a review: 408 with a middleware between).
    Raised up so, only what the bound itself raised counts (a :class:`DeadlineExceeded` in its
    chain), not a bare ``query_canceled`` judged by the clock as :func:`is_deadline_cancellation`
    judges it: the deadline may pass while Django answers the application's own
    ``statement_timeout`` error (an error reporter that calls out and fails), which stays the
    application's 500 (a review: answered 408 when judged by the clock then).

    A function of its own, so that the ``DeadlineBelowView``, whose cause's traceback holds the
    catching frame, is never a local of that frame: they would keep each other alive until the
    garbage collector ran (a review).
    """
    if isinstance(exc, DeadlineBelowView):
        below = exc
    elif any(isinstance(error, DeadlineExceeded) for error in _chain(exc)):
        below = DeadlineBelowView(exc)
    else:
        return None
    return _answer_below_view(request, below)


def _answer_below_view(request: HttpRequest, below: DeadlineBelowView) -> HttpResponse:
    """The 408 for a deadline exceeded below the view, with a log line saying what was lost."""
    cause = below.cause
    where, doing = _where(cause.__traceback__)
    lost = next((e for e in _chain(cause) if isinstance(e, DeadlineExceeded)), None)
    metrics.server_database_cancelled.inc()
    logger.warning(
        "%s %s: the deadline ran out below the view, in %s (calls: %s): answered 408, and the work left "
        "there is lost: %s",
        request.method,
        escaped(request.path),
        where,
        doing,
        lost.sql if lost is not None and lost.sql else cause,
    )
    return HttpResponse(status=408, headers=deadline_answer_headers(request, get_context().deadline))


# This package's middleware and its wrapper are plumbing too: a cancellation that reaches them raw (see
# answer_if_deadline_below) has their frame first in its traceback.
_PLUMBING = (
    "django.core.handlers.",
    "django.utils.deprecation",
    "asgiref.",
    "contextlib",
    "asyncio.",
    "concurrent.",
    "django_aio_request.server.middleware",
    "django_aio_request.server.database",
)
_DATABASE = ("django.db.", "django.utils.asyncio", "django_aio_request.", "psycopg", "contextlib")


def _where(tb: TracebackType | None) -> tuple[str, str]:
    """Where a deadline ran out: the outermost code below Django's request plumbing, by its full
    name (``django.contrib.sessions.middleware.SessionMiddleware.process_response``), and the calls
    from there down to the database layer (``SessionStore.save > SessionStore.create > ...``)."""
    frames: list[tuple[str, str]] = []
    while tb is not None:
        frames.append((str(tb.tb_frame.f_globals.get("__name__", "?")), tb.tb_frame.f_code.co_qualname))
        tb = tb.tb_next
    below = [(module, name) for module, name in frames if not module.startswith(_PLUMBING)]
    if not below:
        return "?", "?"
    outer = f"{below[0][0]}.{below[0][1]}"
    calls = [name for module, name in below[1:] if not module.startswith(_DATABASE)]
    if len(calls) > 6:
        calls = [*calls[:3], "...", *calls[-2:]]
    return outer, " > ".join(calls) or "directly"


Handler = Callable[[HttpRequest], Any]


def catch_deadline_below(get_response: Handler) -> Handler:
    """Wrap AioRequestMiddleware's ``get_response``: a deadline cancellation raised anywhere below
    answers 408 with a log line, where Django would have answered 500 ("Internal Server Error")."""
    if iscoroutinefunction(get_response):
        aget_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = get_response

        async def acaught(request: HttpRequest) -> HttpResponseBase:
            setattr(request, _CATCHER, True)
            try:
                return await aget_response(request)
            except Exception as exc:
                answer = answer_if_deadline_below(request, exc)
                if answer is None:
                    raise
                return answer
            finally:
                setattr(request, _CATCHER, False)  # above the middleware nobody would catch it

        return markcoroutinefunction(acaught)

    def caught(request: HttpRequest) -> Any:
        setattr(request, _CATCHER, True)
        try:
            return get_response(request)
        except Exception as exc:
            answer = answer_if_deadline_below(request, exc)
            if answer is None:
                raise
            return answer
        finally:
            setattr(request, _CATCHER, False)  # above the middleware nobody would catch it

    return caught
