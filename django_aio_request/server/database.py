"""Bound every PostgreSQL query by the deadline in the context (Django layer).

With ``AIO_REQUEST["DATABASE_STATEMENT_TIMEOUT"] = True``, each query on a PostgreSQL connection
runs with a ``statement_timeout`` no longer than the time left before the deadline in the context
(``get_context().deadline``, set per request by the middleware from ``X-Request-Timeout``), so the
server cancels a query the caller has stopped waiting for. Without a deadline the connection's own
default applies. Other backends (SQLite, MySQL, ...) are left alone.

:func:`install` (called from ``AppConfig.ready``) puts a :class:`StatementTimeout` execute wrapper
on every PostgreSQL connection as it opens. How it decides when to send a ``SET`` is in
:func:`plan`; how it sends one without an extra round trip is in :class:`StatementTimeout`.
See ``docs/database.md``.
"""

import enum
import functools
import logging
import math
import re
import time
from collections.abc import Callable
from typing import Any

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created
from django.db.utils import InterfaceError, OperationalError

from django_aio_request.conf.current import current
from django_aio_request.core.context import get_context
from django_aio_request.core.deadline import Deadline

__all__ = [
    "SETTING_KEY",
    "DeadlineExceeded",
    "StatementTimeout",
    "Value",
    "attach",
    "install",
    "is_deadline_cancellation",
    "is_enabled",
    "plan",
    "reserve_ms",
    "wrapper_for",
]

logger = logging.getLogger("django_aio_request.server.database")

SETTING_KEY = "DATABASE_STATEMENT_TIMEOUT"

#: SQLSTATE of PostgreSQL's query_canceled: statement_timeout, or a cancel request.
QUERY_CANCELED = "57014"
#: A SET leaves this share of the time left unused (at most MAX_RESERVE_MS): see :func:`plan`.
RESERVE_FRACTION = 0.05
MAX_RESERVE_MS = 1000

# libpq's PQtransactionStatus values (psycopg 3 and psycopg2 alike).
_IDLE, _INTRANS = 0, 2


class Value(enum.Enum):
    """What the wrapper knows about a connection's ``statement_timeout`` besides a number of ms."""

    #: The connection's own default (what ``RESET`` gives): nothing set, or restored.
    DEFAULT = "DEFAULT"
    #: Not known (after a failed statement, a SET by someone else, a connection from a pool).
    UNKNOWN = "UNKNOWN"


Setting = int | Value


class DeadlineExceeded(OperationalError):
    """A database query ran out of the deadline in the context.

    Raised before the query is sent when the deadline has (all but) expired (``sent`` is False),
    and in place of PostgreSQL's query_canceled when the server cancelled a query at the
    ``statement_timeout`` set from the deadline (``sent`` is True; the driver's error is the
    ``__cause__``). An ``OperationalError``, like the error it replaces, so existing handlers of
    database errors still catch it; :func:`is_deadline_cancellation` recognises it.
    """

    def __init__(self, message: str, *, alias: str = "", sent: bool = False, statement_timeout_ms: int | None = None):
        super().__init__(message)
        self.alias = alias
        self.sent = sent
        self.statement_timeout_ms = statement_timeout_ms


def is_deadline_cancellation(exc: BaseException) -> bool:
    """True for a query stopped by a deadline: a :class:`DeadlineExceeded`, or PostgreSQL's
    query_canceled (SQLSTATE 57014) caused by ``statement_timeout``, raw or wrapped by Django.

    A cancel request (``pg_cancel_backend``) is also 57014 but not a timeout: False. The text
    test is on the server's message, which is English unless ``lc_messages`` says otherwise; the
    wrapper's own cancellations are recognised in any language (they are :class:`DeadlineExceeded`).
    """
    for error in _chain(exc):
        if isinstance(error, DeadlineExceeded):
            return True
        if _sqlstate(error) == QUERY_CANCELED and "statement timeout" in str(error).lower():
            return True
    return False


def is_enabled() -> bool:
    """``AIO_REQUEST["DATABASE_STATEMENT_TIMEOUT"]``, validated with the rest of the setting."""
    return current.settings.database_statement_timeout


