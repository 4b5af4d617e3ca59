"""Queries bounded by the deadline in the context (django_aio_request.server.database), on a real PostgreSQL server."""

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, OperationalError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.test import Client
from django.test.utils import CaptureQueriesContext
from prometheus_client import REGISTRY
from pytest_django.fixtures import Settings as SettingsWrapper

from django_aio_request import Deadline, set_context
from django_aio_request.server import database as db
from django_aio_request.server.database import DeadlineExceeded, Value, is_deadline_cancellation, plan, reserve_ms

PG = "postgres"
# transaction=True: queries run in autocommit, as in a view without ATOMIC_REQUESTS.
on_postgres = pytest.mark.django_db(databases=[PG], transaction=True)


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


def wrapper(connection: BaseDatabaseWrapper) -> db.StatementTimeout:
    found = db.wrapper_for(connection)
    assert found is not None
    return found


def scalar(sql: str, params: Any = None, using: str = PG) -> Any:
    with connections[using].cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    assert row is not None
    return row[0]


_UNITS = {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}


def show_timeout_ms() -> int:
    """``SHOW statement_timeout`` in ms (0: none), sent through the wrapper like any query."""
    text = scalar("SHOW statement_timeout")
    match = re.fullmatch(r"(\d+)(ms|s|min|h|d)?", text)
    assert match, text
    return int(match[1]) * _UNITS[match[2] or "ms"]


def server_default_ms() -> int:
    return int(scalar("SELECT reset_val FROM pg_settings WHERE name = 'statement_timeout'"))


