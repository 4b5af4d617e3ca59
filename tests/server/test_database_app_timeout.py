"""The application's own statement_timeout, written in any of its many spellings, on a real PostgreSQL:
a deadline never lifts a stricter one, a looser one (or none) never weakens the deadline, and the
value in force afterwards is exactly what the application made it (the bound adds nothing)."""

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import OperationalError, connections, transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pytest_django.fixtures import Settings as SettingsWrapper

from django_aio_request import Deadline, set_context
from django_aio_request.server import database as db
from django_aio_request.server.database import DeadlineExceeded, is_deadline_cancellation

PG = "postgres"
SLACK = 0.5  # tells bounded from unbounded (the statements sleep 1-3 s) on a loaded shared machine; how
# close to the deadline a cancellation comes is measured by benchmarks/database.py

pytestmark = pytest.mark.django_db(databases=[PG], transaction=True)


@pytest.fixture(autouse=True)
def enabled(settings: SettingsWrapper) -> Iterator[None]:
    db.install()
    settings.AIO_REQUEST = {**settings.AIO_REQUEST, db.SETTING_KEY: True}
    yield
    execute("RESET statement_timeout")  # the last example's, before pytest-django empties the tables


def execute(sql: str) -> Any:
    with connections[PG].cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone() if cursor.description else None


_UNITS = {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}


def in_force_ms() -> int:
    text = execute("SHOW statement_timeout")[0]
    match = re.fullmatch(r"(\d+)(ms|s|min|h|d)?", text)
    assert match, text
    return int(match[1]) * _UNITS[match[2] or "ms"]


def cased(word: str) -> st.SearchStrategy[str]:
    flips = st.lists(st.booleans(), min_size=len(word), max_size=len(word))
    return flips.map(lambda up: "".join(c.upper() if u else c.lower() for c, u in zip(word, up, strict=True)))


# Between tokens: PostgreSQL's whitespace and both kinds of comment, nested block comments included.
gap = st.sampled_from([" ", "  ", "\t", "\n", " /* app */ ", "/*a/*b*/c*/", " -- note\n", "\n\t "])
# Before the statement: nothing, or what an ORM, a tracer or a person puts there.
lead = st.sampled_from(["", " ", "\n", "/* app */ ", "/* traceparent='00-ab-cd-01' */", "-- by hand\n", "/**/"])
trail = st.sampled_from(["", ";", " ;", "; ", " -- done", " /* end */;"])
name = st.one_of(cased("statement_timeout"), st.just('"statement_timeout"'))


@st.composite
def value(draw: st.DrawFn, ms: int) -> str:
    """``ms`` as PostgreSQL accepts it: a bare number, quoted, with a unit, in fractions of a unit."""
    spellings = [str(ms), f"'{ms}'", f"'{ms}ms'", f"'{ms} ms'", f"'{ms / 1000}s'"]
    if ms % 1000 == 0:  # a fraction of a unit is rounded to the next smaller unit: '0.001min' is 0 s, off
        spellings += [f"'{ms // 1000}s'", f"'{ms / 60_000}min'"]
    return draw(st.sampled_from(spellings))


@st.composite
def setting(draw: st.DrawFn, ms: int) -> tuple[str, bool]:
    """A statement that puts ``ms`` in force, and whether it lasts only for the transaction."""
    if draw(st.booleans()):
        scope = draw(st.sampled_from(["", "SESSION", "LOCAL"]))
        words = [draw(cased("set"))]
        if scope:
            words.append(draw(cased(scope)))
        words += [draw(name), draw(st.sampled_from(["=", draw(cased("to"))])), draw(value(ms))]
        body = words[0] + "".join(draw(gap) + word for word in words[1:])
        local = scope == "LOCAL"
    else:
        local = draw(st.booleans())
        text = draw(value(ms)).strip("'")
        flag = draw(cased("true" if local else "false"))
        call = f"{draw(cased('set_config'))}('statement_timeout',{draw(gap)}'{text}', {flag})"
        body = f"{draw(cased('select'))}{draw(gap)}{call}"
    return draw(lead) + body + draw(trail), local


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), strict_ms=st.integers(min_value=60, max_value=150))
def test_a_stricter_timeout_of_the_application_is_never_lifted(data: st.DataObject, strict_ms: int) -> None:
    execute("RESET statement_timeout")
    default = in_force_ms()
    statement, local = data.draw(setting(strict_ms), label="statement")
    with set_context(deadline=Deadline.from_timeout(5)), transaction.atomic(using=PG):
        execute(statement)
        assert in_force_ms() == strict_ms
        started = time.monotonic()
        with pytest.raises(OperationalError) as caught, transaction.atomic(using=PG):
            execute("SELECT pg_sleep(1)")
        elapsed = time.monotonic() - started
    assert strict_ms / 1000 - 0.01 <= elapsed < strict_ms / 1000 + SLACK
    assert not isinstance(caught.value, DeadlineExceeded)
    assert not is_deadline_cancellation(caught.value)  # the application's own error
    assert in_force_ms() == (default if local else strict_ms)  # what the application left, nothing else


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), loose_ms=st.sampled_from([0, 3000, 60_000, 3_600_000]), autocommit=st.booleans())
def test_a_looser_timeout_of_the_application_never_weakens_the_deadline(
    data: st.DataObject, loose_ms: int, autocommit: bool
) -> None:
    execute("RESET statement_timeout")
    statement, local = data.draw(setting(loose_ms), label="statement")
    block = transaction.atomic(using=PG) if local or not autocommit else set_context()

    def set_then_sleep() -> None:
        with set_context(deadline=Deadline.from_timeout(0.15)), block:
            execute(statement)
            execute("SELECT pg_sleep(2)")

    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        set_then_sleep()
    assert time.monotonic() - started < 0.15 + SLACK
    # The next query, on the same connection, under a deadline shorter than anything set: bounded too.
    started = time.monotonic()
    with set_context(deadline=Deadline.from_timeout(0.1)), pytest.raises(DeadlineExceeded):
        execute("SELECT pg_sleep(2)")
    assert time.monotonic() - started < 0.1 + SLACK
    assert in_force_ms() == (0 if local or not autocommit else loose_ms)


ending = st.sampled_from(["ROLLBACK", "COMMIT", "END", "ABORT", "RELEASE SAVEPOINT s1", "ROLLBACK TO SAVEPOINT s1"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(end=ending, between=st.lists(st.sampled_from([";", " ", "\n", "/* x */", "-- x\n", "WORK", ","]), max_size=4))
def test_nothing_rides_along_a_transaction_end_after_the_deadline(end: str, between: list[str]) -> None:
    """After the deadline only statements that end a transaction or savepoint are still sent (so
    atomic() can clean up): a query appended to one is refused, never run unbounded."""
    statement = end + "".join(between) + " SELECT pg_sleep(1)"
    started = time.monotonic()
    with (
        transaction.atomic(using=PG),
        set_context(deadline=Deadline.from_timeout(0)),
        pytest.raises(DeadlineExceeded),
    ):
        execute(statement)
    assert time.monotonic() - started < SLACK
