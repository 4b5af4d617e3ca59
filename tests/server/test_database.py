"""Queries bounded by the deadline in the context (django_aio_request.server.database), on a real
PostgreSQL server, in the test process. Through real servers: test_database_servers.py; the
application's own statement_timeout in many spellings: test_database_app_timeout.py."""

import contextlib
import gc
import logging
import os
import pickle
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, OperationalError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import IntegerField
from django.db.models.expressions import RawSQL
from pytest_django.fixtures import Settings as SettingsWrapper

from django_aio_request import Deadline, set_context
from django_aio_request.conf.current import current
from django_aio_request.server import database as db
from django_aio_request.server.database import DeadlineExceeded, is_deadline_cancellation
from django_aio_request.transport.deadline_timer import deadline_timer

PG = "postgres"
# transaction=True: queries run in autocommit, as in a view without ATOMIC_REQUESTS.
on_postgres = pytest.mark.django_db(databases=[PG], transaction=True)
SLACK = 0.5  # tells bounded from unbounded (the statements sleep 1-3 s) on a loaded shared machine; how
# close to the deadline a cancellation comes is measured by benchmarks/database.py


@pytest.fixture
def enabled(settings: SettingsWrapper) -> None:
    db.install()  # what AppConfig.ready() does
    settings.AIO_REQUEST = {**settings.AIO_REQUEST, db.SETTING_KEY: True}


@pytest.fixture
def pg(enabled: None) -> BaseDatabaseWrapper:
    connection = connections[PG]
    connection.ensure_connection()
    assert db.wrapper_for(connection) is not None
    return connection


def bound(connection: BaseDatabaseWrapper) -> db.QueryBound:
    found = db.wrapper_for(connection)
    assert found is not None
    return found


def scalar(sql: str, params: Any = None, using: str = PG) -> Any:
    with connections[using].cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    assert row is not None
    return row[0]


def run(sql: str, params: Any = None) -> None:
    with connections[PG].cursor() as cursor:
        cursor.execute(sql, params)