def install() -> None:
    """Bound the queries of every PostgreSQL connection opened from now on by the context's deadline.

    Call it from ``AppConfig.ready()``. Idempotent. Reads no setting (``ready()`` must not fail on an
    invalid ``AIO_REQUEST``: ``manage.py check`` reports it), and also equips the connections this
    thread already has open.
    The wrapper goes on every PostgreSQL connection and reads the setting per query, so
    ``override_settings`` can turn the feature on and off; while it is off a query costs a few
    attribute reads more.
    """
    connection_created.connect(
        _connection_created, dispatch_uid="django_aio_request.server.database.connection_created"
    )
    for connection in connections.all(initialized_only=True):
        if connection.connection is not None:
            attach(connection, opened=False)


def attach(connection: BaseDatabaseWrapper, *, opened: bool = True) -> "StatementTimeout | None":
    """Put the wrapper on an open PostgreSQL connection (once); None for other backends.

    ``opened``: the connection was just opened (``connection_created``): what the wrapper knew
    is forgotten and the server default is in force. Otherwise a wrapper already there is kept,
    and a new one assumes nothing about what is in force.
    """
    if connection.vendor != "postgresql":
        return None
    wrapper = wrapper_for(connection)
    if wrapper is None:
        wrapper = StatementTimeout(connection.alias)
        connection.execute_wrappers.append(wrapper)
        wrapper.reset(connection, known=opened)
    elif opened:
        wrapper.reset(connection)
    return wrapper


def wrapper_for(connection: BaseDatabaseWrapper) -> "StatementTimeout | None":
    """The connection's :class:`StatementTimeout`, if it has one."""
    for wrapper in connection.execute_wrappers:
        if isinstance(wrapper, StatementTimeout):
            return wrapper
    return None


def reserve_ms(left_ms: int) -> int:
    """The part of ``left_ms`` a SET leaves unused: 5%, rounded up, at most 1 s."""
    return min(MAX_RESERVE_MS, math.ceil(left_ms * RESERVE_FRACTION))


def plan(current: Setting, left_ms: int | None, default_ms: int | Value | None) -> Setting | None:
    """What to set before a query: a number of ms, ``Value.DEFAULT`` (restore), or None (nothing).

    ``current`` is the ``statement_timeout`` in force on the connection, ``left_ms`` the whole
    milliseconds left before the deadline (None: no deadline), ``default_ms`` the connection's own
    default (None: no limit; ``Value.UNKNOWN`` until learned).

    The rule, correctness first:

    - No deadline: the connection's default applies; restore it only if something else is in force.
    - A query never gets more time than is left: a value already in force is kept only if it is at
      most ``left_ms``. A default that is itself at most ``left_ms`` already bounds the query, and is
      never raised by a deadline (the deadline only ever shortens it).
    - Otherwise the value kept must not be much smaller than ``left_ms``: at least ``left_ms`` minus
      twice the reserve (the reserve is 5% of ``left_ms``, at most 1 s). A value from an earlier
      deadline that left less time is replaced.
    - A SET gives the query the time left minus the reserve. That margin keeps the value in force,
      and so the SET unnecessary, while the next queries run: for the next 5% of the deadline
      (25 ms of a 0.5 s one, 1 s of a long one). It also covers the time the query takes to reach
      the server, whose clock starts when it arrives.

    So under one deadline a SET is needed about once per 5% of it, however many queries run, and
    each query is cancelled between 90% and 100% of the time it had left (100% minus the reserve
    for the one that made the SET).
    """
    if left_ms is None:
        return None if current is Value.DEFAULT else Value.DEFAULT
    if isinstance(default_ms, int) and default_ms <= left_ms:
        if current is Value.DEFAULT or (isinstance(current, int) and _close_enough(current, default_ms)):
            return None
        return Value.DEFAULT
    if isinstance(current, int) and _close_enough(current, left_ms):
        return None
    return max(1, left_ms - reserve_ms(left_ms))


def _close_enough(value: int, limit: int) -> bool:
    return limit - 2 * reserve_ms(limit) <= value <= limit


class _Kind(enum.Enum):
    TRANSACTION_CONTROL = "transaction control"  # passed through untouched, never refused
    TIMEOUT_SETTING = "sets statement_timeout"  # passed through; what is in force is then unknown
    PREFIXABLE = "may carry the SET in the same round trip"
    OTHER = "other"  # DDL, utility statements: a SET goes in a round trip of its own