class Counter:
    """An execute wrapper inside the deadline one: sees every statement that reaches the driver."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        self.statements.append(sql)
        return execute(sql, params, many, context)

    @property
    def changes(self) -> list[str]:
        return [s for s in self.statements if "statement_timeout" in s]


@pytest.fixture
def counter(pg: BaseDatabaseWrapper) -> Iterator[Counter]:
    seen = Counter()
    with pg.execute_wrapper(seen):
        yield seen


class TestPlan:
    """The rule that decides when to send a SET (no database needed)."""

    def test_without_a_deadline_the_default_is_restored_only_when_something_else_is_in_force(self) -> None:
        assert plan(Value.DEFAULT, None, Value.UNKNOWN) is None
        assert plan(475, None, None) is Value.DEFAULT
        assert plan(Value.UNKNOWN, None, 200) is Value.DEFAULT

    def test_a_set_gives_the_time_left_minus_the_reserve(self) -> None:
        assert plan(Value.DEFAULT, 500, Value.UNKNOWN) == 475
        assert plan(Value.UNKNOWN, 500, None) == 475
        assert plan(Value.DEFAULT, 60_000, None) == 59_000  # the reserve is at most 1 s
        assert plan(Value.DEFAULT, 2, None) == 1
        assert plan(Value.DEFAULT, 1, None) == 1

    def test_a_value_in_force_is_kept_while_it_is_at_most_the_time_left_and_not_much_smaller(self) -> None:
        assert plan(475, 500, None) is None
        assert plan(475, 475, None) is None
        assert plan(475, 520, None) is None
        assert plan(475, 474, None) == 474 - reserve_ms(474)  # more than is left: replaced
        assert plan(100, 500, None) == 475  # much less than is left (an earlier deadline): replaced

    def test_the_result_never_exceeds_the_time_left(self) -> None:
        for left in [*range(1, 300), 499, 500, 1000, 5000, 20_000, 60_000, 3_600_000]:
            for current in [Value.DEFAULT, Value.UNKNOWN, *range(1, 400, 7), 950, 4900, 59_000, 70_000]:
                for default in [Value.UNKNOWN, None, 100, 30_000]:
                    decided = plan(current, left, default)
                    in_force = current if decided is None else decided
                    if in_force is Value.DEFAULT:
                        assert isinstance(default, int)
                        assert default <= left
                        continue
                    assert isinstance(in_force, int), (current, left, default)
                    assert 1 <= in_force <= left
                    assert in_force >= min(left, default if isinstance(default, int) else left) - 2 * reserve_ms(left)

    def test_a_default_that_already_bounds_the_query_is_kept_and_never_raised(self) -> None:
        assert plan(Value.DEFAULT, 5000, 200) is None
        assert plan(95, 5000, 200) is Value.DEFAULT
        assert plan(Value.DEFAULT, 100, 200) == 95


class TestIsDeadlineCancellation:
    class PgError(Exception):
        def __init__(self, message: str, sqlstate: str) -> None:
            super().__init__(message)
            self.sqlstate = sqlstate

    def test_statement_timeout_raw_or_wrapped_by_django(self) -> None:
        raw = self.PgError("canceling statement due to statement timeout", "57014")
        assert is_deadline_cancellation(raw)
        wrapped = OperationalError(str(raw))
        wrapped.__cause__ = raw
        assert is_deadline_cancellation(wrapped)

    def test_psycopg2_style_pgcode(self) -> None:
        error = Exception("ERROR:  canceling statement due to statement timeout")
        error.pgcode = "57014"  # type: ignore[attr-defined]
        assert is_deadline_cancellation(error)

    def test_own_exception(self) -> None:
        assert is_deadline_cancellation(DeadlineExceeded("too late"))

    def test_other_errors_and_cancel_requests_are_not(self) -> None:
        assert not is_deadline_cancellation(self.PgError("canceling statement due to user request", "57014"))
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


@pytest.mark.django_db
def test_sqlite_connections_are_left_alone(enabled: None) -> None:
    connection = connections["default"]
    connection.ensure_connection()
    assert connection.vendor == "sqlite"
    assert db.wrapper_for(connection) is None
    with set_context(deadline=Deadline.from_timeout(0)):  # expired: PostgreSQL would refuse to send
        assert scalar("SELECT 1", using="default") == 1


@on_postgres
class TestOnPostgres:
    def test_a_slow_query_is_cancelled_by_the_server_near_the_deadline(self, pg: BaseDatabaseWrapper) -> None:
        started = time.monotonic()
        with set_context(deadline=Deadline.from_timeout(0.5)), pytest.raises(DatabaseError) as caught:
            scalar("SELECT pg_sleep(3)")
        elapsed = time.monotonic() - started

        assert 0.4 < elapsed < 0.5 + 0.3
        assert is_deadline_cancellation(caught.value)
        assert isinstance(caught.value, DeadlineExceeded)
        assert isinstance(caught.value, OperationalError)
        assert caught.value.sent
        assert caught.value.statement_timeout_ms is not None
        assert 450 <= caught.value.statement_timeout_ms <= 475
        assert getattr(caught.value.__cause__, "__cause__", None).sqlstate == "57014"  # type: ignore[union-attr]
        assert scalar("SELECT 1") == 1  # the connection is still usable

    def test_quick_queries_under_a_deadline_succeed_and_see_their_own_results(self, pg: BaseDatabaseWrapper) -> None:
        with set_context(deadline=Deadline.from_timeout(5)):
            assert scalar("SELECT %s::int + 1", [41]) == 42
            group = Group.objects.using(PG).create(name="deadline")  # INSERT ... RETURNING
            assert Group.objects.using(PG).filter(name="deadline").count() == 1
            assert Group.objects.using(PG).filter(pk=group.pk).update(name="renamed") == 1  # rowcount
            assert list(Group.objects.using(PG).values_list("name", flat=True)) == ["renamed"]
            assert Group.objects.using(PG).filter(pk=group.pk).delete()[0] == 1
            assert 0 < show_timeout_ms() <= 5000

    def test_without_a_deadline_queries_run_to_completion_under_the_connections_default(
        self, pg: BaseDatabaseWrapper
    ) -> None:
        default = server_default_ms()
        with set_context(deadline=Deadline.from_timeout(0.2)):
            assert 0 < show_timeout_ms() <= 200
        started = time.monotonic()
        scalar("SELECT pg_sleep(0.3)")
        assert time.monotonic() - started >= 0.3
        assert show_timeout_ms() == default
        assert wrapper(pg).in_force(False) is Value.DEFAULT

    def test_a_set_is_sent_only_when_needed(self, pg: BaseDatabaseWrapper, counter: Counter) -> None:
        before = wrapper(pg).changes, wrapper(pg).round_trips
        with CaptureQueriesContext(pg) as captured, set_context(deadline=Deadline.from_timeout(30)):
            for i in range(20):
                assert scalar("SELECT %s::int", [i]) == i

        assert len(counter.statements) == 20  # each SET went with a query: no extra round trip
        assert 1 <= len(counter.changes) <= 2
        assert wrapper(pg).changes - before[0] == len(counter.changes)
        assert wrapper(pg).round_trips == before[1]
        # Django's query log has one entry per query (Django 5 shows the SET in it, 4.2 does not).
        assert len(captured.captured_queries) == 20

    @pytest.mark.parametrize("atomic", [False, True], ids=["autocommit", "atomic"])
    def test_the_timeout_never_exceeds_the_time_left(self, pg: BaseDatabaseWrapper, atomic: bool) -> None:
        block = transaction.atomic(using=PG) if atomic else set_context()
        with block:
            for seconds, rounds in [(2.0, 25), (5.0, 5), (0.2, 3)]:
                deadline = Deadline.from_timeout(seconds)
                with set_context(deadline=deadline):
                    for _ in range(rounds):
                        left_before = deadline.timeout * 1000
                        value = show_timeout_ms()
                        left_after = deadline.timeout * 1000
                        assert 0 < value <= left_before
                        assert value >= 0.9 * left_after - 1  # and not much less
                        time.sleep(0.015)

    def test_a_cancellation_inside_a_transaction_leaves_the_connection_usable(self, pg: BaseDatabaseWrapper) -> None:
        default = server_default_ms()

        def write_then_sleep() -> None:
            with transaction.atomic(using=PG), set_context(deadline=Deadline.from_timeout(0.3)):
                Group.objects.using(PG).create(name="rolled back")
                scalar("SELECT pg_sleep(3)")

        with pytest.raises(DeadlineExceeded):
            write_then_sleep()
        assert not Group.objects.using(PG).exists()
        assert show_timeout_ms() == default

        # Cancelled in a savepoint: the outer transaction goes on.
        with transaction.atomic(using=PG):
            Group.objects.using(PG).create(name="kept")
            with set_context(deadline=Deadline.from_timeout(0.3)):
                started = time.monotonic()
                with pytest.raises(DeadlineExceeded), transaction.atomic(using=PG):
                    scalar("SELECT pg_sleep(3)")
                assert time.monotonic() - started < 0.6
            assert show_timeout_ms() == default  # ROLLBACK TO SAVEPOINT may undo a SET LOCAL: restored
            deadline = Deadline.from_timeout(2)
            with set_context(deadline=deadline):
                assert 0 < show_timeout_ms() <= 2000
        assert list(Group.objects.using(PG).values_list("name", flat=True)) == ["kept"]
        assert show_timeout_ms() == default

    def test_an_expired_deadline_raises_without_reaching_the_server(
        self, pg: BaseDatabaseWrapper, counter: Counter
    ) -> None:
        with set_context(deadline=Deadline.from_timeout(0)), pytest.raises(DeadlineExceeded) as caught:
            Group.objects.using(PG).count()
        assert counter.statements == []
        assert not caught.value.sent
        assert is_deadline_cancellation(caught.value)
        assert "deadline expired before the query was sent to database 'postgres'" in str(caught.value)

        # In a transaction too; the rollback still goes through.
        def write_then_count_too_late() -> None:
            with transaction.atomic(using=PG):
                Group.objects.using(PG).create(name="x")
                with set_context(deadline=Deadline.from_timeout(0)):
                    Group.objects.using(PG).count()

        with pytest.raises(DeadlineExceeded):
            write_then_count_too_late()
        assert Group.objects.using(PG).count() == 0

    def test_statements_that_cannot_carry_the_set_get_one_of_their_own(self, pg: BaseDatabaseWrapper) -> None:
        trips = wrapper(pg).round_trips
        started = time.monotonic()
        with set_context(deadline=Deadline.from_timeout(0.5)), pytest.raises(DeadlineExceeded):
            scalar_free("DO $$ BEGIN PERFORM pg_sleep(3); END $$")
        assert time.monotonic() - started < 0.8
        assert wrapper(pg).round_trips == trips + 1

        started = time.monotonic()
        with (
            set_context(deadline=Deadline.from_timeout(0.3)),
            pytest.raises(DeadlineExceeded),
            pg.cursor() as cursor,
        ):
            cursor.executemany("SELECT pg_sleep(%s)", [(0.05,), (3,)])
        assert time.monotonic() - started < 0.6
        assert wrapper(pg).round_trips == trips + 2
        assert scalar("SELECT 1") == 1

    def test_server_side_cursors_get_a_set_of_their_own(self, pg: BaseDatabaseWrapper) -> None:
        Group.objects.using(PG).bulk_create([Group(name="a"), Group(name="b")])
        assert show_timeout_ms() == server_default_ms()  # no deadline: nothing of ours in force
        trips = wrapper(pg).round_trips
        with set_context(deadline=Deadline.from_timeout(0.4)):
            names = list(Group.objects.using(PG).order_by("name").values_list("name", flat=True).iterator(chunk_size=1))
            assert names == ["a", "b"]
            assert wrapper(pg).round_trips == trips + 1  # DECLARE ... CURSOR cannot follow a SET in one string
            assert 0 < show_timeout_ms() <= 400

    def test_server_side_binding_gets_a_set_of_its_own(self, pg: BaseDatabaseWrapper) -> None:
        options = pg.settings_dict["OPTIONS"]
        pg.close()
        pg.settings_dict["OPTIONS"] = {**options, "server_side_binding": True}
        try:
            trips = wrapper(pg).round_trips if db.wrapper_for(pg) else 0
            with set_context(deadline=Deadline.from_timeout(2)):
                assert scalar("SELECT %s::int", [7]) == 7
            assert wrapper(pg).round_trips == trips + 1
            started = time.monotonic()
            with set_context(deadline=Deadline.from_timeout(0.3)), pytest.raises(DeadlineExceeded):
                scalar("SELECT pg_sleep(%s)", [3])
            assert time.monotonic() - started < 0.6
        finally:
            pg.close()
            pg.settings_dict["OPTIONS"] = options

    def test_a_smaller_default_of_the_connection_is_kept(self, pg: BaseDatabaseWrapper) -> None:
        options = pg.settings_dict["OPTIONS"]
        pg.close()
        pg.settings_dict["OPTIONS"] = {**options, "options": "-c statement_timeout=200"}
        try:
            assert server_default_ms() == 200
            with set_context(deadline=Deadline.from_timeout(5)):
                assert show_timeout_ms() == 200  # a long deadline never loosens it
            with set_context(deadline=Deadline.from_timeout(0.1)):
                assert 0 < show_timeout_ms() <= 100
            with set_context(deadline=Deadline.from_timeout(5)):
                assert show_timeout_ms() == 200
            assert show_timeout_ms() == 200
        finally:
            pg.close()
            pg.settings_dict["OPTIONS"] = options

    def test_nothing_is_bounded_when_the_setting_is_off(
        self, pg: BaseDatabaseWrapper, settings: SettingsWrapper
    ) -> None:
        default = server_default_ms()
        with set_context(deadline=Deadline.from_timeout(5)):
            assert 0 < show_timeout_ms() <= 5000
        settings.AIO_REQUEST = {**settings.AIO_REQUEST, db.SETTING_KEY: False}
        with set_context(deadline=Deadline.from_timeout(0.1)):
            started = time.monotonic()
            scalar("SELECT pg_sleep(0.25)")
            assert time.monotonic() - started >= 0.25
            assert show_timeout_ms() == default  # what was set for the last deadline is gone too
        with set_context(deadline=Deadline.from_timeout(0)):
            assert scalar("SELECT 1") == 1

    @pytest.mark.urls("tests.support.urls_db")
    def test_a_view_answers_408_when_its_query_runs_out_of_the_deadline(
        self, pg: BaseDatabaseWrapper, client: Client, settings: SettingsWrapper
    ) -> None:
        # The view sets its own deadline: this is about the database layer, not the middleware.
        settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if not m.startswith("django_aio_request.")]
        started = time.monotonic()
        response = client.get("/sleep/", {"sleep": "3", "timeout": "0.5"})
        elapsed = time.monotonic() - started

        assert response.status_code == 408
        assert response.content == b"the query ran out of the deadline\n"
        assert elapsed < 0.5 + 0.3
        assert client.get("/sleep/", {"sleep": "0.01", "timeout": "2"}).status_code == 200

    @pytest.mark.urls("tests.support.urls_db")
    def test_the_middleware_answers_408_for_a_query_that_outlives_the_callers_deadline(
        self, pg: BaseDatabaseWrapper, client: Client, settings: SettingsWrapper
    ) -> None:
        settings.AIO_REQUEST = {"DATABASE_STATEMENT_TIMEOUT": True}
        counted = "aio_request_server_database_cancelled_total"
        before = REGISTRY.get_sample_value(counted) or 0.0
        started = time.monotonic()
        response = client.get("/sleep-unguarded/", {"sleep": "3"}, headers={"X-Request-Timeout": "0.5"})
        elapsed = time.monotonic() - started

        assert response.status_code == 408
        assert elapsed < 0.5 + 0.3
        assert REGISTRY.get_sample_value(counted) == before + 1
        ok = client.get("/sleep-unguarded/", {"sleep": "0.01"}, headers={"X-Request-Timeout": "2"})
        assert ok.status_code == 200


def scalar_free(sql: str) -> None:
    """Run a statement that returns no rows."""
    with connections[PG].cursor() as cursor:
        cursor.execute(sql)