class Seen:
    """An execute wrapper inside the bound: every statement that reaches the driver."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        self.statements.append(sql)
        return execute(sql, params, many, context)


@pytest.fixture
def seen(pg: BaseDatabaseWrapper) -> Iterator[Seen]:
    spy = Seen()
    with pg.execute_wrapper(spy):
        yield spy


def slow_groups(per_row: float) -> Any:
    """Every group, each row costing ``per_row`` seconds of server time."""
    # In the select list, so PostgreSQL sleeps per row (in a subquery it would run once).
    slow = RawSQL("length(pg_sleep(%s)::text)", (per_row,), output_field=IntegerField())
    return Group.objects.using(PG).annotate(slow=slow).order_by("pk")


def make_groups(count: int) -> None:
    Group.objects.using(PG).bulk_create([Group(name=f"g{i}") for i in range(count)])


class Timed:
    def __enter__(self) -> "Timed":
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.monotonic() - self.started


class TestIsDeadlineCancellation:
    class PgError(Exception):
        def __init__(self, message: str, sqlstate: str) -> None:
            super().__init__(message)
            self.sqlstate = sqlstate

    def test_own_exception_raw_or_wrapped(self) -> None:
        assert is_deadline_cancellation(DeadlineExceeded("too late"))
        wrapped = OperationalError("wrapped")
        wrapped.__cause__ = DeadlineExceeded("too late")
        assert is_deadline_cancellation(wrapped)

    @pytest.mark.usefixtures("enabled")
    def test_query_canceled_counts_only_once_the_deadline_is_up(self) -> None:
        canceled = self.PgError("canceling statement due to user request", "57014")
        timeout = self.PgError("canceling statement due to statement timeout", "57014")
        for error in (canceled, timeout):
            assert not is_deadline_cancellation(error)  # no deadline: the application's own
            with set_context(deadline=Deadline.from_timeout(5)):
                assert not is_deadline_cancellation(error)  # before the deadline: the application's own
            with set_context(deadline=Deadline.from_timeout(0)):
                assert is_deadline_cancellation(error)
        legacy = Exception("canceling statement due to user request")
        legacy.pgcode = "57014"  # type: ignore[attr-defined]  # psycopg2
        with set_context(deadline=Deadline.from_timeout(0)):
            assert is_deadline_cancellation(legacy)

    def test_with_the_bound_off_a_query_canceled_is_never_the_deadlines(self, settings: SettingsWrapper) -> None:
        """Nothing cancels a query at the deadline then: the application's own statement_timeout,
        judged after the deadline passed, answered 408 all the same (a review)."""
        settings.AIO_REQUEST = {**settings.AIO_REQUEST, db.SETTING_KEY: False}
        timeout = self.PgError("canceling statement due to statement timeout", "57014")
        with set_context(deadline=Deadline.from_timeout(0)):
            assert not is_deadline_cancellation(timeout)
            assert is_deadline_cancellation(DeadlineExceeded("too late"))

    @on_postgres
    def test_a_query_canceled_the_bound_did_not_ask_for_is_never_the_deadlines(
        self, pg: BaseDatabaseWrapper, settings: SettingsWrapper
    ) -> None:
        """The application's own statement_timeout stops a query sent under a 5 s deadline: judged
        after that deadline is up (an error reporter took the rest of it), it is still the
        application's error, where the clock alone said the deadline's. A query_canceled of a
        statement sent past Django's cursors (the driver's own cursor), which the bound never sees, is
        still judged by the clock."""

        def own_timeout() -> None:
            with transaction.atomic(using=PG), pg.cursor() as cursor:
                cursor.execute("SET LOCAL statement_timeout = 50")
                cursor.execute("SELECT pg_sleep(1)")

        def outside_djangos_cursors() -> None:
            with pg.connection.cursor() as raw:
                raw.execute("SET statement_timeout = 50")
                try:
                    raw.execute("SELECT pg_sleep(1)")
                finally:
                    raw.execute("SET statement_timeout = 0")  # autocommit: no transaction to roll back

        with set_context(deadline=Deadline.from_timeout(5)), pytest.raises(OperationalError) as own:
            own_timeout()
        assert not isinstance(own.value, DeadlineExceeded)
        with pytest.raises(psycopg.errors.QueryCanceled) as outside:
            outside_djangos_cursors()
        with set_context(deadline=Deadline.from_timeout(0)):
            assert not is_deadline_cancellation(own.value)
            assert is_deadline_cancellation(outside.value)
        # The driver's error is left as psycopg made it (psycopg2's pickle their SQLSTATE only while
        # their __dict__ is empty: an attribute set on it lost its pgcode, a review).
        settings.AIO_REQUEST = {**settings.AIO_REQUEST, db.SETTING_KEY: False}
        with pytest.raises(OperationalError) as unbounded:
            own_timeout()
        driver_error = own.value.__cause__
        assert isinstance(driver_error, psycopg.errors.QueryCanceled)
        assert vars(driver_error).keys() == vars(unbounded.value.__cause__).keys()
        assert pickle.loads(pickle.dumps(driver_error)).sqlstate == "57014"

    @on_postgres
    def test_a_query_the_deadline_cancelled_stays_the_deadline_s_after_another_statement_fails(
        self, pg: BaseDatabaseWrapper
    ) -> None:
        """A statement that fails while the DeadlineExceeded of a cancelled one is handled: the bound
        marked every query_canceled of the second one's chain, the cancelled one's too (a review)."""
        with set_context(deadline=Deadline.from_timeout(0.2)), pytest.raises(DeadlineExceeded) as cancelled:
            run("SELECT pg_sleep(2)")
        deadline_s = cancelled.value
        assert isinstance(deadline_s.__cause__, OperationalError)

        def fails_while_handling_it() -> None:
            try:
                raise deadline_s
            except DeadlineExceeded:
                run("SELECT 1/0")

        with set_context(deadline=Deadline.from_timeout(5)), pytest.raises(DatabaseError) as later:
            fails_while_handling_it()
        assert later.value.__cause__.__context__ is deadline_s  # type: ignore[union-attr]
        with set_context(deadline=Deadline.from_timeout(0)):
            assert is_deadline_cancellation(deadline_s.__cause__)

    def test_an_error_raised_while_handling_one_is_only_if_it_is_a_database_error(self) -> None:
        def raised_while_handling(make: Any) -> BaseException:
            try:
                try:
                    raise DeadlineExceeded("too late")
                except DatabaseError:
                    make()
            except Exception as error:
                return error
            raise AssertionError("nothing raised")

        def key_error() -> None:
            raise KeyError("EUR")

        def value_error_from_none() -> None:
            raise ValueError("fallback") from None

        def rollback_failed() -> None:
            raise OperationalError("the rollback failed too")

        assert not is_deadline_cancellation(raised_while_handling(key_error))  # the application's bug: 500
        assert not is_deadline_cancellation(raised_while_handling(value_error_from_none))
        assert is_deadline_cancellation(raised_while_handling(rollback_failed))

    def test_other_errors_are_not(self) -> None:
        with set_context(deadline=Deadline.from_timeout(0)):
            assert not is_deadline_cancellation(self.PgError("deadlock detected", "40P01"))
            assert not is_deadline_cancellation(ValueError("statement timeout"))
            assert not is_deadline_cancellation(OperationalError("server closed the connection unexpectedly"))


class TestSetting:
    def test_off_when_absent(self, settings: SettingsWrapper) -> None:
        settings.AIO_REQUEST = {"SERVICE_NAME": "tests"}
        assert db.is_enabled() is False
        settings.AIO_REQUEST = {"SERVICE_NAME": "tests", db.SETTING_KEY: True}
        assert db.is_enabled() is True

    @pytest.mark.parametrize("value", ["yes", 1, None])
    def test_anything_but_a_bool_is_an_error(self, settings: SettingsWrapper, value: object) -> None:
        settings.AIO_REQUEST = {"SERVICE_NAME": "tests", db.SETTING_KEY: value}
        with pytest.raises(ImproperlyConfigured, match=r"AIO_REQUEST\['DATABASE_STATEMENT_TIMEOUT'\] must be True or"):
            db.is_enabled()
        db.install()  # AppConfig.ready() calls it: it reads no setting, so an invalid one cannot crash startup


@on_postgres
@pytest.mark.parametrize("statement_timeout", [None, False, True])
def test_an_error_elsewhere_in_the_setting_fails_no_query(
    settings: SettingsWrapper, statement_timeout: bool | None
) -> None:
    """A client's bad ENDPOINT, in a process that runs no checks (a shell, a task worker): that
    client raises where it is used, and queries go on, bounded as DATABASE_STATEMENT_TIMEOUT says.
    Every query raised InvalidSettings, with the bound off too."""
    db.install()
    bad = {"CLIENTS": {"billing": {"ENDPOINT": "ftp://bad/"}}}
    settings.AIO_REQUEST = bad if statement_timeout is None else {**bad, db.SETTING_KEY: statement_timeout}
    connection = connections[PG]
    connection.ensure_connection()
    assert scalar("SELECT 1") == 1
    with set_context(deadline=Deadline.from_timeout(0.3)):
        if statement_timeout:
            with pytest.raises(DeadlineExceeded):
                scalar("SELECT pg_sleep(2)")
        else:
            assert scalar("SELECT pg_sleep(0.5), 1") is not None  # unbounded: runs past the deadline
    with pytest.raises(ImproperlyConfigured, match="ENDPOINT"):  # the setting is still invalid where it is read
        current.settings  # noqa: B018
    settings.AIO_REQUEST = {**bad, db.SETTING_KEY: "yes"}  # this key itself invalid: every query says so
    with pytest.raises(ImproperlyConfigured, match="DATABASE_STATEMENT_TIMEOUT"):
        scalar("SELECT 1")


@pytest.mark.django_db
def test_sqlite_connections_are_left_alone(enabled: None) -> None:
    connection = connections["default"]
    connection.ensure_connection()
    assert connection.vendor == "sqlite"
    assert db.wrapper_for(connection) is None
    with set_context(deadline=Deadline.from_timeout(0)):  # expired: PostgreSQL would refuse to send
        assert scalar("SELECT 1", using="default") == 1


@on_postgres
class TestBound:
    def test_a_slow_query_is_cancelled_at_the_deadline(self, pg: BaseDatabaseWrapper) -> None:
        with Timed() as timed, set_context(deadline=Deadline.from_timeout(0.5)), pytest.raises(DatabaseError) as caught:
            scalar("SELECT pg_sleep(3)")

        assert 0.5 - db.CANCEL_LEAD - 0.01 < timed.elapsed < 0.5 + SLACK
        assert isinstance(caught.value, DeadlineExceeded)
        assert isinstance(caught.value, OperationalError)
        assert is_deadline_cancellation(caught.value)
        assert caught.value.sent
        assert caught.value.sql == "SELECT pg_sleep(3)"
        assert getattr(caught.value.__cause__, "__cause__", None).sqlstate == "57014"  # type: ignore[union-attr]
        assert scalar("SELECT 1") == 1  # the connection is still usable

    def test_a_statement_a_wrapper_sends_again_after_the_cancel_is_cancelled_too(self, pg: BaseDatabaseWrapper) -> None:
        """docs/database.md: every statement sent through Django's cursors ends by the deadline, one an
        execute wrapper of the application's sends again too. Retried within the bound's one call,
        after the cancel had ended the first, it ran until the connection was shut down 2 s later,
        and on in the server (a review: 7 of 7 requests)."""

        def retry_once(execute: Any, sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
            try:
                return execute(sql, params, many, context)
            except OperationalError:
                return execute(sql, params, many, context)

        with (
            pg.execute_wrapper(retry_once),
            Timed() as timed,
            set_context(deadline=Deadline.from_timeout(0.5)),
            pytest.raises(DatabaseError) as caught,
        ):
            scalar("SELECT pg_sleep(3)")
        assert timed.elapsed < 0.5 + SLACK
        assert isinstance(caught.value, DeadlineExceeded)
        running = "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(3)' AND state = 'active'"
        assert scalar(running) == 0
        assert scalar("SELECT 1") == 1

    def test_queries_under_a_deadline_are_sent_as_they_are(self, pg: BaseDatabaseWrapper, seen: Seen) -> None:
        """No SET, no extra statement: what the application sends is all the server sees."""
        before = scalar("SHOW statement_timeout")
        with set_context(deadline=Deadline.from_timeout(5)):
            assert scalar("SELECT %s::int + 1", [41]) == 42
            group = Group.objects.using(PG).create(name="deadline")  # INSERT ... RETURNING
            assert Group.objects.using(PG).filter(pk=group.pk).update(name="renamed") == 1  # rowcount
            assert list(Group.objects.using(PG).values_list("name", flat=True)) == ["renamed"]
            assert scalar("SHOW statement_timeout") == before
        assert not any("statement_timeout" in s and not s.startswith("SHOW") for s in seen.statements)
        assert len(seen.statements) == 6

    def test_an_expired_deadline_refuses_the_query_without_reaching_the_server(
        self, pg: BaseDatabaseWrapper, seen: Seen
    ) -> None:
        with set_context(deadline=Deadline.from_timeout(0)), pytest.raises(DeadlineExceeded) as caught:
            Group.objects.using(PG).count()
        assert seen.statements == []
        assert not caught.value.sent
        assert is_deadline_cancellation(caught.value)
        assert "the deadline was up before the query was sent to database 'postgres'" in str(caught.value)
        with set_context(deadline=Deadline.from_timeout(db.CANCEL_LEAD / 2)), pytest.raises(DeadlineExceeded):
            scalar("SELECT 1")  # less time left than a cancel request needs
        assert seen.statements == []

    def test_no_connection_is_opened_when_the_deadline_is_up(self, pg: BaseDatabaseWrapper) -> None:
        """Its queries would be refused anyway, and a connect to a server that hangs is not bounded."""
        pg.close()
        with set_context(deadline=Deadline.from_timeout(0)), pytest.raises(DeadlineExceeded) as caught:
            scalar("SELECT 1")
        assert "the deadline was up before connecting to database 'postgres'" in str(caught.value)
        assert pg.connection is None
        with set_context(deadline=Deadline.from_timeout(5)):
            assert scalar("SELECT 1") == 1  # in time: connects

    def test_the_health_check_is_bounded_like_a_query(self, pg: BaseDatabaseWrapper, seen: Seen) -> None:
        """Django's CONN_HEALTH_CHECKS runs is_usable() on the driver's cursor: in time it checks as
        before; with the deadline up it is refused like a query (its own test through the
        middleware, with a server that hangs: tests/server/test_database_severed.py)."""
        with set_context(deadline=Deadline.from_timeout(5)):
            assert pg.is_usable()
        assert not bound(pg).busy
        with (
            set_context(deadline=Deadline.from_timeout(0)),
            pytest.raises(DeadlineExceeded, match=r"SELECT 1 \(Django's CONN_HEALTH_CHECKS\)"),
        ):
            pg.is_usable()
        assert pg.is_usable()  # no deadline: Django's own check
        assert seen.statements == []  # on the driver's cursor, past the execute wrappers

    def test_a_transaction_still_rolls_back_after_the_deadline(self, pg: BaseDatabaseWrapper) -> None:
        def write_then_sleep() -> None:
            with transaction.atomic(using=PG), set_context(deadline=Deadline.from_timeout(0.3)):
                Group.objects.using(PG).create(name="rolled back")
                scalar("SELECT pg_sleep(3)")

        with Timed() as timed, pytest.raises(DeadlineExceeded):
            write_then_sleep()
        assert timed.elapsed < 0.3 + SLACK
        assert not Group.objects.using(PG).exists()

        # Cancelled in a savepoint, the deadline long gone: ROLLBACK TO SAVEPOINT still goes through
        # and the outer transaction goes on.
        def write_then_sleep_in_a_savepoint() -> None:
            with transaction.atomic(using=PG):
                Group.objects.using(PG).create(name="lost")
                scalar("SELECT pg_sleep(3)")

        with transaction.atomic(using=PG):
            Group.objects.using(PG).create(name="kept")
            with set_context(deadline=Deadline.from_timeout(0.3)):
                with pytest.raises(DeadlineExceeded):
                    write_then_sleep_in_a_savepoint()
                with pytest.raises(DeadlineExceeded):
                    scalar("SELECT 1")  # but nothing else is sent
            Group.objects.using(PG).create(name="after")
        assert sorted(Group.objects.using(PG).values_list("name", flat=True)) == ["after", "kept"]

    @pytest.mark.parametrize("in_transaction", [False, True], ids=["autocommit-with-hold", "atomic"])
    def test_iterator_is_bounded(self, pg: BaseDatabaseWrapper, in_transaction: bool) -> None:
        """Outside a transaction Django declares a WITH HOLD cursor, whose query PostgreSQL runs at the
        implicit commit of the DECLARE (statement_timeout does not reach it); inside one, each
        FETCH runs a part of it and never passes an execute wrapper."""
        make_groups(40)
        got: list[str] = []

        def iterate() -> None:
            with set_context(deadline=Deadline.from_timeout(0.5)):
                for group in slow_groups(0.05).iterator(chunk_size=10):  # 2 s of rows
                    got.append(group.name)

        block = transaction.atomic(using=PG) if in_transaction else contextlib.nullcontext()
        with Timed() as timed, pytest.raises(DeadlineExceeded), block:
            iterate()
        assert timed.elapsed < 0.5 + SLACK
        assert len(got) < 10 if not in_transaction else len(got) < 40
        assert scalar("SELECT 1") == 1

    def test_fetches_after_the_deadline_are_refused(self, pg: BaseDatabaseWrapper) -> None:
        make_groups(3)
        with transaction.atomic(using=PG), set_context(deadline=Deadline.from_timeout(0.2)):
            rows = Group.objects.using(PG).order_by("pk").iterator(chunk_size=1)
            assert next(rows).name == "g0"
            time.sleep(0.25)
            with pytest.raises(DeadlineExceeded):
                next(rows)
        # Without a deadline the same iteration runs to its end.
        assert [g.name for g in Group.objects.using(PG).order_by("pk").iterator(chunk_size=1)] == ["g0", "g1", "g2"]

    def test_executemany_is_bounded_as_a_whole(self, pg: BaseDatabaseWrapper) -> None:
        with (
            Timed() as timed,
            set_context(deadline=Deadline.from_timeout(0.4)),
            pytest.raises(DeadlineExceeded),
            pg.cursor() as cursor,
        ):
            cursor.executemany("SELECT pg_sleep(%s)", [(0.15,)] * 10)
        assert timed.elapsed < 0.4 + SLACK

    def test_statements_other_than_queries_are_bounded(self, pg: BaseDatabaseWrapper) -> None:
        with Timed() as timed, set_context(deadline=Deadline.from_timeout(0.3)), pytest.raises(DeadlineExceeded):
            run("DO $$ BEGIN PERFORM pg_sleep(3); END $$")
        assert timed.elapsed < 0.3 + SLACK

    def test_server_side_binding(self, pg: BaseDatabaseWrapper) -> None:
        options = pg.settings_dict["OPTIONS"]
        pg.close()
        pg.settings_dict["OPTIONS"] = {**options, "server_side_binding": True}
        try:
            with set_context(deadline=Deadline.from_timeout(2)):
                assert scalar("SELECT %s::int", [7]) == 7
            with Timed() as timed, set_context(deadline=Deadline.from_timeout(0.3)), pytest.raises(DeadlineExceeded):
                scalar("SELECT pg_sleep(%s)", [3])
            assert timed.elapsed < 0.3 + SLACK
        finally:
            pg.close()
            pg.settings_dict["OPTIONS"] = options

    @pytest.mark.parametrize("debug", [False, True], ids=["cursor", "debug-cursor"])
    def test_copy_is_bounded(self, pg: BaseDatabaseWrapper, debug: bool) -> None:
        """psycopg 3's cursor.copy() sends its statement past Django's execute wrappers."""
        pg.force_debug_cursor = debug  # Django's CursorDebugWrapper has a copy() of its own, which logs it
        try:
            with (
                Timed() as timed,
                set_context(deadline=Deadline.from_timeout(0.5)),
                pytest.raises(DeadlineExceeded) as caught,
                pg.cursor() as cursor,
                cursor.copy("COPY (SELECT pg_sleep(3)) TO STDOUT") as copy,
            ):
                list(copy)
            assert 0.5 - db.CANCEL_LEAD - 0.01 < timed.elapsed < 0.5 + SLACK
            assert caught.value.sent
            assert caught.value.sql == "COPY (SELECT pg_sleep(3)) TO STDOUT"
            assert getattr(caught.value.__cause__, "sqlstate", None) == "57014"
            if debug:
                assert pg.queries[-1]["sql"] == "COPY (SELECT pg_sleep(3)) TO STDOUT"
            assert scalar("SELECT 1") == 1  # the connection is still usable
        finally:
            pg.force_debug_cursor = False

    def test_a_composed_copy_statement_is_named_without_its_values(self, pg: BaseDatabaseWrapper) -> None:
        """psycopg's ``sql.Composed`` printed as its repr, so the error and the 408's warning held
        the values composed into the statement (``Literal('secret-value')``)."""
        from psycopg import sql

        statement = sql.SQL("COPY (SELECT pg_sleep(3), {} FROM {}) TO STDOUT").format(
            sql.Literal("secret-value"), sql.Identifier("pg_catalog", "pg_am")
        )
        with (
            set_context(deadline=Deadline.from_timeout(0.5)),
            pytest.raises(DeadlineExceeded) as caught,
            pg.cursor() as cursor,
            cursor.copy(statement) as copy,
        ):
            list(copy)
        assert caught.value.sql == 'COPY (SELECT pg_sleep(3), %s FROM "pg_catalog"."pg_am") TO STDOUT'
        assert "secret-value" not in str(caught.value)

    def test_stream_is_bounded(self, pg: BaseDatabaseWrapper) -> None:
        """psycopg 3's cursor.stream() sends its statement past Django's execute wrappers."""
        with (
            Timed() as timed,
            set_context(deadline=Deadline.from_timeout(0.5)),
            pytest.raises(DeadlineExceeded) as caught,
            pg.cursor() as cursor,
        ):
            list(cursor.stream("SELECT pg_sleep(3)"))
        assert timed.elapsed < 0.5 + SLACK
        assert caught.value.sent
        got: list[Any] = []

        def iterate() -> None:
            with set_context(deadline=Deadline.from_timeout(0.5)), pg.cursor() as cursor:
                for row in cursor.stream("SELECT i, pg_sleep(0.05) FROM generate_series(1, 40) AS i"):  # 2 s of rows
                    got.append(row[0])

        with Timed() as timed, pytest.raises(DeadlineExceeded):
            iterate()
        assert timed.elapsed < 0.5 + SLACK
        assert 0 < len(got) < 40
        assert scalar("SELECT 1") == 1

    def test_copy_from_stdin_is_cancelled_when_its_block_ends(self, pg: BaseDatabaseWrapper) -> None:
        """The server waits for the data the block writes, and takes the cancel request when more comes
        (psycopg sends these small writes when the block ends): the block runs on, then nothing is copied."""

        def write() -> None:
            with (
                set_context(deadline=Deadline.from_timeout(0.3)),
                pg.cursor() as cursor,
                cursor.copy("COPY auth_group (name) FROM STDIN") as copy,
            ):
                for i in range(10):  # 1 s of writing
                    copy.write_row([f"g{i}"])
                    time.sleep(0.1)

        with Timed() as timed, pytest.raises(DeadlineExceeded) as caught:
            write()
        assert timed.elapsed >= 1.0
        assert caught.value.sent
        assert bound(pg).cancels >= 1
        assert not Group.objects.using(PG).exists()

    def test_copy_and_stream_in_time_are_untouched(self, pg: BaseDatabaseWrapper, settings: SettingsWrapper) -> None:
        cancels = bound(pg).cancels
        with set_context(deadline=Deadline.from_timeout(5)), pg.cursor() as cursor:
            with cursor.copy("COPY (SELECT i FROM generate_series(1, 3) AS i) TO STDOUT") as copy:
                assert list(copy.rows()) == [("1",), ("2",), ("3",)]
            with cursor.copy("COPY auth_group (name) FROM STDIN") as copy:
                copy.write_row(["copied"])
            assert [row[0] for row in cursor.stream("SELECT i FROM generate_series(1, 3) AS i")] == [1, 2, 3]
        assert not bound(pg).busy
        assert list(Group.objects.using(PG).values_list("name", flat=True)) == ["copied"]
        with Timed() as timed, pg.cursor() as cursor:  # the timer of the 5 s deadline reaches no later statement
            assert len(list(cursor.stream("SELECT pg_sleep(0.3)"))) == 1
        assert timed.elapsed >= 0.3
        assert bound(pg).cancels == cancels
        # With the deadline up, neither is sent; with the setting off, neither is bounded.
        refused = bound(pg).refused
        with set_context(deadline=Deadline.from_timeout(0)), pg.cursor() as cursor:
            with pytest.raises(DeadlineExceeded) as caught, cursor.copy("COPY auth_group (name) FROM STDIN"):
                pass
            assert not caught.value.sent
            with pytest.raises(DeadlineExceeded):
                next(cursor.stream("SELECT 1"))
        assert bound(pg).refused == refused + 2
        settings.AIO_REQUEST = {**settings.AIO_REQUEST, db.SETTING_KEY: False}
        with set_context(deadline=Deadline.from_timeout(0.1)), Timed() as timed, pg.cursor() as cursor:
            assert len(list(cursor.stream("SELECT pg_sleep(0.25)"))) == 1
        assert timed.elapsed >= 0.25

    def test_a_new_connection_under_the_same_deadline_is_bounded_too(self, pg: BaseDatabaseWrapper) -> None:
        with set_context(deadline=Deadline.from_timeout(0.4)):
            assert scalar("SELECT 1") == 1
            pg.close()  # the timer was armed for the old backend
            with Timed() as timed, pytest.raises(DeadlineExceeded):
                scalar("SELECT pg_sleep(3)")
        assert timed.elapsed < 0.4 + SLACK

    def test_a_timer_never_reaches_a_query_sent_after_its_deadline_context(self, pg: BaseDatabaseWrapper) -> None:
        cancels = bound(pg).cancels
        with set_context(deadline=Deadline.from_timeout(0.2)):
            assert scalar("SELECT 1") == 1  # arms the timer for 0.2 s
        with Timed() as timed:
            scalar("SELECT pg_sleep(0.4)")  # no deadline: runs to its end
        assert timed.elapsed >= 0.4
        with set_context(deadline=Deadline.from_timeout(0.2)):
            assert scalar("SELECT 1") == 1
        with set_context(deadline=Deadline.from_timeout(5)):
            scalar("SELECT pg_sleep(0.4)")  # a later, longer deadline: runs to its end
        assert bound(pg).cancels == cancels

    @pytest.mark.parametrize(("first", "second"), [(0.2, 0.6), (2.0, 0.3), (0.3, 0.3)])
    def test_each_deadline_bounds_its_own_queries_on_one_connection(
        self, pg: BaseDatabaseWrapper, first: float, second: float
    ) -> None:
        """The timer is moved lazily from one deadline to the next: never cancelled at the earlier
        one's time, never left past the later one's."""
        with set_context(deadline=Deadline.from_timeout(first)):
            assert scalar("SELECT 1") == 1
        with Timed() as timed, set_context(deadline=Deadline.from_timeout(second)), pytest.raises(DeadlineExceeded):
            scalar("SELECT pg_sleep(3)")
        assert second - db.CANCEL_LEAD - 0.01 < timed.elapsed < second + SLACK

    def test_a_forked_child_bounds_its_queries(self, pg: BaseDatabaseWrapper) -> None:
        """gunicorn forks workers from a master that may have used a connection: the parent's timer
        entries are gone in the child, which must not count on them (here: a later deadline)."""
        with set_context(deadline=Deadline.from_timeout(0.3)):
            assert scalar("SELECT 1") == 1  # a timer entry pending in the parent
        pid = os.fork()
        if pid == 0:  # the child: its own connection, never the parent's socket
            code = 1
            try:
                pg.connection = None
                started = time.monotonic()
                with set_context(deadline=Deadline.from_timeout(1.0)):
                    scalar("SELECT pg_sleep(3)")
            except DeadlineExceeded:
                code = 0 if time.monotonic() - started < 1.0 + SLACK else 2
            finally:
                with contextlib.suppress(Exception):
                    pg.close()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert scalar("SELECT 1") == 1  # the parent's connection is untouched

    def test_a_deadline_that_passes_while_the_connection_is_idle_sends_nothing(self, pg: BaseDatabaseWrapper) -> None:
        with set_context(deadline=Deadline.from_timeout(0.1)):
            assert scalar("SELECT 1") == 1
            cancels = bound(pg).cancels
            time.sleep(0.2)
        assert bound(pg).cancels == cancels
        assert scalar("SELECT 1") == 1

    def test_each_thread_bounds_its_own_connection(self, pg: BaseDatabaseWrapper) -> None:
        """Threads given the request's deadline (hedging workers, sync_to_async) use their own connections."""
        results: dict[int, object] = {}

        def worker(index: int, deadline: Deadline) -> None:
            try:
                with set_context(deadline=deadline):
                    scalar("SELECT pg_sleep(2)")
                results[index] = "finished"
            except DeadlineExceeded as error:
                results[index] = error
            finally:
                connections.close_all()

        deadline = Deadline.from_timeout(0.4)
        threads = [threading.Thread(target=worker, args=(i, deadline)) for i in range(4)]
        with Timed() as timed:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert all(isinstance(r, DeadlineExceeded) for r in results.values()), results
        assert len(results) == 4
        assert timed.elapsed < 0.4 + 2 * SLACK

    def test_a_connection_its_thread_let_go_is_closed_before_the_deadline(self, pg: BaseDatabaseWrapper) -> None:
        """Under ASGI (uvicorn) each request's sync code runs in a thread of its own, whose
        connection Django leaves open with CONN_MAX_AGE > 0 until the thread's objects go. The
        deadline timer held the bound, and the bound its driver connection, until the deadline: 30
        requests kept 30 connections open for their 20 s (6 with the bound off)."""
        pids: list[int] = []

        def request() -> None:  # the thread ends without closing its connection
            with set_context(deadline=Deadline.from_timeout(30)):
                pids.append(scalar("SELECT pg_backend_pid()"))

        thread = threading.Thread(target=request)
        thread.start()
        thread.join()
        del thread
        gc.collect()  # the thread's DatabaseWrapper, whatever cycles it sits in
        end = time.monotonic() + 3
        while scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", pids):
            assert time.monotonic() < end, "the connection of a finished thread is still open"
            time.sleep(0.05)

    def test_a_connection_whose_statement_was_cancelled_is_closed_once_its_thread_let_go(
        self, pg: BaseDatabaseWrapper
    ) -> None:
        """The cancel thread kept its last task (the bound, holding the driver connection) while it
        waited up to 30 s for the next, and the deadline timer its last callback until the next
        entry was due: each connection cancelled at the deadline stayed open 30 s after its request's
        thread had ended (a burst of 20 cancellations under uvicorn: 17 connections open for 29 s)."""
        pids: list[int] = []

        def request() -> None:  # the thread ends without closing its connection
            with set_context(deadline=Deadline.from_timeout(0.3)):
                pids.append(scalar("SELECT pg_backend_pid()"))
                with pytest.raises(OperationalError) as cancelled:
                    scalar("SELECT pg_sleep(3)")
                assert is_deadline_cancellation(cancelled.value)

        threads = [threading.Thread(target=request) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(pids) == 3
        del threads, thread
        gc.collect()
        end = time.monotonic() + 3
        while scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [pids]):
            assert time.monotonic() < end, "a connection cancelled at the deadline is still open"
            time.sleep(0.05)
            gc.collect()

    def test_a_smaller_default_of_the_connection_is_kept(self, pg: BaseDatabaseWrapper) -> None:
        options = pg.settings_dict["OPTIONS"]
        pg.close()
        pg.settings_dict["OPTIONS"] = {**options, "options": "-c statement_timeout=200"}
        try:
            pg.ensure_connection()
            with Timed() as timed, set_context(deadline=Deadline.from_timeout(5)), pytest.raises(OperationalError) as c:
                scalar("SELECT pg_sleep(3)")
            assert timed.elapsed < 0.2 + SLACK
            assert not is_deadline_cancellation(c.value)  # the connection's own limit, not the deadline
            assert scalar("SHOW statement_timeout") == "200ms"
        finally:
            pg.close()
            pg.settings_dict["OPTIONS"] = options

    def test_nothing_is_bounded_when_the_setting_is_off(
        self, pg: BaseDatabaseWrapper, settings: SettingsWrapper
    ) -> None:
        settings.AIO_REQUEST = {**settings.AIO_REQUEST, db.SETTING_KEY: False}
        with set_context(deadline=Deadline.from_timeout(0.1)), Timed() as timed:
            scalar("SELECT pg_sleep(0.25)")
        assert timed.elapsed >= 0.25
        with set_context(deadline=Deadline.from_timeout(0)):
            assert scalar("SELECT 1") == 1