_TRANSACTION_CONTROL = re.compile(
    r"\s*(?:BEGIN|START|COMMIT|END|ROLLBACK|ABORT|SAVEPOINT|RELEASE|PREPARE\s+TRANSACTION)\b", re.IGNORECASE
)
_ROLLBACK_TO = re.compile(r"\s*ROLLBACK\s+(?:WORK\s+|TRANSACTION\s+)?TO\b", re.IGNORECASE)
_TIMEOUT_SETTING = re.compile(
    r'\s*(?:(?:SET|RESET)\s+(?:SESSION\s+|LOCAL\s+)?(?:"?statement_timeout"?|ALL)\b|DISCARD\s+ALL\b)', re.IGNORECASE
)
# Statements PostgreSQL runs in a multi-statement string (VACUUM, CREATE DATABASE, CREATE INDEX
# CONCURRENTLY and friends refuse to): the ORM's queries.
_PREFIXABLE = re.compile(r"[\s(]*(?:SELECT|INSERT|UPDATE|DELETE|WITH|VALUES|TABLE|MERGE|SHOW|EXPLAIN)\b", re.IGNORECASE)


def _classify(sql: object) -> _Kind:
    if not isinstance(sql, str):
        return _Kind.OTHER  # a psycopg sql.Composed, say
    if _TRANSACTION_CONTROL.match(sql):
        return _Kind.TRANSACTION_CONTROL
    if _TIMEOUT_SETTING.match(sql):
        return _Kind.TIMEOUT_SETTING
    if _PREFIXABLE.match(sql):
        return _Kind.PREFIXABLE
    return _Kind.OTHER


def _statement(target: Setting, *, local: bool, learn: bool) -> str:
    """The SQL that puts ``target`` in force (``local``: for the current transaction only).

    ``learn``: also read the connection's default and never set more than it, in the same statement.
    """
    if target is Value.DEFAULT:
        return "SET LOCAL statement_timeout TO DEFAULT" if local else "RESET statement_timeout"
    if not isinstance(target, int) or target < 1:  # an int we computed: safe as a literal
        raise ValueError(f"cannot set statement_timeout to {target!r}")
    if learn:
        return (
            "SELECT reset_val, set_config('statement_timeout', CASE WHEN reset_val::bigint BETWEEN 1 AND "
            f"{target} THEN reset_val ELSE '{target}' END, {'true' if local else 'false'}) "
            "FROM pg_settings WHERE name = 'statement_timeout'"
        )
    return f"SET LOCAL statement_timeout = {target}" if local else f"SET statement_timeout = {target}"


Execute = Callable[[str, Any, bool, dict[str, Any]], Any]


class _Change:
    """A change of ``statement_timeout`` to send before a query."""

    __slots__ = ("in_transaction", "learn", "sql", "target")

    def __init__(self, target: Setting, in_transaction: bool, *, learn: bool) -> None:
        self.target = target
        self.in_transaction = in_transaction
        self.learn = learn
        self.sql = _statement(target, local=in_transaction, learn=learn)

    @property
    def bound_ms(self) -> int | None:
        """The most time the query will have: a number, or None when restoring the default."""
        return self.target if isinstance(self.target, int) else None


