"""``round_bound.bounded``: a statement of the breaker publisher waits for a lock no longer than the
bound, on a real PostgreSQL and on an SQLite file another connection holds, and the connection's own
setting is what it was after the block."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import OperationalError, connections

from django_aio_request.round_bound import bounded
from tests.support.postgres import locked

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.django_db(databases=["postgres"], transaction=True)
def test_on_postgresql_a_statement_waits_for_a_lock_no_longer_than_the_bound() -> None:
    with connections["postgres"].cursor() as cursor:
        cursor.execute("SHOW lock_timeout")
        before = cursor.fetchone()
    with locked("django_aio_request_breakertransition", "SHARE"):
        started = time.monotonic()
        with (
            pytest.raises(OperationalError, match="canceling statement due to lock timeout"),
            bounded("postgres", 0.3),
            connections["postgres"].cursor() as cursor,
        ):
            cursor.execute("DELETE FROM django_aio_request_breakertransition")
        waited = time.monotonic() - started
    assert 0.3 <= waited < 1.5
    with connections["postgres"].cursor() as cursor:
        cursor.execute("SHOW lock_timeout")
        assert cursor.fetchone() == before  # the block's own transaction took its setting with it
        cursor.execute("DELETE FROM django_aio_request_breakertransition")  # no lock: unbounded again


@pytest.mark.django_db(databases=["postgres"], transaction=True)
def test_on_postgresql_a_statement_that_runs_longer_than_the_bound_is_not_cut() -> None:
    """Only waits for locks are bounded: with a 1 s statement_timeout as well, a prune deleting a
    backlog of 1.5 million transitions (2.3 s) was cancelled in every round and never finished (a review)."""
    started = time.monotonic()
    with bounded("postgres", 0.2), connections["postgres"].cursor() as cursor:
        cursor.execute("SELECT pg_sleep(0.5)")
    assert time.monotonic() - started >= 0.5


SQLITE_WRITER = """
import sqlite3, sys, time, django
django.setup()
from django.db import OperationalError, connection
from django_aio_request.round_bound import bounded
other = sqlite3.connect(sys.argv[1], isolation_level=None)
other.execute("BEGIN IMMEDIATE")  # another process's write transaction: the write lock
with connection.cursor() as cursor:
    cursor.execute("PRAGMA busy_timeout")
    before = cursor.fetchone()[0]
started = time.monotonic()
try:
    with bounded("default", 0.3), connection.cursor() as cursor:
        cursor.execute("DELETE FROM django_aio_request_breakertransition")
except OperationalError as error:
    failed = str(error)
waited = time.monotonic() - started
with connection.cursor() as cursor:
    cursor.execute("PRAGMA busy_timeout")
    after = cursor.fetchone()[0]
print(failed, round(waited, 3), before, after)
"""


def test_on_sqlite_a_write_waits_for_another_connection_s_lock_no_longer_than_the_bound(tmp_path: Path) -> None:
    database = tmp_path / "bounded.sqlite3"
    (tmp_path / "bounded_settings.py").write_text(
        "from settings.test import *  # noqa: F403\n\n"
        f"DATABASES = {{'default': {{'ENGINE': 'django.db.backends.sqlite3', 'NAME': {str(database)!r}}}}}\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "bounded_settings", "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    migrate = [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"]
    subprocess.run(migrate, cwd=ROOT, env=env, check=True, capture_output=True, timeout=60)
    done = subprocess.run(
        [sys.executable, "-c", SQLITE_WRITER, str(database)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    *message, waited, before, after = done.stdout.split()
    assert " ".join(message) == "database is locked"
    assert 0.3 <= float(waited) < 1.5  # Django's default for SQLite is 5 s
    assert before == after == "5000"  # the connection's own busy timeout, put back