def end_other_sessions() -> None:
    """End the test database's sessions other than this thread's: the test database cannot be
    dropped at the end of the run while one is left (a proxied one may outlive its proxy briefly)."""
    run(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )


# The codes of PostgreSQL's CancelRequest, and of SSLRequest and GSSENCRequest, which may come first.
CANCEL_REQUEST_CODE = 80877102
ENCRYPTION_REQUEST_CODES = (80877103, 80877104)


def _receive(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        if not (more := sock.recv(size - len(data))):
            return None
        data += more
    return data


class HangingProxy:
    """A TCP proxy to the PostgreSQL server; with ``hang`` set, it accepts new connections (such as
    a cancel request's) and never answers them: a server that hangs rather than refuses. With
    ``swallow_cancels`` set, only the connections that carry a cancel request are held unanswered,
    as by a proxy that does not pass them on; others connect as usual. After :meth:`freeze`, the
    connections it carries then pass nothing on either way (a network partition: packets lost,
    nobody closes anything). While ``flowing`` is cleared, what they carry waits, and goes on once it
    is set again (a network that stalls and recovers)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.hang = False
        self.swallow_cancels = False
        self.swallowed = 0
        self.frozen: set[socket.socket] = set()
        self.flowing = threading.Event()
        self.flowing.set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.sockets.append(client)
            if self.hang:
                continue  # held open, never forwarded
            if self.swallow_cancels:
                threading.Thread(target=self._forward_unless_cancel, args=(client,), daemon=True).start()
            else:
                self._forward(client)

    def _forward(self, client: socket.socket, head: bytes = b"") -> None:
        upstream = socket.create_connection(self.target)
        self.sockets.append(upstream)
        upstream.sendall(head)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _forward_unless_cancel(self, client: socket.socket) -> None:
        """Hold a connection whose first message is a CancelRequest; forward the others. An SSL or
        GSSAPI encryption request before it (libpq 17's cancel requests send one when the
        connection's did) is declined here, as a server without SSL would, and the next read."""
        with contextlib.suppress(OSError):
            while (head := _receive(client, 8)) is not None:
                code = int.from_bytes(head[4:8], "big")
                if code == CANCEL_REQUEST_CODE:
                    self.swallowed += 1
                    return  # held open, never answered
                if code not in ENCRYPTION_REQUEST_CODES:
                    self._forward(client, head)
                    return
                client.sendall(b"N")

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                self.flowing.wait()
                if source not in self.frozen:
                    sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def freeze(self) -> None:
        """Lose every packet of the connections carried now (new ones pass)."""
        self.frozen = set(self.sockets)

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


@contextlib.contextmanager
def through_proxy(pg: BaseDatabaseWrapper) -> Iterator[HangingProxy]:
    """``pg``'s connections go through a :class:`HangingProxy` for the block."""
    proxy = HangingProxy(pg.settings_dict["HOST"] or "127.0.0.1", int(pg.settings_dict["PORT"] or 5432))
    saved = dict(pg.settings_dict)
    pg.close()
    pg.settings_dict.update(HOST="127.0.0.1", PORT=str(proxy.port))
    try:
        yield proxy
    finally:
        pg.close()
        pg.settings_dict.clear()
        pg.settings_dict.update(saved)
        proxy.close()
        end_other_sessions()


def _database_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "django_aio_request.server.database"]


@on_postgres
def test_a_cancel_request_the_server_never_answers_is_given_up_and_the_connection_closed(
    pg: BaseDatabaseWrapper, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A proxy that drops cancel requests: the request ends CANCEL_TIMEOUT after its deadline (it
    waited for the statement's end), and the shared deadline timer, which also bounds HTTP calls,
    keeps its time meanwhile. The next query gets a new connection."""
    monkeypatch.setattr(db, "CANCEL_TIMEOUT", 0.3)
    with through_proxy(pg) as proxy:
        assert scalar("SELECT 1") == 1  # through the proxy
        proxy.hang = True
        fired: list[float] = []
        due = time.monotonic() + 0.35
        deadline_timer.schedule(due, lambda: fired.append(time.monotonic()))
        with (
            caplog.at_level(logging.WARNING),
            Timed() as timed,
            set_context(deadline=Deadline.from_timeout(0.2)),
            pytest.raises(DeadlineExceeded, match="its connection was closed"),
        ):
            scalar("SELECT pg_sleep(3)")
        assert 0.2 + 0.3 - db.CANCEL_LEAD - 0.05 < timed.elapsed < 0.2 + 0.3 + SLACK
        assert fired
        assert fired[0] - due < 0.05  # the deadline timer was not held up by the hanging cancel
        assert _database_warnings(caplog) == [
            "a query of database 'postgres' ran past its deadline and could not cancel it (cancellation "
            "timeout expired): its connection is closed"
        ]
        proxy.hang = False
        pg.close_if_unusable_or_obsolete()  # what Django does when a request ends (request_finished)
        with set_context(deadline=Deadline.from_timeout(5)):
            assert scalar("SELECT 2") == 2  # on a new connection


@on_postgres
@pytest.mark.parametrize(
    ("blocks", "lost"),
    [
        ("outermost", True),
        ("nested without a savepoint", True),
        ("nested", False),
        ("set_autocommit-false", True),
        ("autocommit", False),
    ],
)
def test_a_cancelled_query_caught_without_a_savepoint_of_its_own_says_the_transaction_is_lost(
    pg: BaseDatabaseWrapper, blocks: str, lost: bool
) -> None:
    """A write, then a query the deadline cancels (its cancel request answered), caught by the code
    around it, which carries on. Without a savepoint of its own to roll back to, PostgreSQL aborts
    the whole transaction and its end commits nothing, without an error: ``transaction_lost`` said
    False, and a view using the guard of docs/database.md answered 200 for a write never committed
    (a review). In a nested block with its savepoint only that block is lost."""
    name = f"cancelled-{blocks}-{time.monotonic_ns()}"
    caught: list[DeadlineExceeded] = []

    def write_then_sleep() -> None:
        Group.objects.using(PG).create(name=name)
        try:
            with set_context(deadline=Deadline.from_timeout(0.2)):
                if blocks.startswith("nested"):
                    with transaction.atomic(using=PG, savepoint=blocks == "nested"):
                        scalar("SELECT pg_sleep(3)")
                else:
                    scalar("SELECT pg_sleep(3)")
        except DeadlineExceeded as error:
            caught.append(error)

    if blocks in ("autocommit", "set_autocommit-false"):
        transaction.set_autocommit(blocks == "autocommit", using=PG)
        try:
            write_then_sleep()
            if blocks != "autocommit":
                with contextlib.suppress(DatabaseError):  # the application's own end of its transaction
                    transaction.commit(using=PG)
        finally:
            if blocks != "autocommit":
                transaction.rollback(using=PG)
            transaction.set_autocommit(True, using=PG)
    else:
        with transaction.atomic(using=PG):
            write_then_sleep()
    [error] = caught
    assert error.sent
    assert error.transaction_lost is lost
    assert ("transaction it was in is lost" in str(error)) is lost
    assert Group.objects.using(PG).filter(name=name).exists() is not lost


@on_postgres
def test_after_a_savepoint_of_the_application_s_own_the_transaction_commits_though_the_flag_said_lost(
    pg: BaseDatabaseWrapper,
) -> None:
    """What docs/database.md says the flag cannot see: a savepoint made with transaction.savepoint()
    and rolled back to, after the deadline's error, lets the transaction go on and commit."""
    name = f"own-savepoint-{time.monotonic_ns()}"
    with transaction.atomic(using=PG):
        Group.objects.using(PG).create(name=name)
        savepoint = transaction.savepoint(using=PG)
        with set_context(deadline=Deadline.from_timeout(0.2)), pytest.raises(DeadlineExceeded) as raised:
            scalar("SELECT pg_sleep(3)")
        transaction.savepoint_rollback(savepoint, using=PG)
    assert raised.value.transaction_lost is True
    assert Group.objects.using(PG).filter(name=name).exists()


@on_postgres
def test_a_foreign_key_checked_at_commit_waits_past_the_deadline_for_a_row_another_session_holds(
    pg: BaseDatabaseWrapper,
) -> None:
    """What docs/database.md says is not bounded: Django's foreign keys on PostgreSQL are checked at
    COMMIT, which no deadline bounds. Another session holds the parent row 1 s; the write under a
    0.3 s deadline commits when it lets go, late, with no error."""
    kind = ContentType.objects.using(PG).get_or_create(app_label="atk", model=f"m{time.monotonic_ns()}")[0]
    parent = Permission.objects.using(PG).create(name="p", codename=f"p{time.monotonic_ns()}", content_type=kind)
    settings = pg.settings_dict
    other = psycopg.connect(
        host=settings["HOST"], port=settings["PORT"] or 5432, user=settings["USER"], dbname=settings["NAME"]
    )
    other.execute("SELECT id FROM auth_permission WHERE id = %s FOR UPDATE", [parent.pk])
    letting_go = threading.Timer(1.0, other.commit)
    letting_go.start()
    try:
        started = time.monotonic()
        with set_context(deadline=Deadline.from_timeout(0.3)), transaction.atomic(using=PG):
            group = Group.objects.using(PG).create(name=f"fk-{time.monotonic_ns()}")
            group.permissions.add(parent)  # its row in auth_group_permissions: checked at COMMIT
        elapsed = time.monotonic() - started
    finally:
        letting_go.join()
        other.close()
    assert elapsed > 0.9
    assert list(Group.objects.using(PG).get(pk=group.pk).permissions.all()) == [parent]


@on_postgres
@pytest.mark.parametrize("autocommit", [True, False], ids=["autocommit", "set_autocommit-false"])
def test_a_connection_cut_in_a_transaction_of_the_application_s_own_says_the_transaction_is_lost(
    pg: BaseDatabaseWrapper, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, autocommit: bool
) -> None:
    """``transaction.set_autocommit(False)``, a write, then a query the cancel request cannot stop:
    the connection is cut and the server rolls the write back, and ``transaction_lost`` said False,
    with no warning, as outside any transaction (a review). In autocommit nothing is lost but the
    statement."""
    monkeypatch.setattr(db, "CANCEL_TIMEOUT", 0.3)
    name = f"manual-{autocommit}-{time.monotonic_ns()}"
    with through_proxy(pg) as proxy:
        assert scalar("SELECT 1") == 1
        transaction.set_autocommit(autocommit, using=PG)
        try:
            Group.objects.using(PG).create(name=name)
            proxy.hang = True
            with (
                caplog.at_level(logging.WARNING),
                set_context(deadline=Deadline.from_timeout(0.2)),
                pytest.raises(DeadlineExceeded) as raised,
            ):
                scalar("SELECT pg_sleep(3)")
        finally:
            proxy.hang = False
            with contextlib.suppress(DatabaseError):
                transaction.set_autocommit(True, using=PG)  # fails on the cut connection, as Django's own
            pg.close()
    assert raised.value.transaction_lost is not autocommit
    lost = [m for m in _database_warnings(caplog) if "is lost" in m]
    assert len(lost) == (0 if autocommit else 1), lost
    assert Group.objects.using(PG).filter(name=name).exists() is autocommit


@on_postgres
def test_a_statement_that_returns_while_its_cancel_request_hangs_keeps_its_rows_and_its_connection(
    pg: BaseDatabaseWrapper, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A proxy that drops cancel requests, and a statement that ends 0.3 s after its deadline, while
    the cancel request still hangs: the connection was shut down after the statement had returned its
    rows, unseen by Django, and the next request on it (or the COMMIT) failed with a 500."""
    monkeypatch.setattr(db, "CANCEL_TIMEOUT", 0.8)
    with through_proxy(pg) as proxy:
        assert scalar("SELECT 1") == 1
        proxy.hang = True  # new connections (the cancel request's) are never answered
        with caplog.at_level(logging.WARNING), set_context(deadline=Deadline.from_timeout(0.3)):
            assert scalar("SELECT 7 FROM pg_sleep(0.6)") == 7  # ends at 0.6 s; the cancel gives up at 1.1 s
        time.sleep(0.8)  # past the cancel's timeout
        assert scalar("SELECT 2") == 2  # the same connection, still open
        assert pg.errors_occurred is False
        assert _database_warnings(caplog) == [
            "could not cancel a query of database 'postgres' at its deadline (cancellation timeout expired); "
            "it ended meanwhile"
        ]


@on_postgres
def test_a_network_partition_ends_the_query_by_its_deadline_plus_the_cancel_timeout(
    pg: BaseDatabaseWrapper, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Neither the statement's answer nor a cancel request gets through: without the shutdown the
    thread waited for TCP to give up on the connection (minutes)."""
    monkeypatch.setattr(db, "CANCEL_TIMEOUT", 0.3)
    with through_proxy(pg) as proxy:
        assert scalar("SELECT 1") == 1
        proxy.freeze()
        proxy.hang = True
        with (
            caplog.at_level(logging.WARNING),
            Timed() as timed,
            set_context(deadline=Deadline.from_timeout(0.3)),
            pytest.raises(DeadlineExceeded),
        ):
            scalar("SELECT 1")  # sent, never answered
        assert timed.elapsed < 0.3 + 0.3 + SLACK
        assert len(_database_warnings(caplog)) == 1


@on_postgres
def test_a_cancelled_query_whose_answer_is_lost_ends_the_cancel_timeout_later(
    pg: BaseDatabaseWrapper, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The cancel request goes through (a new connection), the connection's own packets are lost."""
    monkeypatch.setattr(db, "CANCEL_TIMEOUT", 0.3)
    with through_proxy(pg) as proxy:
        assert scalar("SELECT 1") == 1
        proxy.freeze()
        with (
            caplog.at_level(logging.WARNING),
            Timed() as timed,
            set_context(deadline=Deadline.from_timeout(0.3)),
            pytest.raises(DeadlineExceeded),
        ):
            scalar("SELECT pg_sleep(3)")
        assert 0.3 + 0.3 - db.CANCEL_LEAD - 0.05 < timed.elapsed < 0.3 + 0.3 + SLACK
        assert _database_warnings(caplog) == [
            "a query of database 'postgres' ran past its deadline and it was still running 0.3 s after it "
            "was cancelled: its connection is closed"
        ]


@on_postgres
def test_cancel_requests_left_unanswered_at_once_each_end_their_query_the_cancel_timeout_after_the_deadline(
    pg: BaseDatabaseWrapper, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Ten threads' queries reach their deadline together, through a proxy that swallows cancel
    requests: each raises CANCEL_TIMEOUT after the deadline. The cancel requests went out from 4
    threads, each held by an unanswered one for CANCEL_TIMEOUT: the others waited their turn, and
    the last queries raised 3 x CANCEL_TIMEOUT after the deadline."""
    monkeypatch.setattr(db, "CANCEL_TIMEOUT", 1.0)
    count, timeout = 10, 0.3
    clock: dict[str, Any] = {}
    results: dict[int, tuple[float, BaseException | None]] = {}

    def start() -> None:  # run by the last thread to reach the barrier, before any goes on
        clock["started"] = time.monotonic()
        clock["deadline"] = Deadline.from_timeout(timeout)

    ready = threading.Barrier(count, action=start)

    def worker(index: int) -> None:
        error: BaseException | None = None
        try:
            scalar("SELECT 1")  # connected through the proxy before the clock starts
            ready.wait(10)
            with set_context(deadline=clock["deadline"]):
                scalar("SELECT pg_sleep(10)")
        except Exception as caught:
            error = caught
        finally:
            results[index] = (time.monotonic() - clock.get("started", 0.0), error)
            connections.close_all()

    with through_proxy(pg) as proxy, caplog.at_level(logging.WARNING):
        proxy.swallow_cancels = True
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert len(results) == count
    for _, error in results.values():
        assert isinstance(error, DeadlineExceeded), error
        assert "its connection was closed" in str(error)
    elapsed = sorted(round(e, 2) for e, _ in results.values())
    # Each at about 1.3 s (before: 4 at 1.3, 4 at 2.3, 2 at 3.3).
    assert timeout + db.CANCEL_TIMEOUT - db.CANCEL_LEAD - 0.05 < elapsed[0], elapsed
    assert elapsed[-1] < timeout + db.CANCEL_TIMEOUT + 0.8, elapsed
    assert proxy.swallowed == count
    assert len(_database_warnings(caplog)) == count