class StatementTimeout:
    """The execute wrapper of one PostgreSQL connection (one ``DatabaseWrapper``).

    It remembers what ``statement_timeout`` is in force on the connection, so that most queries go
    through untouched (see :func:`plan`). When a change is needed:

    - On psycopg 3 with client-side binding (Django's default) the ``SET`` travels in the same
      execute as an ORM query (``SET statement_timeout = 475; SELECT ...``, one round trip); the
      cursor is then moved past the SET's result, so callers see only their own. With psycopg2, a
      server-side-binding or named (``.iterator()``) cursor, ``executemany`` and statements that
      cannot run in a multi-statement string (DDL, VACUUM, ...), the ``SET`` is a statement of its
      own just before the query.
    - Outside a transaction it is a plain ``SET`` (``RESET`` to restore), kept by the session.
      Inside one (``atomic``, or autocommit off) it is ``SET LOCAL``, gone at commit or rollback, so
      a rolled-back transaction cannot leave a value the wrapper does not know about.
      ``ROLLBACK TO SAVEPOINT`` may undo a ``SET LOCAL``: afterwards the value counts as unknown.
    - The first ``SET`` on a connection also reads the connection's default (``pg_settings``) in the
      same statement, and never sets more than it: a deadline only ever shortens a configured
      ``statement_timeout``.
    - A failed statement that carried a ``SET`` leaves the value unknown (PostgreSQL rolls a
      multi-statement string back as a whole); the next query under a deadline sets it again.
    - Transaction control (``ROLLBACK``, ``RELEASE SAVEPOINT``, ...) and statements in an aborted
      transaction go through untouched: cleaning up after a cancellation always works.
    """

    def __init__(self, alias: str) -> None:
        self.alias = alias
        #: SETs and RESETs sent, and how many of them needed a round trip of their own.
        self.changes = 0
        self.round_trips = 0
        self._session: Setting = Value.UNKNOWN
        self._local: Setting | None = None  # what SET LOCAL put in force in this transaction
        self._default: int | Value | None = Value.UNKNOWN
        self._raw: object = None  # the driver connection that knowledge is about

    def __repr__(self) -> str:
        return f"<StatementTimeout {self.alias!r} session={self._session} local={self._local}>"

    def reset(self, connection: BaseDatabaseWrapper, *, known: bool = True) -> None:
        """Forget what was known. ``known``: the connection was just opened, its default is in force."""
        pooled = bool(connection.settings_dict.get("OPTIONS", {}).get("pool"))
        # A new connection has its default in force; one from a pool may carry a previous user's SET.
        self._session = Value.DEFAULT if known and not pooled else Value.UNKNOWN
        self._local = None
        self._default = Value.UNKNOWN
        self._raw = connection.connection

    def in_force(self, in_transaction: bool) -> Setting:
        """What the wrapper believes is in force (the transaction's SET LOCAL, else the session's)."""
        return self._local if in_transaction and self._local is not None else self._session

    def __call__(self, execute: Execute, sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        deadline = get_context().deadline if is_enabled() else None
        if deadline is None and self._session is Value.DEFAULT and self._local is None:
            return execute(sql, params, many, context)  # the common case when idle: nothing to do

        connection: BaseDatabaseWrapper = context["connection"]
        raw = connection.connection
        if raw is not self._raw:
            self.reset(connection, known=False)  # a connection opened without connection_created
        kind = _classify(sql)
        if kind is _Kind.TRANSACTION_CONTROL:
            try:
                return execute(sql, params, many, context)
            finally:
                if self._local is not None and _ROLLBACK_TO.match(sql):
                    self._local = Value.UNKNOWN

        status = _transaction_status(raw, connection)
        if status == _IDLE:
            self._local = None  # any transaction, and its SET LOCAL, is over
        elif status != _INTRANS or connection.needs_rollback:
            # An aborted transaction (only a rollback will do), a query in progress or a broken
            # connection: the statement fails or succeeds on its own, a SET would not run.
            return execute(sql, params, many, context)
        in_transaction = status == _INTRANS or not connection.autocommit

        if kind is _Kind.TIMEOUT_SETTING:
            try:
                return execute(sql, params, many, context)
            finally:
                self._session = Value.UNKNOWN
                self._local = Value.UNKNOWN if in_transaction else None

        left_ms = None if deadline is None else self._left_ms(deadline)
        current = self.in_force(in_transaction)
        target = plan(current, left_ms, self._default)
        if target is None:
            bound = current if left_ms is not None and isinstance(current, int) else None
            return self._run(execute, sql, params, many, context, bound_ms=bound)
        statement = _Change(target, in_transaction, learn=isinstance(target, int) and self._default is Value.UNKNOWN)
        self.changes += 1
        if kind is _Kind.PREFIXABLE and not many and _can_prefix(context["cursor"].cursor, raw):
            return self._change_with(statement, execute, sql, params, context)
        return self._change_before(statement, execute, sql, params, many=many, context=context)

    def _left_ms(self, deadline: Deadline) -> int:
        """Whole milliseconds left; less than 1 ms cannot be expressed (0 means no limit) nor used: raise."""
        left = deadline.timeout
        left_ms = math.floor(left * 1000)
        if left_ms < 1:
            raise DeadlineExceeded(
                f"the deadline expired before the query was sent to database {self.alias!r} "
                f"({left * 1000:.3f} ms left)",
                alias=self.alias,
            )
        return left_ms

    def _change_with(self, change: "_Change", execute: Execute, sql: str, params: Any, context: dict[str, Any]) -> Any:
        """Send the change and the query in one execute, then move the cursor to the query's result."""
        logger.debug("%s: %s, with the query", self.alias, change.sql)
        cursor = context["cursor"].cursor
        try:
            result = self._run(execute, f"{change.sql}; {sql}", params, False, context, bound_ms=change.bound_ms)
        except BaseException:
            self._forget(change.in_transaction)  # PostgreSQL rolled the SET back with the query, or not
            raise
        row = cursor.fetchone() if change.learn else None
        if not cursor.nextset():
            raise InterfaceError("the database returned no result for the query after the statement_timeout SET")
        self._record(change, row)
        return result

    def _change_before(
        self, change: "_Change", execute: Execute, sql: str, params: Any, *, many: bool, context: dict[str, Any]
    ) -> Any:
        """Send the change as a statement of its own, then the query."""
        logger.debug("%s: %s, in a round trip of its own", self.alias, change.sql)
        connection: BaseDatabaseWrapper = context["connection"]
        self.round_trips += 1
        try:
            with connection.wrap_database_errors, connection.connection.cursor() as own:
                own.execute(change.sql)
                row = own.fetchone() if change.learn else None
        except BaseException:
            self._forget(change.in_transaction)
            raise
        value = self._record(change, row)
        return self._run(execute, sql, params, many, context, bound_ms=value if isinstance(value, int) else None)

    def _run(
        self, execute: Execute, sql: str, params: Any, many: bool, context: dict[str, Any], *, bound_ms: int | None
    ) -> Any:
        """Run the query; a cancellation at ``bound_ms`` (a timeout set from the deadline) becomes DeadlineExceeded."""
        started = time.monotonic()
        try:
            return execute(sql, params, many, context)
        except Exception as error:
            if bound_ms is not None and _cancelled_at(error, time.monotonic() - started, bound_ms):
                raise DeadlineExceeded(
                    f"database {self.alias!r} cancelled the query at the deadline "
                    f"(statement_timeout {bound_ms} ms): {error}",
                    alias=self.alias,
                    sent=True,
                    statement_timeout_ms=bound_ms,
                ) from error
            raise

    def _record(self, change: "_Change", row: Any) -> Setting:
        """Note what ``change`` put in force (``row``: what a learning statement read) and return it."""
        value = change.target
        if row is not None:
            default = int(row[0])
            self._default = default if default > 0 else None
            if isinstance(value, int) and 0 < default < value:
                value = default  # the server kept its own, smaller, default
        if change.in_transaction:
            self._local = value
        else:
            self._session = value
        return value

    def _forget(self, in_transaction: bool) -> None:
        if in_transaction:
            self._local = Value.UNKNOWN
        else:
            self._session = Value.UNKNOWN


def _cancelled_at(error: BaseException, elapsed: float, bound_ms: int) -> bool:
    """Whether ``error`` is the server cancelling the query at the ``bound_ms`` statement_timeout.

    query_canceled that came when the timeout was due (a cancel request comes earlier), or whose
    message says so; the timing test works whatever language the server speaks.
    """
    for cause in _chain(error):
        if _sqlstate(cause) == QUERY_CANCELED:
            return elapsed >= bound_ms / 1000 - 0.002 or "statement timeout" in str(cause).lower()
    return False


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes (Django re-raises driver errors ``from`` them), at most a few deep."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(seen) < 8 and all(current is not s for s in seen):
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _sqlstate(error: BaseException) -> str | None:
    # psycopg 3: .sqlstate; psycopg2: .pgcode.
    state = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    return state if isinstance(state, str) else None


def _transaction_status(raw: Any, connection: BaseDatabaseWrapper) -> int:
    status = getattr(getattr(raw, "info", None), "transaction_status", None)
    if status is None:  # a driver without libpq's status: Django's view of it
        return _INTRANS if connection.in_atomic_block else _IDLE
    return int(status)


@functools.cache
def _client_cursor_class() -> type | None:
    try:
        import psycopg
    except ImportError:
        return None
    return psycopg.ClientCursor


def _can_prefix(cursor: Any, raw: Any) -> bool:
    """psycopg 3 sends a client-side-binding query as a simple Query message, which may hold several
    statements (not in pipeline mode). psycopg2 would too, but keeps only the last result: a SET of
    its own is simpler there than reading results it hides."""
    client_cursor = _client_cursor_class()
    return (
        client_cursor is not None
        and isinstance(cursor, client_cursor)
        and getattr(getattr(raw, "pgconn", None), "pipeline_status", 1) == 0
    )


def _connection_created(*, connection: BaseDatabaseWrapper, **kwargs: Any) -> None:
    attach(connection)
