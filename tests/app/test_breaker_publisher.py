"""The publisher thread: this process's breakers into the database for admin, admin's overrides into the breakers."""

import contextlib
import datetime
import functools
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
import zoneinfo
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.admin.utils import quote
from django.core.management import call_command
from django.db import DatabaseError, OperationalError, connections
from django.test import Client as BrowserClient
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from django_aio_request import breaker_publisher, clients, get
from django_aio_request.breaker.cache_store import CacheCircuitStore
from django_aio_request.breaker.circuit_breaker import CircuitState, CircuitTransition, DefaultCircuitBreaker, Override
from django_aio_request.breaker_publisher import Publisher
from django_aio_request.models import BreakerOverride, BreakerReport, BreakerStatus, BreakerTransition, breaker_id
from django_aio_request.testing import fake_client, force_breaker, reply
from tests.support import hanging_cache
from tests.support.forking import in_child
from tests.support.hanging_overrides import publisher_whose_overrides_hang
from tests.support.loopback import LoopbackServer, free_port, replies, silent_listener, wait_until_listening
from tests.support.manage import manage
from tests.support.postgres import locked
from tests.support.redis_server import require_redis
from tests.support.resources import eventually

ROOT = Path(__file__).resolve().parents[2]

BREAKER = {"BREAK_DURATION": 30, "SAMPLING_DURATION": 10, "MINIMUM_THROUGHPUT": 2, "FAILURE_THRESHOLD": 0.5}


def setting(url: str, **extra: object) -> dict[str, object]:
    billing = {"ENDPOINT": url, "CIRCUIT_BREAKER": BREAKER, "SAFE_METHOD_STRATEGY": {"NAME": "single"}}
    return {"SERVICE_NAME": "orders", "CLIENTS": {"billing": billing, "plain": {"ENDPOINT": url}}, **extra}


@pytest.fixture(autouse=True)
def _no_other_publisher_runs() -> None:
    """Stop the process's own publisher thread, which an earlier test's client may have started (it
    is started once per process): its rounds wrote rows of its breakers while these tests counted
    theirs (a second transition where prune() had left one, under pytest-xdist's ordering)."""
    breaker_publisher.publisher.stop()


@pytest.fixture
def publisher(monkeypatch: pytest.MonkeyPatch) -> Iterator[Publisher]:
    """The process's publisher replaced by one whose thread never runs a round, nor does a client
    built wait for one: the test calls ``run_once``."""
    made = Publisher(interval=3600, first_read_wait=0)
    monkeypatch.setattr(made, "_run", lambda stop, wake: stop.wait())
    monkeypatch.setattr(breaker_publisher, "publisher", made)
    yield made
    made.stop()


def call(name: str, times: int) -> list[int]:
    statuses = []
    for _ in range(times):
        with clients[name].request(get("down")) as response:
            statuses.append(response.status)
    return statuses


def breaker(name: str = "billing") -> DefaultCircuitBreaker[str, object]:
    found = clients[name].circuit_breaker
    assert isinstance(found, DefaultCircuitBreaker)
    return found


def settings_module(
    tmp_path: Path, name: str, database: dict[str, str], aio_request: dict[str, object], extra: str = ""
) -> dict[str, str]:
    """Write a settings module ``name`` (the test settings with this database, AIO_REQUEST and
    ``extra`` lines) into ``tmp_path``: the environment of a subprocess that uses it."""
    (tmp_path / f"{name}.py").write_text(
        "from settings.test import *  # noqa: F403\n\n"
        f"DATABASES = {{'default': {database!r}}}\n{extra}"
        f"AIO_REQUEST = {aio_request!r}\n"
    )
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": name,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH")])),
    }


def billing_on_sqlite(tmp_path: Path, name: str, url: str, interval: float, extra: str = "") -> dict[str, str]:
    """The environment of a subprocess whose settings (``<name>_settings``) have the client ``billing``
    (a breaker, single attempts) calling ``url``, rounds every ``interval`` seconds, and a SQLite
    database of its own in ``tmp_path``."""
    billing = {"ENDPOINT": url, "CIRCUIT_BREAKER": BREAKER, "SAFE_METHOD_STRATEGY": {"NAME": "single"}}
    database = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / f"{name}.sqlite3")}
    aio_request = {
        "SERVICE_NAME": "orders",
        "CLIENTS": {"billing": billing},
        "CIRCUIT_BREAKER_PUBLISH_INTERVAL": interval,
    }
    return settings_module(tmp_path, f"{name}_settings", database, aio_request, extra)


def python(env: dict[str, str], *args: str) -> str:
    """``python <args>`` in a subprocess with ``env`` (see :func:`settings_module`), as a separate OS
    process of the project runs; its stdout, once it exited 0."""
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def migrated(env: dict[str, str]) -> "functools.partial[str]":
    """:func:`python` with ``env``, once ``manage.py migrate`` has made the database it names."""
    run = functools.partial(python, env)
    run("manage.py", "migrate", "--noinput", "-v", "0")
    return run


@pytest.mark.django_db
def test_a_round_publishes_reports_and_transitions(server: LoopbackServer, publisher: Publisher) -> None:
    server.route("/down", lambda h: h.reply(500))
    with override_settings(AIO_REQUEST=setting(server.url)):
        assert call("billing", 3) == [500, 500, 502]
        call("plain", 1)  # no breaker: nothing published
        assert publisher.running  # building a client with a breaker started the thread
        assert publisher.run_once()

        report = BreakerReport.objects.get()
        assert (report.client, report.endpoint, report.state) == ("billing", server.url, "open")
        assert (report.host, report.pid) == (socket.gethostname(), os.getpid())
        assert (report.failures, report.successes, report.failure_ratio) == (2, 0, 1.0)
        assert report.changed_at is not None
        assert abs((report.changed_at - report.reported_at).total_seconds()) < 5

        transition = BreakerTransition.objects.get()
        assert (transition.client, transition.endpoint) == ("billing", server.url)
        assert (transition.from_state, transition.to_state, transition.failure_ratio) == ("closed", "open", 1.0)

        row = BreakerStatus.objects.get()
        assert (row.client, row.state, row.processes, row.failures, row.open_count) == ("billing", "open", 1, 2, 1)
        assert row.processes_summary() == "1 process: 1 open"

        # A second round updates the same row instead of adding one, and adds no transition.
        assert publisher.run_once()
        assert BreakerReport.objects.count() == 1
        assert BreakerTransition.objects.count() == 1

    # The client is gone (settings changed): its report goes too.
    assert publisher.run_once()
    assert not BreakerReport.objects.exists()


@pytest.mark.django_db
def test_the_last_round_at_exit_writes_only_where_the_rounds_wrote(
    server: LoopbackServer, publisher: Publisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test run's rounds write to its test database, which Django's test runner and pytest-django
    drop at the end, naming the real database again in the settings: the last round at exit then wrote
    the test's circuits into that one (a report and a transition per run, 4 of 4 runs in a review)."""
    server.route("/down", lambda h: h.reply(500))
    with override_settings(AIO_REQUEST=setting(server.url)):
        assert call("billing", 3) == [500, 500, 502]
        assert publisher.run_once()  # to the test database
        assert publisher.running
        opened = BreakerTransition.objects.count()
        publisher._on_transition(
            "billing", CircuitTransition(server.url, CircuitState.OPEN, CircuitState.HALF_OPEN, 2, 0, 0.0)
        )
        monkeypatch.setitem(connections["default"].settings_dict, "NAME", "the_real_database")  # as at teardown
        rounds: list[int] = []

        def round_(number: int) -> bool:
            rounds.append(number)
            return True

        monkeypatch.setattr(publisher, "_run_once", round_)
        publisher.publish_at_exit(timeout=1.0)
    assert rounds == []  # no round, so nothing written to the database named now
    monkeypatch.undo()
    assert BreakerTransition.objects.count() == opened


def write_project(tmp_path: Path, databases: str, *, installed: str = "", aio_request: str = "") -> dict[str, str]:
    """A project in ``tmp_path`` (``project_settings``) with ``databases`` (Python source of
    ``DATABASES``) and a client ``billing`` (breaker on) calling a port that refuses, ``aio_request``
    (source of more AIO_REQUEST keys) beside it: the environment to run its commands with
    (``python -m django ...``)."""
    (tmp_path / "project_settings.py").write_text(
        f"""
SECRET_KEY = "x"
USE_TZ = True
ROOT_URLCONF = "project_settings"
urlpatterns = []
INSTALLED_APPS = ["django_aio_request"{installed}]
DATABASES = {databases}
AIO_REQUEST = {{{aio_request}"CLIENTS": {{"billing": {{"ENDPOINT": "http://127.0.0.1:9/", "CIRCUIT_BREAKER": {{}}}}}}}}
"""
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}", "DJANGO_SETTINGS_MODULE": "project_settings"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


def project_with_a_real_database(
    tmp_path: Path, *, installed: str = "", name: str = "real.sqlite3"
) -> tuple[Path, dict[str, str]]:
    """A project in ``tmp_path`` whose one database is a SQLite file (the "real" one, ``name``), migrated,
    with a client ``billing`` (breaker on) calling a port that refuses: its database file and the
    environment to run its commands with (``python -m django ...``)."""
    real = tmp_path / name
    # Its commands run in tmp_path.
    sqlite = f'{{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": {name!r}}}}}'
    env = write_project(tmp_path, sqlite, installed=installed)
    subprocess.run([sys.executable, "-m", "django", "migrate", "-v0"], cwd=tmp_path, env=env, check=True, timeout=120)
    return real, env


_SIMPLE_TEST = """
import time
from django.test import SimpleTestCase
from django_aio_request import clients, get
from django_aio_request.testing import force_breaker

class Forced(SimpleTestCase):
    def test_forced_open(self):
        with force_breaker("billing", "open"):
            with clients["billing"].request(get("x")) as response:
                self.assertEqual(response.status, 502)
        time.sleep(1.5)  # a publisher round or two while the test runs
"""


@pytest.mark.parametrize("name", ["real.sqlite3", "test_real.sqlite3"])
def test_manage_py_test_never_writes_the_tests_circuits_into_the_real_database(tmp_path: Path, name: str) -> None:
    """`manage.py test` with only SimpleTestCase tests creates no test database: the settings still
    name the real one, which the publisher's thread (its connection is not the one SimpleTestCase
    closes to tests) wrote the test process's report and force_breaker()'s transitions into (6 of 6
    runs in a review; pytest-django did it too, before a test asked for the database). So it did into
    a real database whose name has the test prefix (``test_real``: a review)."""
    real, env = project_with_a_real_database(tmp_path, name=name)
    (tmp_path / "test_simple.py").write_text(_SIMPLE_TEST)
    manage = [sys.executable, "-m", "django"]
    done = subprocess.run(
        [*manage, "test", "-v0", "test_simple"],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    import sqlite3

    with contextlib.closing(sqlite3.connect(real)) as database:
        reports = database.execute("select count(*) from django_aio_request_breakerreport").fetchone()[0]
        transitions = database.execute("select count(*) from django_aio_request_breakertransition").fetchone()[0]
    assert (reports, transitions) == (0, 0)
    assert "circuit breaker state is not published while tests run" in done.stderr


_DB_TEST = """
from django.test import TestCase
from django_aio_request import clients, get

class WithDatabase(TestCase):
    def test_billing(self):
        with clients["billing"].request(get("x")) as response:
            self.assertEqual(response.status, 489)  # port 9 refuses
"""


def test_a_test_run_on_sqlite_in_memory_ends_without_a_warning_or_a_write_to_the_real_database(tmp_path: Path) -> None:
    """The thread left the test database in memory alone, but then never noted where its rounds
    would write: at exit the last round, not knowing the tests were over, went to the real database
    the settings name again and warned that it is no test database (a review: 5 of 5 runs)."""
    real, env = project_with_a_real_database(tmp_path)
    (tmp_path / "test_with_database.py").write_text(_DB_TEST)
    done = subprocess.run(
        [sys.executable, "-m", "django", "test", "-v0", "test_with_database"],
        check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "circuit breaker state" not in done.stderr, done.stderr
    import sqlite3

    with contextlib.closing(sqlite3.connect(real)) as database:
        assert database.execute("select count(*) from django_aio_request_breakerreport").fetchone()[0] == 0


_WARMED_UP = """
import os
from django.apps import AppConfig

class WarmUp(AppConfig):  # a --preload server's warm-up (README), here run by the test process
    name = "warm_up"

    def ready(self):
        from django_aio_request import clients
        clients["billing"]
"""
_CALLS_BILLING = """
from django.test import SimpleTestCase
from django_aio_request import clients, get

class Billing(SimpleTestCase):
    def test_billing_is_called(self):
        with clients["billing"].request(get("x")) as response:
            assert response.status == 489, (response.status, dict(response.headers))  # port 9 refuses
"""


@pytest.mark.parametrize("runner", ["manage.py test", "pytest"])
def test_a_client_built_while_django_starts_reads_and_writes_nothing_of_the_real_database_in_tests(
    tmp_path: Path, runner: str
) -> None:
    """A client warmed up in an AppConfig.ready() ran its first round during django.setup(), before
    the test environment was set up: it applied the real database's force_open to the test's call
    (502 instead of the 489 of the refused port) and pruned that database's expired reports (5 of 5
    runs of manage.py test, 2 of 2 of pytest-django, in a review)."""
    (tmp_path / "warm_up.py").write_text(_WARMED_UP)
    (tmp_path / "test_billing.py").write_text(_CALLS_BILLING)
    real, env = project_with_a_real_database(tmp_path, installed=', "warm_up.WarmUp"')
    import sqlite3

    with contextlib.closing(sqlite3.connect(real)) as database, database:
        database.execute(
            "insert into django_aio_request_breakeroverride (client, endpoint, mode, changed_by, changed_at)"
            " values ('billing', 'http://127.0.0.1:9/', 'force_open', 'ops', '2026-01-01 00:00:00')"
        )
        database.execute(
            "insert into django_aio_request_breakerreport (client, endpoint, host, pid, state, failures, successes,"
            " failure_ratio, rejected, window_seconds, reported_at, expires_at, store) values ('billing',"
            " 'http://127.0.0.1:9/', 'production-1', 4242, 'closed', 0, 0, 0, 0, 60, '2026-01-01 00:00:00',"
            " '2026-01-01 00:00:05', 'local')"
        )
    command = ["-m", "django", "test", "-v0", "test_billing"]
    if runner == "pytest":
        command = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "test_billing.py"]
    done = subprocess.run(
        [sys.executable, *command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    with contextlib.closing(sqlite3.connect(real)) as database:
        reports = database.execute("select host from django_aio_request_breakerreport").fetchall()
        transitions = database.execute("select count(*) from django_aio_request_breakertransition").fetchone()[0]
    assert (reports, transitions) == ([("production-1",)], 0)  # the expired report still there, nothing added


_SERVER_NAMED_TEST = """
import sys
import django
django.setup()
from django.core.management import call_command  # a WSGI start imports django.core.management too
from django_aio_request import clients, get
from django_aio_request.breaker_publisher import publisher
from django_aio_request.models import BreakerReport
with clients["billing"].request(get("x")):  # port 9 refuses: the circuit has a call to report
    pass
print(sys.argv[1:], publisher.run_once(), list(BreakerReport.objects.values_list("client", flat=True)))
"""


def test_a_program_given_test_as_its_argument_is_no_test_run(tmp_path: Path) -> None:
    """``python serve.py test`` (an environment's name): taken for Django's test command, the
    server published nothing and ignored the operators' overrides."""
    _, env = project_with_a_real_database(tmp_path)
    (tmp_path / "serve.py").write_text(_SERVER_NAMED_TEST)
    done = subprocess.run(
        [sys.executable, "serve.py", "test"],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.strip() == "['test'] True ['billing']", done.stdout + done.stderr


@pytest.mark.parametrize(
    ("test_name", "name", "is_test_database"),
    [
        ("ci_tests", "ci_tests", True),
        ("ci_tests", "ci_tests_2", True),  # manage.py test --parallel's clone of an explicit TEST NAME
        ("ci.tests", "ci.tests_12", True),
        ("/tmp/tests.sqlite3", "/tmp/tests_3.sqlite3", True),  # SQLite's clone of a file
        ("ci_tests", "ci_tests_real", False),
        ("ci_tests", "ci_tests_", False),
        ("ci_tests", "real", False),
        (None, "test_real", True),  # the test prefix, as Django names a test database
        (None, "real", False),
    ],
)
def test_only_databases_the_test_setup_made_are_test_databases(
    monkeypatch: pytest.MonkeyPatch, test_name: str | None, name: str, is_test_database: bool
) -> None:
    """With an explicit TEST NAME, manage.py test --parallel's workers publish into its clones
    (``<TEST NAME>_1``...): they were taken for real databases, and the workers published nothing."""
    monkeypatch.setitem(breaker_publisher._REAL_NAMES, "default", "the_real_one")
    settings_dict = connections["default"].settings_dict
    monkeypatch.setitem(settings_dict, "NAME", name)
    monkeypatch.setitem(settings_dict, "TEST", {**settings_dict.get("TEST", {}), "NAME": test_name})
    assert breaker_publisher._is_test_database("default") is is_test_database


@pytest.mark.parametrize(("name", "is_test_database"), [("test_shop", False), ("test_test_shop", True)])
def test_the_database_the_settings_named_before_the_tests_is_never_a_test_database(
    monkeypatch: pytest.MonkeyPatch, name: str, is_test_database: bool
) -> None:
    """A real database named with the test prefix (``test_shop``) was taken for a test database, and a
    test run that made none (SimpleTestCase only) published its circuits into it (a review). Its test
    database (``test_test_shop``) is one."""
    monkeypatch.setitem(breaker_publisher._REAL_NAMES, "default", "test_shop")
    settings_dict = connections["default"].settings_dict
    monkeypatch.setitem(settings_dict, "NAME", name)
    monkeypatch.setitem(settings_dict, "TEST", {**settings_dict.get("TEST", {}), "NAME": None})
    assert breaker_publisher._is_test_database("default") is is_test_database


@pytest.mark.django_db
def test_rounds_publish_with_use_tz_false(server: LoopbackServer, publisher: Publisher) -> None:
    """Django's default before 5.0: datetimes are naive, in TIME_ZONE (here not UTC). SQLite refused
    every round ("does not support timezone-aware datetimes"): admin showed nothing."""
    server.route("/down", lambda h: h.reply(500))
    with override_settings(USE_TZ=False, TIME_ZONE="Asia/Kolkata", AIO_REQUEST=setting(server.url)):
        assert call("billing", 3) == [500, 500, 502]
        assert publisher.run_once()
        now = timezone.now()
        assert now.tzinfo is None
        report = BreakerReport.objects.get()
        assert report.state == "open"
        # In local time, as admin compares them with timezone.now() ("changed 2 s ago", "last seen").
        for moment in (report.changed_at, report.reported_at, BreakerTransition.objects.get().at):
            assert moment is not None
            assert moment.tzinfo is None
            assert abs((now - moment).total_seconds()) < 5, (now, moment)
        # Alive for the view (its expires_at is on the database's clock, as the view's CURRENT_TIMESTAMP).
        row = BreakerStatus.objects.get()
        assert (row.client, row.state, row.processes) == ("billing", "open", 1)
        publisher.prune()  # neither the live report nor the fresh transition goes
        assert BreakerReport.objects.count() == BreakerTransition.objects.count() == 1
        assert publisher.run_once()  # a second round updates the row
        assert BreakerReport.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_with_use_tz_false_no_other_connection_sees_a_report_between_its_two_statements(
    server: LoopbackServer, publisher: Publisher
) -> None:
    """A round writes its reports, then moves their expires_at onto the database's clock. With
    ``USE_TZ = False`` and a TIME_ZONE behind UTC, the first statement's expires_at (local time) is
    hours past on SQLite's clock: between the two, other processes' admin hid live workers (2 list
    loads of 717 showed 2 of 3) and their prune could delete them. Both statements now commit as one."""
    server.route("/down", lambda h: h.reply(500))
    seen: list[tuple[str, bool]] = []
    connection = connections["default"]

    def watch(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if "breakerreport" in sql.lower() and sql.lstrip().upper().startswith(("INSERT", "UPDATE")):
            seen.append((sql.lstrip().split()[0].upper(), connection.in_atomic_block))
        return execute(sql, params, many, context)

    with override_settings(USE_TZ=False, TIME_ZONE="America/New_York", AIO_REQUEST=setting(server.url)):
        assert call("billing", 3) == [500, 500, 502]
        with connection.execute_wrapper(watch):
            assert publisher.run_once()
        assert BreakerStatus.objects.get().processes == 1
    assert [kind for kind, _ in seen] == ["INSERT", "UPDATE"]
    assert all(atomic for _, atomic in seen), seen


def assert_clock_of(zone: str, shown: list[str], slack: float = 40.0) -> None:
    """Each ``HH:MM:SS`` of ``shown`` is the wall clock of ``zone`` now, give or take ``slack`` seconds."""
    assert shown
    now = datetime.datetime.now(zoneinfo.ZoneInfo(zone))
    for text in shown:
        hours, minutes, seconds = map(int, text.split(":"))
        off = (hours * 3600 + minutes * 60 + seconds - (now.hour * 3600 + now.minute * 60 + now.second)) % 86400
        assert min(off, 86400 - off) <= slack, (text, f"{now:%H:%M:%S} in {zone}")


@pytest.mark.django_db
def test_admin_and_the_command_show_local_times_with_use_tz_false(
    server: LoopbackServer, publisher: Publisher, admin_client: BrowserClient
) -> None:
    """``USE_TZ = False``, ``TIME_ZONE`` far from UTC, a live process's row: the list answered 500, the
    row's page left its table of processes blank and ``manage.py circuit_breakers`` ended in a
    traceback (``timezone.localtime()`` refuses the naive times Django reads then)."""
    server.route("/down", lambda h: h.reply(500))
    with override_settings(USE_TZ=False, TIME_ZONE="Asia/Tokyo", AIO_REQUEST=setting(server.url)):
        assert call("billing", 3) == [500, 500, 502]  # open, the break ends in 30 s
        assert publisher.run_once()
        billing = breaker_id("billing", server.url)
        page = admin_client.get(reverse("admin:django_aio_request_breakerstatus_changelist"))
        assert page.status_code == 200
        html = page.content.decode()
        assert "1 process: 1 open" in html
        probe = re.search(r"probe in (29|30) s \(at (\d\d:\d\d:\d\d)\)", html)
        assert probe, html
        # changed, last seen: "2 s ago", the time in the tooltip.
        seen = re.findall(r'<span title="(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d)">(\d+) s ago</span>', html)
        assert len(seen) == 2
        assert all(int(ago) < 10 for _, _, ago in seen)
        assert_clock_of("Asia/Tokyo", [probe[2], *(clock for _, clock, _ in seen)])

        page = admin_client.get(reverse("admin:django_aio_request_breakerstatus_change", args=[quote(billing)]))
        assert page.status_code == 200
        html = page.content.decode()
        processes = html.split('<table class="aio-processes">', 1)[1].split("</table>", 1)[0]
        assert f"<td>{os.getpid()}</td>" in processes
        changed_seen = re.findall(r"<td>(\d\d:\d\d:\d\d) \((\d+) s ago\)</td>", processes)
        assert len(changed_seen) == 2
        assert all(int(ago) < 10 for _, ago in changed_seen)
        transitions = html.split('<table class="aio-transitions">', 1)[1].split("</table>", 1)[0]
        at = re.findall(r"<td>\d{4}-\d\d-\d\d (\d\d:\d\d:\d\d)</td>", transitions)
        assert len(at) == 1
        assert_clock_of("Asia/Tokyo", [clock for clock, _ in changed_seen] + at)

        admin_client.post(reverse("admin:django_aio_request_breakerstatus_changelist"),
                          {"action": "force_open", "_selected_action": [billing]})  # fmt: skip
        page = admin_client.get(reverse("admin:django_aio_request_breakerstatus_change", args=[quote(billing)]))
        override = re.search(r"forced open \(isolated\), by admin at \d{4}-\d\d-\d\d (\d\d:\d\d:\d\d)",
                             page.content.decode())  # fmt: skip
        assert override
        assert_clock_of("Asia/Tokyo", [override[1]])
        BreakerOverride.objects.all().delete()

        out = io.StringIO()
        call_command("circuit_breakers", stdout=out)
        line = out.getvalue().splitlines()[1]
        assert line.startswith("open: probe in "), line
        shown = re.findall(r"(\d\d:\d\d:\d\d)", line)
        assert len(shown) == 3  # the probe, changed, last seen
        assert re.search(r"\d\d:\d\d:\d\d \(\d s ago\)  \d\d:\d\d:\d\d \(\d s ago\)$", line), line
        assert_clock_of("Asia/Tokyo", shown)


@pytest.mark.django_db
def test_overrides_are_applied_and_lifted(server: LoopbackServer, publisher: Publisher) -> None:
    server.route("/down", lambda h: h.reply(500))
    with override_settings(AIO_REQUEST=setting(server.url)):
        assert call("billing", 3) == [500, 500, 502]
        now = datetime.datetime.now(tz=datetime.UTC)
        BreakerOverride.objects.create(client="billing", endpoint=server.url, mode="force_closed", changed_at=now)
        BreakerOverride.objects.create(client="elsewhere", endpoint=server.url, mode="force_open", changed_at=now)
        assert publisher.run_once()

        assert breaker().state[server.url] is CircuitState.FORCED_CLOSED
        assert call("billing", 2) == [500, 500]  # every call goes through, whatever the counts say
        report = BreakerReport.objects.get()
        assert report.state == "forced_closed"
        # The transition the override caused is published in the same round.
        assert list(BreakerTransition.objects.order_by("at", "id").values_list("from_state", "to_state")) == [
            ("closed", "open"),
            ("open", "forced_closed"),
        ]
        row = BreakerStatus.objects.get()
        assert (row.state, row.override) == ("forced_closed", "force_closed")

        BreakerOverride.objects.filter(client="billing").update(mode="force_open")
        assert publisher.run_once()
        assert breaker().snapshot()[0].override is Override.FORCE_OPEN
        assert call("billing", 1) == [502]

        BreakerOverride.objects.filter(client="billing").delete()
        assert publisher.run_once()
        assert breaker().snapshot()[0].override is None
        assert BreakerReport.objects.get().state == "open"  # the automatic state resumes where it was


@pytest.mark.django_db
def test_a_process_listed_while_its_override_reads_failed_writes_the_override_it_then_reads(
    server: LoopbackServer, publisher: Publisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its reports went while the overrides' table could not be read (a lock, a migration): admin
    listed it, and an override set then is an operator's change it saw come. Its first successful
    read took it as the process's first, with no transition (a third review)."""
    server.route("/down", lambda h: h.reply(200))
    using = BreakerOverride.objects.using
    failures = [DatabaseError("the overrides' table is locked")]

    def failing_once(alias: str | None) -> Any:
        if failures:
            raise failures.pop()
        return using(alias)

    with override_settings(AIO_REQUEST=setting(server.url)):
        assert call("billing", 1) == [200]
        monkeypatch.setattr(BreakerOverride.objects, "using", failing_once)
        assert not publisher.run_once()  # the read failed; the reports went
        assert BreakerReport.objects.filter(client="billing").exists()
        now = timezone.now()
        BreakerOverride.objects.create(client="billing", endpoint=server.url, mode="force_open", changed_at=now)
        assert publisher.run_once()
        assert call("billing", 1) == [502]
        transitions = BreakerTransition.objects.values_list("from_state", "to_state")
        assert list(transitions) == [("closed", "forced_open")]


@pytest.mark.django_db
def test_an_override_set_in_the_process_is_not_lifted_by_a_round(server: LoopbackServer, publisher: Publisher) -> None:
    """Only overrides the publisher set from the database go when their row goes: force_breaker()
    in a test (or set_override() in code) holds until it is undone."""
    server.route("/down", lambda h: h.reply(200))
    with override_settings(AIO_REQUEST=setting(server.url)):
        assert call("billing", 1) == [200]
        with force_breaker("billing", "open"):
            assert publisher.run_once()
            assert call("billing", 1) == [502]  # a round found no row for it, and left it
        assert call("billing", 1) == [200]


@pytest.mark.django_db
def test_force_breaker_holds_against_admin_s_override_and_admin_s_holds_again_after_it(
    server: LoopbackServer, publisher: Publisher
) -> None:
    """A round put admin's forced open over a test's force_breaker("billing", "closed"), and lifted
    admin's forced open that a force_breaker("billing", "open") had set again once its row went:
    calls were refused inside a block forced closed, and sent inside one forced open (a review)."""
    server.route("/down", lambda h: h.reply(200))
    now = datetime.datetime.now(tz=datetime.UTC)
    with override_settings(AIO_REQUEST=setting(server.url)):
        assert call("billing", 1) == [200]
        BreakerOverride.objects.create(client="billing", endpoint=server.url, mode="force_open", changed_at=now)
        assert publisher.run_once()
        assert call("billing", 1) == [502]
        with force_breaker("billing", "closed"):
            assert publisher.run_once()
            assert call("billing", 2) == [200, 200]  # the test's, not admin's
        assert call("billing", 1) == [502]  # admin's again, as before the block
        with force_breaker("billing", "open"):
            BreakerOverride.objects.filter(client="billing").delete()  # admin's "automatic"
            assert publisher.run_once()
            assert call("billing", 2) == [502, 502]  # still the test's
        assert publisher.run_once()  # the first round after the block does what the database says
        assert call("billing", 1) == [200]
        assert breaker().snapshot()[0].override is None


@pytest.mark.django_db
def test_an_override_of_the_process_comes_back_when_admin_s_is_lifted(
    server: LoopbackServer, publisher: Publisher
) -> None:
    server.route("/down", lambda h: h.reply(200))
    with override_settings(AIO_REQUEST=setting(server.url)):
        assert call("billing", 1) == [200]
        breaker().set_override(server.url, Override.FORCE_CLOSED)  # the process's own, in code
        now = datetime.datetime.now(tz=datetime.UTC)
        BreakerOverride.objects.create(client="billing", endpoint=server.url, mode="force_open", changed_at=now)
        assert publisher.run_once()
        assert call("billing", 1) == [502]  # admin's wins while it is set
        BreakerOverride.objects.filter(client="billing").update(mode="force_closed")
        assert publisher.run_once()
        BreakerOverride.objects.filter(client="billing").update(mode="force_open")
        assert publisher.run_once()
        BreakerOverride.objects.filter(client="billing").delete()
        assert publisher.run_once()
        assert breaker().snapshot()[0].override is Override.FORCE_CLOSED  # was lifted to automatic


@pytest.mark.django_db
def test_a_fake_client_is_neither_published_nor_overridden(server: LoopbackServer, publisher: Publisher) -> None:
    server.route("/down", lambda h: h.reply(200))
    with override_settings(AIO_REQUEST=setting(server.url)):
        call("plain", 1)  # a real client built: the publisher's thread is running
        now = datetime.datetime.now(tz=datetime.UTC)
        BreakerOverride.objects.create(client="billing", endpoint=server.url, mode="force_closed", changed_at=now)
        with fake_client("billing") as billing, force_breaker("billing", "open"):
            billing.route("down", reply(200))
            assert publisher.run_once()
            assert call("billing", 1) == [502]  # the fake's forced state, not admin's row for the real client
            assert not BreakerReport.objects.exists()
        assert billing.calls == []


@pytest.mark.django_db
def test_the_real_client_s_report_goes_while_a_fake_holds_its_name_and_comes_back_after(
    server: LoopbackServer, publisher: Publisher
) -> None:
    """docs/testing.md: while a fake holds a name, the publisher reports neither the fake nor the real
    client of that name (a review saw its row go and come back)."""
    server.route("/down", lambda h: h.reply(200))
    with override_settings(AIO_REQUEST=setting(server.url)):
        assert call("billing", 1) == [200]  # the real client, built and called
        assert publisher.run_once()
        assert list(BreakerReport.objects.values_list("client", flat=True)) == ["billing"]
        with fake_client("billing") as billing:
            billing.route("down", reply(200))
            assert publisher.run_once()
            assert not BreakerReport.objects.filter(client="billing").exists()
        assert publisher.run_once()
        assert list(BreakerReport.objects.values_list("client", flat=True)) == ["billing"]


@pytest.mark.django_db
def test_a_database_outage_is_logged_once_and_nothing_is_lost(
    server: LoopbackServer, publisher: Publisher, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server.route("/down", lambda h: h.reply(500))
    real_round = Publisher._round

    def down(*args: object, **kwargs: object) -> None:
        raise OperationalError("connection refused")

    caplog.set_level(logging.WARNING, logger="django_aio_request.breaker_publisher")
    with override_settings(AIO_REQUEST=setting(server.url)):
        monkeypatch.setattr(Publisher, "_round", down)
        assert call("billing", 3) == [500, 500, 502]  # calls flow while the database is down
        assert [publisher.run_once() for _ in range(3)] == [False, False, False]
        assert len(caplog.records) == 1
        assert "cannot be published" in caplog.records[0].getMessage()
        assert "OperationalError" in caplog.records[0].getMessage()

        monkeypatch.setattr(Publisher, "_round", real_round)
        assert publisher.run_once()
        assert publisher.run_once()
        assert len(caplog.records) == 2
        assert "again" in caplog.records[1].getMessage()
        # The transition queued during the outage was kept and published.
        assert list(BreakerTransition.objects.values_list("to_state", flat=True)) == ["open"]


UNMIGRATED = """
import time, django
django.setup()
from django_aio_request import clients
clients["billing"]  # its build asks for a round at once
time.sleep(1)
"""


@pytest.mark.parametrize("in_memory", [False, True], ids=["file", "memory"])
def test_a_database_without_the_app_s_tables_is_told_to_be_migrated(
    server: LoopbackServer, tmp_path: Path, in_memory: bool
) -> None:
    """The warning named the missing table, and not what to do (a review). Not for SQLite in memory,
    where each connection has a database of its own, empty, which migrating does not change."""
    clients_setting = {"billing": {"ENDPOINT": server.url, "CIRCUIT_BREAKER": BREAKER}}
    name = ":memory:" if in_memory else str(tmp_path / "never_migrated.sqlite3")
    database = {"ENGINE": "django.db.backends.sqlite3", "NAME": name}
    env = settings_module(tmp_path, "unmigrated_settings", database, {"CLIENTS": clients_setting})
    done = subprocess.run(
        [sys.executable, "-c", UNMIGRATED], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "no such table" in done.stderr
    told = "has `manage.py migrate django_aio_request` run on that database?" in done.stderr
    assert told is not in_memory


LOOKUP_AT_IMPORT = """
from django_aio_request import clients

BILLING = clients["billing"]
urlpatterns = []
"""


@pytest.mark.parametrize("command", ["migrate", "check"])
def test_a_schema_command_on_a_new_database_does_not_warn_of_the_tables_it_is_making(
    server: LoopbackServer, tmp_path: Path, command: str
) -> None:
    """A client looked up at import time, in a module ROOT_URLCONF imports (which the system checks
    before ``migrate`` import): ``migrate`` on a new database warned that the app's tables were
    missing while it was making them (a review; ``check`` the same). Said at DEBUG only now; the next
    process publishes without a word."""
    (tmp_path / "lookup_urls.py").write_text(LOOKUP_AT_IMPORT)
    clients_setting = {"billing": {"ENDPOINT": server.url, "CIRCUIT_BREAKER": BREAKER}}
    database = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "new.sqlite3")}
    urls = "ROOT_URLCONF = 'lookup_urls'\n"
    env = settings_module(tmp_path, "lookup_settings", database, {"CLIENTS": clients_setting}, extra=urls)
    done = manage(command, settings="lookup_settings", path=tmp_path, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "cannot be published" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    if command == "migrate":  # the tables are there: a process after it publishes without a word
        after = subprocess.run(
            [sys.executable, "-c", UNMIGRATED],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (after.returncode, after.stderr) == (0, "")


DATA_MIGRATION = """
import os

from django.db import migrations


def call(apps, schema_editor):
    from django_aio_request import clients, get

    with clients["billing"].request(get("x")) as response:
        with open(os.environ["STATUS_FILE"], "w") as status:
            status.write(str(response.status))


class Migration(migrations.Migration):
    operations = [migrations.RunPython(call, migrations.RunPython.noop)]
"""
FORCE_OPEN = """
import sys
import django
from django.utils import timezone
django.setup()
from django_aio_request.models import BreakerOverride
BreakerOverride.objects.create(client="billing", endpoint=sys.argv[1], mode="force_open", changed_at=timezone.now())
"""


def data_app(tmp_path: Path, migration: str, url: str, *, interval: float | None = None) -> dict[str, str]:
    """An app ``dataapp`` in ``tmp_path`` whose one migration is ``migration``, beside the client
    ``billing`` (a breaker) calling ``url`` on a SQLite database of its own, this app's tables made
    (rounds every ``interval`` seconds, if given): the environment of a subprocess using them."""
    app = tmp_path / "dataapp"
    (app / "migrations").mkdir(parents=True)
    (app / "__init__.py").write_text("")
    (app / "migrations" / "__init__.py").write_text("")
    (app / "migrations" / "0001_initial.py").write_text(migration)
    aio_request: dict[str, object] = {"CLIENTS": {"billing": {"ENDPOINT": url, "CIRCUIT_BREAKER": BREAKER}}}
    if interval is not None:
        aio_request["CIRCUIT_BREAKER_PUBLISH_INTERVAL"] = interval
    database = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "data.sqlite3")}
    env = settings_module(tmp_path, "data_settings", database, aio_request, extra="INSTALLED_APPS += ['dataapp']\n")
    made = manage("migrate", "django_aio_request", settings="data_settings", path=tmp_path, env=env, timeout=120)
    assert made.returncode == 0, made.stderr
    return env


def test_a_data_migration_s_calls_obey_an_operator_s_forced_open_circuit(
    server: LoopbackServer, tmp_path: Path
) -> None:
    """A migration that calls a service whose circuit an operator forced open in admin: the call gets
    the open circuit's 502, as in any other process. Skipping schema commands' publishing altogether
    let it through (a review of that first fix: 200, and the service received the call)."""
    server.route("/x", replies(200))
    env = data_app(tmp_path, DATA_MIGRATION, server.url)
    env["STATUS_FILE"] = str(tmp_path / "status")
    python(env, "-c", FORCE_OPEN, server.url)
    migrated = manage("migrate", "dataapp", settings="data_settings", path=tmp_path, env=env, timeout=120)
    assert migrated.returncode == 0, migrated.stderr
    assert (tmp_path / "status").read_text() == "502"
    assert server.received("/x") == []


CALL_THEN_WAIT_MIGRATION = """
import os
import time

from django.db import migrations


def call(apps, schema_editor):
    from django_aio_request import clients, get

    with clients["billing"].request(get("x")) as response:
        assert response.status == 200
    time.sleep(1.0)  # the publisher's rounds, every 0.1 s, come meanwhile
    from django_aio_request.models import BreakerReport

    with open(os.environ["WRITTEN_FILE"], "w") as written:
        written.write(str(BreakerReport.objects.filter(client="billing").count()))


class Migration(migrations.Migration):
    operations = [migrations.RunPython(call, migrations.RunPython.noop)]
"""
MIGRATE_FROM_A_SCRIPT = """
import django
django.setup()
from django.core.management import call_command
call_command("migrate", "dataapp", verbosity=0)
"""


POST_MIGRATE_RECEIVER_APP = """
import os
import time

from django.apps import AppConfig
from django.db.models.signals import post_migrate


done = []


def call(sender, **kwargs):
    if done:  # sent once for each app with models: the first
        return
    done.append(sender)
    from django_aio_request import clients, get
    from django_aio_request.models import BreakerReport

    with clients["billing"].request(get("x")) as response:
        assert response.status == 200
    time.sleep(1.0)  # the publisher's rounds, every 0.1 s, come meanwhile
    with open(os.environ["WRITTEN_FILE"], "w") as written:
        written.write(str(BreakerReport.objects.filter(client="billing").count()))


class DataAppConfig(AppConfig):
    name = "dataapp"

    def ready(self):
        post_migrate.connect(call)
"""


@pytest.mark.parametrize(
    "started_by",
    ["a manage script of another name", "call_command() in a script", "a post_migrate receiver, call_command()"],
)
def test_a_migrate_the_command_line_does_not_tell_writes_nothing_while_it_runs(
    server: LoopbackServer, tmp_path: Path, started_by: str
) -> None:
    """A data migration that calls ``billing``, run by ``migrate`` under a manage script named
    otherwise (a console entry point) or by ``call_command()`` from a deploy script: the command line
    says nothing of a schema command, and the process's rounds wrote reports while migrate ran, on
    SQLite beside the lock migrate takes (a review). Migrate's handle() on the stack tells it: nothing
    is written meanwhile (the migration, or a post_migrate receiver of an app after the first, counts
    the reports after the rounds had time to write); the process's breakers are published once
    migrate is over, as any process's."""
    server.route("/x", replies(200))
    if started_by.startswith("a post_migrate receiver"):
        # Django sends post_migrate once for each app: one of an app after this one in INSTALLED_APPS
        # calls (a review: the first app's signal had ended the schema command's mark).
        empty = "from django.db import migrations\n\n\nclass Migration(migrations.Migration):\n    operations = []\n"
        env = data_app(tmp_path, empty, server.url, interval=0.1)
        (tmp_path / "dataapp" / "apps.py").write_text(POST_MIGRATE_RECEIVER_APP)
    else:
        env = data_app(tmp_path, CALL_THEN_WAIT_MIGRATION, server.url, interval=0.1)
    env["WRITTEN_FILE"] = str(tmp_path / "written")
    if "call_command()" in started_by:
        python(env, "-c", MIGRATE_FROM_A_SCRIPT)
    else:
        renamed = tmp_path / "deploy_tool.py"
        renamed.write_text((ROOT / "manage.py").read_text())
        python(env, str(renamed), "migrate", "dataapp")
    assert (tmp_path / "written").read_text() == "0"  # the reports written while the migration ran


DECORATED_SERVER_AFTER_MIGRATE = """
import time
import django
django.setup()
from django.core.management import call_command
from django.core.management.base import no_translations
from django_aio_request import clients, get
from django_aio_request.models import BreakerReport

call_command("migrate", verbosity=0)  # nothing to apply: the tables are there


@no_translations  # as a project's long-running command's handle() may be
def serve():
    with clients["billing"].request(get("x")) as response:
        assert response.status == 200
    time.sleep(1.0)  # rounds every 0.1 s
    print(BreakerReport.objects.filter(client="billing").count())


serve()
"""
CHECK_IN_A_THREAD = """
import threading
import time
import django
django.setup()
from django.core import checks
from django.core.management import call_command
from django_aio_request import clients, get
from django_aio_request.models import BreakerTransition

calls_done = threading.Event()


@checks.register()
def slow(app_configs, **kwargs):  # keeps call_command("check") running while the breaker opens
    calls_done.wait(10)
    time.sleep(0.5)  # rounds every 0.1 s meanwhile
    return []


thread = threading.Thread(target=call_command, args=("check",))
thread.start()
time.sleep(0.3)
for _ in range(3):
    with clients["billing"].request(get("down")) as response:
        pass
calls_done.set()
thread.join()
time.sleep(1.0)  # rounds after the command
print(list(BreakerTransition.objects.filter(client="billing").values_list("from_state", "to_state")))
"""


def test_a_decorated_command_in_a_process_that_ran_migrate_publishes(server: LoopbackServer, tmp_path: Path) -> None:
    """Migrate's handle() is Django's no_translations wrapper, whose code every command decorated with
    it shares: a long-running command so decorated, in a process that had imported migrate, was taken
    for a migrate running, and never published (a review)."""
    server.route("/x", replies(200))
    env = billing_on_sqlite(tmp_path, "decorated", server.url, 0.1)
    made = manage("migrate", settings="decorated_settings", path=tmp_path, env=env, timeout=120)
    assert made.returncode == 0, made.stderr
    assert python(env, "-c", DECORATED_SERVER_AFTER_MIGRATE).strip() == "1"


def test_transitions_made_while_a_thread_runs_check_are_published_after_it(
    server: LoopbackServer, tmp_path: Path
) -> None:
    """A server that runs call_command("check") now and then: its other threads' breakers opened
    meanwhile, and the rounds threw their transitions away (a review: admin showed "open" with no
    history). They wait for a round after the command."""
    server.route("/down", lambda h: h.reply(500))
    env = billing_on_sqlite(tmp_path, "checking", server.url, 0.1)
    made = manage("migrate", settings="checking_settings", path=tmp_path, env=env, timeout=120)
    assert made.returncode == 0, made.stderr
    assert "('closed', 'open')" in python(env, "-c", CHECK_IN_A_THREAD)


FAILING_MIGRATION = """
from django.db import migrations


def fail(apps, schema_editor):
    raise RuntimeError("the data migration failed")


class Migration(migrations.Migration):
    operations = [migrations.RunPython(fail, migrations.RunPython.noop)]
"""
CALL_AFTER_A_FAILED_MIGRATE = """
import time
import django
django.setup()
from django.core.management import call_command
from django_aio_request import clients, get
from django_aio_request.models import BreakerReport
try:
    call_command("migrate", "dataapp", verbosity=0)
except RuntimeError:
    pass
with clients["billing"].request(get("x")) as response:
    assert response.status == 200
time.sleep(1.0)  # rounds every 0.1 s
print(BreakerReport.objects.filter(client="billing").count())
"""


def test_a_process_whose_migrate_failed_publishes_after_it(server: LoopbackServer, tmp_path: Path) -> None:
    """A deploy script that catches a failed migrate and goes on calling: its breakers are published
    once the command is over. Told by Django's pre_migrate and post_migrate (the second not sent when
    a migration fails), it published nothing for good, nor did the workers a --preload master forked
    after it (a review)."""
    server.route("/x", replies(200))
    env = data_app(tmp_path, FAILING_MIGRATION, server.url, interval=0.1)
    assert python(env, "-c", CALL_AFTER_A_FAILED_MIGRATE).strip() == "1"


def test_after_failed_rounds_a_full_queue_drops_the_oldest_transitions(
    publisher: Publisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed round puts its transitions back in front; past QUEUE_LENGTH the oldest are the ones
    dropped, never the newest (which say what the breakers do now)."""
    monkeypatch.setattr(breaker_publisher, "QUEUE_LENGTH", 5)
    taken: list[list[int]] = []

    def transition(n: int) -> CircuitTransition[str]:
        return CircuitTransition("http://b/", CircuitState.CLOSED, CircuitState.OPEN, n, 0, time.time())

    def down(self: Publisher, breakers: object, batch: list[tuple[str, CircuitTransition[str]]]) -> None:
        taken.append([t.failures for _, t in batch])
        if len(taken) == 1:  # transitions keep coming while the round waits for the database
            for n in range(4, 8):
                publisher._on_transition("billing", transition(n))
        raise OperationalError("connection refused")

    monkeypatch.setattr(Publisher, "_round", down)
    for n in range(4):
        publisher._on_transition("billing", transition(n))
    assert publisher.run_once() is False  # 0-3 taken; 4-7 arrive; 0-3 put back in front
    assert [t.failures for _, t in publisher._queue] == [3, 4, 5, 6, 7]  # 0, 1, 2: the oldest dropped
    assert publisher.run_once() is False
    assert taken[-1] == [3, 4, 5, 6, 7]
    publisher._on_transition("billing", transition(8))
    assert [t.failures for _, t in publisher._queue] == [4, 5, 6, 7, 8]


def counting_publisher(monkeypatch: pytest.MonkeyPatch) -> tuple[Publisher, list[float]]:
    """A publisher (installed as the process's) whose rounds only note when they ran."""
    made = Publisher()
    monkeypatch.setattr(breaker_publisher, "publisher", made)
    rounds: list[float] = []

    def counted(*, background: bool = False) -> bool:
        rounds.append(time.monotonic())
        return True

    # This instance's rounds only: patched on the class, the rounds of a publisher thread an earlier
    # test started in this process were counted too (a round 0.13 s after another at a 0.3 s interval).
    monkeypatch.setattr(made, "run_once", counted)
    return made, rounds


@pytest.mark.django_db
def test_a_change_of_the_publish_interval_setting_takes_effect_at_the_next_round(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread reads CIRCUIT_BREAKER_PUBLISH_INTERVAL before every wait, not once at import."""
    made, rounds = counting_publisher(monkeypatch)
    try:
        with override_settings(AIO_REQUEST=setting(server.url, CIRCUIT_BREAKER_PUBLISH_INTERVAL=0.6)):
            made.start()
            wait_for(lambda: len(rounds) >= 2, "two rounds at 0.6 s")
            assert rounds[1] - rounds[0] >= 0.55
            # 0.1 s, the least the setting takes
            with override_settings(AIO_REQUEST=setting(server.url, CIRCUIT_BREAKER_PUBLISH_INTERVAL=0.1)):
                seen = len(rounds)
                wait_for(lambda: len(rounds) >= seen + 6, "rounds at the new interval", timeout=3.0)
                gaps = [b - a for a, b in zip(rounds[seen + 1 :], rounds[seen + 2 :], strict=False)]
                assert max(gaps) < 0.4, gaps  # the thread, not restarted, follows the new setting
    finally:
        made.stop()


def test_settings_that_become_invalid_do_not_end_the_thread(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A test (or a reload) that sets an invalid AIO_REQUEST while the thread waits: it says so and
    goes on with the last interval it read, then follows the settings again once they are valid."""
    made, rounds = counting_publisher(monkeypatch)
    try:
        with override_settings(AIO_REQUEST=setting(server.url, CIRCUIT_BREAKER_PUBLISH_INTERVAL=0.1)):
            made.start()
            wait_for(lambda: len(rounds) >= 2, "two rounds")
            with (
                caplog.at_level(logging.ERROR, logger="django_aio_request"),
                override_settings(AIO_REQUEST={"NOT_A_KEY": 1}),
            ):
                seen = len(rounds)
                wait_for(lambda: len(rounds) >= seen + 3, "rounds while the settings are invalid")
                assert made.running
                assert "AIO_REQUEST cannot be read" in caplog.text
            seen = len(rounds)
            wait_for(lambda: len(rounds) >= seen + 3, "rounds once the settings are valid again")
    finally:
        made.stop()
    assert not made.running


@pytest.mark.django_db
def test_prune_drops_old_history_and_dead_processes(publisher: Publisher) -> None:
    now = datetime.datetime.now(tz=datetime.UTC)
    common = {"client": "billing", "endpoint": "http://b/", "host": "h"}
    live, expired = now + datetime.timedelta(seconds=30), now - datetime.timedelta(seconds=1)
    BreakerReport.objects.create(pid=1, state="open", reported_at=now, expires_at=live, **common)
    BreakerReport.objects.create(pid=2, state="open", reported_at=now, expires_at=expired, **common)
    for days in (1, 3):
        at = now - datetime.timedelta(days=days)
        BreakerTransition.objects.create(at=at, pid=1, from_state="closed", to_state="open", **common)
    with override_settings(AIO_REQUEST={"CLIENTS": {}, "CIRCUIT_BREAKER_HISTORY_DAYS": 2}):
        publisher.prune()
    assert list(BreakerReport.objects.values_list("pid", flat=True)) == [1]
    assert BreakerTransition.objects.get().at == now - datetime.timedelta(days=1)
    publisher.prune()  # the default keeps 7 days
    assert BreakerTransition.objects.count() == 1


@pytest.fixture
def publishing_to_postgres(server: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Publisher]:
    """The process's publisher, on the "postgres" database every 0.2 s, with billing's circuit opened
    by three calls to a failing endpoint and published."""
    server.route("/down", lambda h: h.reply(500))
    made = Publisher(interval=0.2, database="postgres")
    monkeypatch.setattr(breaker_publisher, "publisher", made)
    try:
        with override_settings(AIO_REQUEST=setting(server.url)):
            assert call("billing", 3) == [500, 500, 502]
            wait_for(BreakerTransition.objects.using("postgres").exists, "the opening published")
            yield made
    finally:
        made.stop()
    assert not made.running


@pytest.mark.django_db(databases=["postgres"], transaction=True)
def test_the_thread_publishes_and_obeys_within_seconds(
    server: LoopbackServer, publishing_to_postgres: Publisher
) -> None:
    """The real thread, started by building the client, with its own database connection (on
    PostgreSQL: the thread leaves SQLite in memory alone while tests run, see the test after)."""
    assert publishing_to_postgres.running
    status = BreakerStatus.objects.using("postgres")
    wait_for(lambda: status.filter(state="open").exists(), "the open breaker published")
    now = datetime.datetime.now(tz=datetime.UTC)
    BreakerOverride.objects.using("postgres").create(
        client="billing", endpoint=server.url, mode="force_closed", changed_at=now
    )
    wait_for(lambda: breaker().state[server.url] is CircuitState.FORCED_CLOSED, "the override obeyed")
    wait_for(lambda: status.filter(state="forced_closed").exists(), "the forced state shown")


@pytest.mark.django_db(databases=["postgres"], transaction=True)
def test_a_lock_on_the_transitions_table_keeps_no_override_from_being_obeyed(
    server: LoopbackServer, publishing_to_postgres: Publisher
) -> None:
    """A review: an override's transition waited to be written behind a lock (a CREATE INDEX on the
    transitions table), and the publisher's one thread waited with it: the next override, which
    admin acknowledged, was obeyed by no process for as long as the lock lasted (none within 6 s).
    A round's statements now wait at most a second; the next round reads the overrides again."""
    overrides = BreakerOverride.objects.using("postgres")
    transitions = BreakerTransition.objects.using("postgres")
    with locked("django_aio_request_breakertransition", "SHARE"):
        now = datetime.datetime.now(tz=datetime.UTC)
        overrides.create(client="billing", endpoint=server.url, mode="force_closed", changed_at=now)
        wait_for(lambda: breaker().state[server.url] is CircuitState.FORCED_CLOSED, "force closed obeyed")
        # Its transition now waits for the lock; the operator isolates the endpoint after all.
        overrides.filter(client="billing").update(mode="force_open")
        started = time.monotonic()
        wait_for(lambda: breaker().state[server.url] is CircuitState.FORCED_OPEN, "force open obeyed")
        obeyed = time.monotonic() - started
        assert transitions.count() == 1  # the lock held: the forced states' transitions wait
    assert obeyed < 3.0
    # Once the lock went, the transitions waiting are written.
    wait_for(lambda: transitions.filter(to_state="forced_open").exists(), "the transitions published")


@pytest.mark.django_db(databases=["postgres"], transaction=True)
def test_a_prune_that_fails_waits_for_its_turn_again(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A prune held up by a lock fails (ROUND_LOCK_WAIT); it then ran again in every round, not once a
    minute, and a round's failure was logged though its reports and transitions were written (a review)."""
    server.route("/down", lambda h: h.reply(500))
    made = Publisher(interval=3600, database="postgres")  # only the rounds a build asks for, and these
    monkeypatch.setattr(breaker_publisher, "publisher", made)
    pruned: list[object] = []

    def prune(now: object = None) -> None:
        pruned.append(now)
        raise OperationalError("canceling statement due to lock timeout")

    monkeypatch.setattr(made, "prune", prune)
    try:
        with override_settings(AIO_REQUEST=setting(server.url)):
            assert call("billing", 3) == [500, 500, 502]
            rounds = [made.run_once() for _ in range(3)]
    finally:
        made.stop()
    assert len(pruned) == 1
    assert rounds == [True, True, True]  # published: the prune's failure is not the round's
    said = [r.getMessage() for r in caplog.records if r.name == "django_aio_request.breaker_publisher"]
    assert said == [
        "circuit breaker history could not be pruned (OperationalError: canceling statement due to lock"
        " timeout); tried again in about 60 s"
    ]


@pytest.mark.django_db(databases=["postgres"], transaction=True)
def test_a_lock_on_the_overrides_table_keeps_the_process_listed_in_admin(publishing_to_postgres: Publisher) -> None:
    """A review: with the overrides' table locked for 7 s, every round waited on its first read, no
    report was written, and the process's rows expired after 5 s; an operator's action, once the
    lock went, found "no live process" and changed nothing. The reports are now written though the
    read failed."""
    reports = BreakerReport.objects.using("postgres")
    with locked("django_aio_request_breakeroverride", "ACCESS EXCLUSIVE"):
        time.sleep(publishing_to_postgres.heartbeat_ttl + 1.0)  # longer than a report lives unless written again
        alive = reports.filter(expires_at__gt=timezone.now()).count()
    assert alive == 1
    assert BreakerStatus.objects.using("postgres").filter(client="billing").exists()


@pytest.mark.django_db
def test_the_thread_leaves_a_test_s_sqlite_database_in_memory_alone(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Django's test database for SQLite is in memory, whose connections lock whole tables: a round's
    write made the test's own writes fail at once ("database table is locked"; a review: 3 of 11
    pytest runs, 3 of 4 of manage.py test), and a TestCase's transaction was broken after it."""
    server.route("/down", lambda h: h.reply(500))
    made = Publisher(interval=0.02)
    monkeypatch.setattr(breaker_publisher, "publisher", made)
    caplog.set_level(logging.INFO, logger="django_aio_request.breaker_publisher")
    try:
        with override_settings(AIO_REQUEST=setting(server.url)):
            assert call("billing", 3) == [500, 500, 502]  # an open circuit, a transition to write
            assert made.running
            until = time.monotonic() + 1.5
            written = 0
            while time.monotonic() < until:  # the test's own writes, while rounds come every 20 ms
                BreakerOverride.objects.create(client=f"c{written}", endpoint=server.url, mode="force_closed",
                                               changed_at=timezone.now())  # fmt: skip
                BreakerOverride.objects.filter(client=f"c{written}").delete()
                written += 1
            assert written > 50
    finally:
        made.stop()
    assert not BreakerReport.objects.exists()
    assert "not published by its thread while tests run on SQLite in memory" in caplog.text
    assert "cannot be published" not in caplog.text


def test_a_test_that_allows_no_database_is_no_outage_to_warn_of(
    server: LoopbackServer, publisher: Publisher, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SimpleTestCase refuses database access (on PostgreSQL; the thread leaves SQLite in memory
    alone): each run warned that the state "cannot be published", with Django's hint to change the test class."""
    from django.test.testcases import DatabaseOperationForbidden  # type: ignore[attr-defined]

    def refused(*args: object) -> None:
        raise DatabaseOperationForbidden("Database queries to 'default' are not allowed in SimpleTestCase")

    server.route("/down", lambda h: h.reply(500))
    monkeypatch.setattr(Publisher, "_round", refused)
    caplog.set_level(logging.INFO, logger="django_aio_request.breaker_publisher")
    with override_settings(AIO_REQUEST=setting(server.url)):
        call("billing", 1)
        assert not publisher.run_once()
    assert [r.levelname for r in caplog.records] == ["INFO"]
    assert "not published while a test allows no database" in caplog.text
    monkeypatch.setattr(Publisher, "_round", lambda *args: (_ for _ in ()).throw(OperationalError("gone")))
    with override_settings(AIO_REQUEST=setting(server.url)):
        call("billing", 1)
        assert not publisher.run_once()
    assert "cannot be published to the database (OperationalError: gone)" in caplog.text  # an outage still is


def two_breakers(url: str) -> dict[str, object]:
    refunds = {"ENDPOINT": url, "CIRCUIT_BREAKER": BREAKER, "SAFE_METHOD_STRATEGY": {"NAME": "single"}}
    base = setting(url)
    return {**base, "CLIENTS": {**base["CLIENTS"], "refunds": refunds}}  # type: ignore[dict-item]


@pytest.mark.django_db(databases=["postgres"], transaction=True)
def test_a_client_built_after_an_override_was_set_obeys_it_from_its_first_call(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """admin.md: force open means the fallback without touching the network. The thread waited a whole
    interval before its first round, and a client built while it waited called the isolated endpoint
    until its next round; now building it has the thread read the overrides, and waits for that."""
    server.route("/down", lambda h: h.reply(200))
    made = Publisher(interval=3600, database="postgres")  # only the rounds a build asks for come within the test
    monkeypatch.setattr(breaker_publisher, "publisher", made)
    now = datetime.datetime.now(tz=datetime.UTC)
    for name in ("billing", "refunds"):
        BreakerOverride.objects.using("postgres").create(
            client=name, endpoint=server.url, mode="force_open", changed_at=now
        )
    try:
        with override_settings(AIO_REQUEST=two_breakers(server.url)):
            assert call("billing", 3) == [502, 502, 502]  # the client that started the thread
            assert made.running
            assert call("refunds", 3) == [502, 502, 502]  # one built while the thread waits its interval
            assert server.received("/down") == []
    finally:
        made.stop()


@pytest.mark.django_db(databases=["postgres"], transaction=True)
def test_threads_looking_up_a_client_while_it_is_built_obey_an_override_from_their_first_call(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight threads' first calls at once, as a fresh gthread worker's: only the thread that built the
    client waited for the overrides; the others, let through the registry's lock when the build was
    done, called at once, and 1 to 7 of 8 reached the endpoint an operator had forced open."""
    server.route("/down", lambda h: h.reply(200))
    made = Publisher(interval=3600, database="postgres")  # only the round the build asks for comes within the test
    monkeypatch.setattr(breaker_publisher, "publisher", made)
    now = datetime.datetime.now(tz=datetime.UTC)
    BreakerOverride.objects.using("postgres").create(
        client="billing", endpoint=server.url, mode="force_open", changed_at=now
    )
    start = threading.Barrier(8)
    statuses: list[int] = []

    def first_call() -> None:
        start.wait()
        statuses.extend(call("billing", 1))

    try:
        with override_settings(AIO_REQUEST=setting(server.url)):
            threads = [threading.Thread(target=first_call) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(10)
            assert statuses == [502] * 8
            assert server.received("/down") == []
    finally:
        made.stop()


@pytest.mark.django_db
def test_an_override_row_with_an_invalid_mode_is_skipped_with_one_warning(
    server: LoopbackServer, publisher: Publisher, caplog: pytest.LogCaptureFixture
) -> None:
    """A row whose mode is not an Override (admin writes none; a script, a fixture or SQL may) failed
    every round of every process with that client: no override of any client was obeyed, the
    process's reports expired (it vanished from admin within seconds), and the only log said the
    database could not be used. It is now skipped as if absent, with one warning naming it."""
    server.route("/down", lambda h: h.reply(200))
    caplog.set_level(logging.WARNING, logger="django_aio_request.breaker_publisher")
    with override_settings(AIO_REQUEST=two_breakers(server.url)):
        assert call("billing", 1) == [200]
        assert call("refunds", 1) == [200]
        now = datetime.datetime.now(tz=datetime.UTC)
        BreakerOverride.objects.create(client="billing", endpoint=server.url, mode="FORCE_OPEN", changed_at=now)
        BreakerOverride.objects.create(client="refunds", endpoint=server.url, mode="force_open", changed_at=now)
        assert [publisher.run_once() for _ in range(3)] == [True, True, True]

        assert call("refunds", 1) == [502]  # the other client's override is obeyed
        assert call("billing", 1) == [200]  # the invalid row is not
        assert breaker("billing").snapshot()[0].override is None
        assert sorted(BreakerReport.objects.values_list("client", "state")) == [
            ("billing", "closed"),
            ("refunds", "forced_open"),
        ]
        [warning] = [r.getMessage() for r in caplog.records]  # one, not one per round
        assert f"override of client 'billing', endpoint {server.url!r} has mode 'FORCE_OPEN'" in warning
        assert "neither 'force_open' nor 'force_closed': ignored (as if the row were absent)" in warning

        # An override applied from a valid row is lifted when a script spoils its mode, as if deleted.
        BreakerOverride.objects.filter(client="billing").update(mode="force_closed")
        assert publisher.run_once()
        assert breaker("billing").snapshot()[0].override is Override.FORCE_CLOSED
        BreakerOverride.objects.filter(client="billing").update(mode="")
        assert publisher.run_once()
        assert breaker("billing").snapshot()[0].override is None
        assert len(caplog.records) == 2
        assert "has mode ''" in caplog.records[1].getMessage()


@pytest.mark.django_db(databases=["postgres"])
def test_a_hanging_database_delays_one_client_build_by_the_first_read_wait_at_most(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A round stuck on the database: the build that waits for it gives up after ``first_read_wait``
    and says so; builds after it do not wait until a round finishes; calls go on."""
    server.route("/down", lambda h: h.reply(200))
    made, hanging = publisher_whose_overrides_hang(monkeypatch, first_read_wait=0.3)
    caplog.set_level(logging.WARNING, logger="django_aio_request.breaker_publisher")
    try:
        with override_settings(AIO_REQUEST=two_breakers(server.url)):
            started = time.monotonic()
            client = clients["billing"]
            waited = time.monotonic() - started
            assert 0.25 <= waited < 0.8, waited
            assert "not read within 0.3 s" in caplog.text
            started = time.monotonic()
            clients["refunds"]  # builds it
            assert time.monotonic() - started < 0.2  # the round still hangs: no second wait
            assert call("billing", 1) == [200]
            assert clients["billing"] is client
    finally:
        hanging.set()
        made.stop()
    assert not made.running


def test_a_new_process_obeys_an_override_set_before_it_started(server: LoopbackServer, tmp_path: Path) -> None:
    """A worker started (or recycled) after an operator forced an endpoint open: as it happens in
    production, a separate OS process, the override written to the database by another one. Its
    first calls reached the isolated endpoint for a whole publishing interval (10 of 20 in a second)."""
    server.route("/up", lambda h: h.reply(200))
    clients_setting = {"billing": {"ENDPOINT": server.url, "CIRCUIT_BREAKER": BREAKER,
                                   "SAFE_METHOD_STRATEGY": {"NAME": "single"}}}  # fmt: skip
    database = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "shared.sqlite3")}
    env = settings_module(
        tmp_path, "fresh_worker_settings", database, {"SERVICE_NAME": "orders", "CLIENTS": clients_setting}
    )

    run = functools.partial(python, env)
    run("manage.py", "migrate", "--noinput", "-v", "0")
    run("-c", OPERATOR, server.url)  # the operator's process, gone before the worker starts
    answer = json.loads(run("-c", FRESH_WORKER, "billing", "up", "20").strip().splitlines()[-1])
    assert answer["calls"] == [[502, True]] * 20, answer
    assert server.received("/up") == []
    assert answer["built"] < 2.0  # the build waited for the overrides, not for an interval


READ_HISTORY = """
import json, django
django.setup()
from django_aio_request.models import BreakerOverride, BreakerReport, BreakerTransition
override = BreakerOverride.objects.get(client="billing")
print(json.dumps({
    "transitions": list(BreakerTransition.objects.values_list("from_state", "to_state", "pid")),
    "reports": [[r.state, r.changed_at == override.changed_at, r.pid] for r in BreakerReport.objects.all()],
}))
"""


def test_a_process_made_after_an_override_writes_no_transition_and_circuit_breakers_is_no_process(
    server: LoopbackServer, tmp_path: Path
) -> None:
    """A process that takes an override set before it started (a recycled worker, a cron command, the
    operator's own ``manage.py circuit_breakers`` where the URLconf looks a client up) wrote a
    ``closed -> forced_open`` transition each, and admin's "changed" said the circuit changed when
    it started; ``circuit_breakers`` counted itself among the processes reporting (a review: "1
    process: 1 forced open, changed 0 s ago" with no server running, 2 the next run)."""
    server.route("/up", lambda h: h.reply(200))
    (tmp_path / "looking_urls.py").write_text(
        "from django_aio_request import clients\n\nBILLING = clients['billing']\nurlpatterns = []\n"
    )
    run = migrated(billing_on_sqlite(tmp_path, "taking", server.url, 0.2, extra="ROOT_URLCONF = 'looking_urls'\n"))
    run("-c", OPERATOR, server.url)
    time.sleep(0.05)  # the override is older than any breaker made from now on
    answer = json.loads(run("-c", FRESH_WORKER, "billing", "up", "3").strip().splitlines()[-1])
    assert answer["calls"] == [[502, True]] * 3
    history = json.loads(run("-c", READ_HISTORY).strip().splitlines()[-1])
    assert history["transitions"] == []
    assert [report[:2] for report in history["reports"]] == [["forced_open", True]]  # changed when the operator acted
    for _ in range(2):
        shown = run("manage.py", "circuit_breakers", "--client", "billing")
        assert "forced open" in shown
        assert "2 processes" not in shown
    history = json.loads(run("-c", READ_HISTORY).strip().splitlines()[-1])
    assert history["transitions"] == []
    assert len(history["reports"]) <= 1  # the worker's, until it expires; none of the command's
    # A --preload master that took the override, and its forked worker: the worker reported the
    # master's moment as the circuit's change (a second review).
    run("-c", FORKED_WORKER)
    history = json.loads(run("-c", READ_HISTORY).strip().splitlines()[-1])
    assert history["transitions"] == []
    assert [changed for _, changed, _ in history["reports"]] == [True] * len(history["reports"]), history
    assert len(history["reports"]) >= 2


def test_an_override_set_while_a_breaker_lives_is_its_transition_whatever_the_clocks_say(
    server: LoopbackServer, tmp_path: Path
) -> None:
    """An operator's change a running process sees is one transition there, even when the host that
    wrote it has a clock 30 s behind (a second review: told by comparing clocks, it was taken
    quietly, and the history lost it)."""
    server.route("/down", lambda h: h.reply(500))
    run = migrated(billing_on_sqlite(tmp_path, "seeing", server.url, 0.2))
    run("-c", SEES_THE_CHANGE, server.url)
    history = json.loads(run("-c", READ_HISTORY).strip().splitlines()[-1])
    assert [transition[:2] for transition in history["transitions"]] == [["closed", "forced_open"]]


FORKED_WORKER = """
import os, django
django.setup()
from django_aio_request import clients, get
from django_aio_request.breaker_publisher import publisher
client = clients["billing"]  # the master's first read takes the override
child = os.fork()
if child == 0:
    with client.request(get("up")) as response:
        ok = response.status == 502
    publisher.run_once()
    os._exit(0 if ok else 1)
assert os.waitpid(child, 0)[1] == 0, "the forked worker's call was not refused"
"""

SEES_THE_CHANGE = """
import datetime, sys, django
django.setup()
from django.utils import timezone
from django_aio_request import clients, get
from django_aio_request.breaker_publisher import publisher
from django_aio_request.models import BreakerOverride
client = clients["billing"]  # read once: no override yet
behind = timezone.now() - datetime.timedelta(seconds=30)  # written by a host whose clock is behind
BreakerOverride.objects.create(client="billing", endpoint=sys.argv[1], mode="force_open", changed_at=behind)
publisher.run_once()
with client.request(get("down")) as response:
    assert response.status == 502, response.status
"""


@pytest.fixture
def postgres_database() -> Iterator[dict[str, str]]:
    """A PostgreSQL database of its own on the machine's server (the test settings' "postgres"
    connection), dropped after the test: DATABASES' entry for a subprocess."""
    import psycopg

    reached = connections["postgres"].settings_dict
    name = f"aio_request_fresh_{uuid.uuid4().hex[:8]}"
    server = {"host": reached["HOST"] or "127.0.0.1", "port": reached["PORT"] or 5432, "user": reached["USER"]}
    with psycopg.connect(dbname="postgres", autocommit=True, **server) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield {"ENGINE": "django.db.backends.postgresql", "NAME": name, "USER": reached["USER"],
               "HOST": server["host"], "PORT": str(server["port"])}  # fmt: skip
    finally:
        with psycopg.connect(dbname="postgres", autocommit=True, **server) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_a_new_process_looking_a_client_up_as_a_module_is_imported_obeys_an_override(
    server: LoopbackServer, tmp_path: Path, postgres_database: dict[str, str]
) -> None:
    """README: a module the settings name may look a client up as it is imported. On PostgreSQL the
    publisher's first read, in its thread, read the settings again (the database bound's key), which
    imported that module again and waited for its import, which waited for that read: every build
    waited the whole 0.25 s, said "not read within 0.25 s" of a healthy database, and its first calls
    reached the endpoint forced open (6 of 6 runs, a review)."""
    server.route("/up", lambda h: h.reply(200))
    (tmp_path / "importing_enricher.py").write_text(
        "from django_aio_request import clients\n\nBILLING = clients['billing']\n\n\n"
        "def enrich(request):\n    return request\n"
    )
    clients_setting = {
        "billing": {"ENDPOINT": server.url, "CIRCUIT_BREAKER": BREAKER, "SAFE_METHOD_STRATEGY": {"NAME": "single"}},
        "refunds": {"ENDPOINT": server.url, "REQUEST_ENRICHER": "importing_enricher.enrich"},
    }
    env = settings_module(
        tmp_path, "importing_worker_settings", postgres_database, {"SERVICE_NAME": "orders", "CLIENTS": clients_setting}
    )
    run = functools.partial(python, env)
    run("manage.py", "migrate", "--noinput", "-v", "0")
    run("-c", OPERATOR, server.url)
    worker = FRESH_WORKER.replace("django.setup()\n", "django.setup()\nimport importing_enricher\n")
    done = subprocess.run(
        [sys.executable, "-c", worker, "billing", "up", "5"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["calls"] == [[502, True]] * 5, (answer, done.stderr)
    assert server.received("/up") == []
    assert "not read within" not in done.stderr


EARLY_WORKER = """
import json, os, sys, time, django
django.setup()
from django_aio_request import get
from django_aio_request.models import BreakerReport
from django_aio_request.breaker_publisher import publisher
from looking_app import found
client = found["billing"]  # looked up while the apps loaded; no client is built after setup
# No thread yet: gunicorn --preload forks here, and a worker forked while the thread's first round
# imported a module kept that import's lock, its rounds stuck for good (a second review).
assert not publisher.running
child = os.fork()
if child == 0:  # a --preload worker, forked right after setup: its first call reads the overrides
    with client.request(get("up")) as response:
        os._exit(0 if response.status == 502 else 1)
assert os.waitpid(child, 0)[1] == 0, "the forked worker's call reached the endpoint forced open"
calls = []
for _ in range(3):
    with client.request(get("up")) as response:
        calls.append([response.status, "X-Circuit-Breaker" in response.headers])
ends = time.monotonic() + 10
while not BreakerReport.objects.filter(client="billing", pid=os.getpid()).exists() and time.monotonic() < ends:
    time.sleep(0.05)
print(json.dumps({"calls": calls, "published": BreakerReport.objects.filter(pid=os.getpid()).count()}))
"""

LOOKING_MODELS = (
    "from django_aio_request import clients\n\nfrom looking_app import found\n\nfound['billing'] = clients['billing']\n"
)
LOOKING_READY = """from django.apps import AppConfig


class LookingConfig(AppConfig):
    name = "looking_app"

    def ready(self):  # listed before django_aio_request: runs before its ready()
        from django_aio_request import clients
        from looking_app import found

        found["billing"] = clients["billing"]
"""


@pytest.mark.parametrize("where", ["models", "ready"])
def test_a_client_looked_up_while_the_apps_load_is_published_and_obeys_an_override(
    server: LoopbackServer, tmp_path: Path, where: str
) -> None:
    """A review: a client looked up as an app's models module was imported, or in the ready() of an app
    listed before this one, was built before the publisher's receiver was connected. It was never
    published to admin, and an endpoint forced open there took its calls, in a one-client project for
    the life of the process."""
    server.route("/up", lambda h: h.reply(200))
    app = tmp_path / "looking_app"
    app.mkdir()
    (app / "__init__.py").write_text("found = {}\n")
    (app / "models.py").write_text(LOOKING_MODELS if where == "models" else "")
    (app / "apps.py").write_text(LOOKING_READY if where == "ready" else "")
    env = billing_on_sqlite(
        tmp_path, "early_lookup", server.url, 0.2, extra="INSTALLED_APPS = ['looking_app', *INSTALLED_APPS]\n"
    )
    run = functools.partial(python, env)
    run("manage.py", "migrate", "--noinput", "-v", "0")
    run("-c", OPERATOR, server.url)
    answer = json.loads(run("-c", EARLY_WORKER).strip().splitlines()[-1])
    assert answer["calls"] == [[502, True]] * 3, answer
    assert server.received("/up") == []
    assert answer["published"] == 1, answer


LATE_LOOKUP_THEN_FORK = """
import json, os, sys, threading, time, django
django.setup()
# Every import the publisher's thread makes for the first time takes 1 s, holding that module's
# import lock (the window is milliseconds in earnest): a fork lands in it if there is one.
slowed = []
class SlowImports:
    def find_spec(self, name, path=None, target=None):
        if threading.current_thread().name == "aio-request-breakers":
            slowed.append(name)
            time.sleep(1.0)
        return None
sys.meta_path.insert(0, SlowImports())
from django_aio_request import clients, get
client = clients["billing"]  # looked up after the apps loaded (a urls.py): the build waits for one round
child = os.fork()  # gunicorn --preload forks its workers now
if child == 0:  # the worker's first call waits for its own round, which reads the override
    with client.request(get("up")) as response:
        os._exit(0 if response.status == 502 else 1)
status = os.waitpid(child, 0)[1]
print(json.dumps({"worker obeyed": status == 0, "slowed": slowed}))
"""


def test_a_worker_forked_after_a_late_lookup_obeys_an_override(server: LoopbackServer, tmp_path: Path) -> None:
    """The publisher's thread imported modules for the first time in its rounds (the testing module, to
    tell a fake; the SQL compiler, at the process's first query). A --preload master whose client was
    looked up after the apps loaded forked while the thread held such an import's lock, and the
    worker's rounds hung on it for good: its calls went to an endpoint forced open in admin."""
    server.route("/up", lambda h: h.reply(200))
    run = migrated(billing_on_sqlite(tmp_path, "late_lookup", server.url, 0.2))
    run("-c", OPERATOR, server.url)
    answer = json.loads(run("-c", LATE_LOOKUP_THEN_FORK).strip().splitlines()[-1])
    assert answer == {"worker obeyed": True, "slowed": []}
    assert server.received("/up") == []


def test_a_process_that_exits_publishes_its_last_transitions(server: LoopbackServer, tmp_path: Path) -> None:
    """A worker that opened a circuit and exited before the next round (gunicorn's --max-requests,
    a deploy's SIGTERM): its opening was lost with it, never in admin's history (18-19 of 20 recycled
    workers in a review). The exit runs a last round."""
    server.route("/down", lambda h: h.reply(500))
    env = billing_on_sqlite(tmp_path, "exiting_worker", server.url, 30)

    run = functools.partial(python, env)
    run("manage.py", "migrate", "--noinput", "-v", "0")
    run("-c", EXITING_WORKER)  # the round at build has run; the next would be 30 s later
    answer = json.loads(run("-c", TRANSITIONS).strip().splitlines()[-1])
    assert answer == [["closed", "open"]]


NO_THREAD_AT_SHUTDOWN = """
import threading
start = threading.Thread.start

def start_unless_shutting_down(self):  # what Python 3.12.0-3.12.2 do at interpreter shutdown
    if self.name == "aio-request-breakers-exit":
        raise RuntimeError("can't create new thread at interpreter shutdown")
    start(self)

threading.Thread.start = start_unless_shutting_down
"""


@pytest.mark.same_on_every_django  # a process's life and a cache's, no Django release's
def test_where_no_thread_starts_at_shutdown_the_last_round_runs_on_the_exiting_thread(
    server: LoopbackServer, tmp_path: Path
) -> None:
    """Python 3.12.0-3.12.2 start no thread at interpreter shutdown (3.12.3 does again): the exit
    printed a traceback, and the last transitions were lost (5 of 10 runs on 3.12.1, a review)."""
    server.route("/down", lambda h: h.reply(500))
    clients_setting = {"billing": {"ENDPOINT": server.url, "CIRCUIT_BREAKER": BREAKER,
                                   "SAFE_METHOD_STRATEGY": {"NAME": "single"}}}  # fmt: skip
    database = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "exit.sqlite3")}
    aio_request = {"SERVICE_NAME": "orders", "CLIENTS": clients_setting, "CIRCUIT_BREAKER_PUBLISH_INTERVAL": 30}
    env = settings_module(tmp_path, "shutdown_worker_settings", database, aio_request)
    run = functools.partial(python, env)
    run("manage.py", "migrate", "--noinput", "-v", "0")
    done = subprocess.run(
        [sys.executable, "-c", NO_THREAD_AT_SHUTDOWN + EXITING_WORKER],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")  # no "Exception ignored ... RuntimeError"
    answer = json.loads(run("-c", TRANSITIONS).strip().splitlines()[-1])
    assert answer == [["closed", "open"]]


@pytest.mark.parametrize("hangs", ["the thread's round", "the last round"])
def test_a_database_that_hangs_holds_exit_no_longer_than_the_exit_wait(
    monkeypatch: pytest.MonkeyPatch, hangs: str
) -> None:
    """The last round is given EXIT_WAIT at most, whether the round under way when the process exits
    does not end or the last round itself does not."""
    release = threading.Event()
    made = Publisher(interval=3600, first_read_wait=0)
    rounds: list[float] = []

    def round_(number: int, background: bool) -> bool:
        rounds.append(time.monotonic())
        if hangs == "the thread's round" or len(rounds) > 1:
            release.wait(10)
        return True

    monkeypatch.setattr(made, "_run_once", round_)
    made.start()
    while not rounds:
        time.sleep(0.01)
    try:
        started = time.monotonic()
        made.publish_at_exit(timeout=0.3)
        assert time.monotonic() - started < 0.6
        assert len(rounds) == (1 if hangs == "the thread's round" else 2)
    finally:
        release.set()
        made.stop()


def test_an_opening_found_at_the_first_read_is_not_written_to_the_history() -> None:
    """The process that opened the circuit writes the opening; one that found it open when it started
    (a recycled worker) writes no second one (20-30 rows for one opening in a review)."""
    made = Publisher(interval=3600, first_read_wait=0)
    scope, closed, open_ = "http://billing/", CircuitState.CLOSED, CircuitState.OPEN
    made._on_transition("billing", CircuitTransition(scope, closed, open_, 0, 0, 0.0, already_open=True))
    assert made._take_transitions() == []
    opened = CircuitTransition(scope, closed, open_, 6, 0, 0.0)
    made._on_transition("billing", opened)
    assert made._take_transitions() == [("billing", opened)]


@pytest.mark.same_on_every_django  # a process's life and a cache's, no Django release's
def test_a_new_process_calls_no_endpoint_the_shared_cache_says_is_open(server: LoopbackServer, tmp_path: Path) -> None:
    """A worker started (or recycled) during a break, breakers sharing state through Redis: its build
    waits for the store's first read of the endpoint (at most FIRST_READ_WAIT, beside admin's
    overrides). Its calls went by what it knew until that read landed (80-110 ms in a fresh process:
    the read imports redis and connects), so each fresh single-threaded worker sent calls to the open
    circuit until its own failures tripped it (83-107 calls from 3 workers in 6 s in a review)."""
    require_redis()
    server.route("/down", lambda h: h.reply(500))
    name = f"billing_{uuid.uuid4().hex[:8]}"  # keys of its own in the shared Redis
    clients_setting = {name: {"ENDPOINT": server.url, "CIRCUIT_BREAKER": BREAKER,
                              "SAFE_METHOD_STRATEGY": {"NAME": "single"}}}  # fmt: skip
    database = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "shared.sqlite3")}
    caches = (
        "CACHES = {'default': {'BACKEND': 'django.core.cache.backends.locmem.LocMemCache'}, 'breakers': {"
        "'BACKEND': 'django.core.cache.backends.redis.RedisCache', 'LOCATION': 'redis://127.0.0.1:6379/0',"
        " 'OPTIONS': {'socket_timeout': 1, 'socket_connect_timeout': 1}}}\n"
    )
    setting: dict[str, object] = {
        "SERVICE_NAME": "orders",
        "CIRCUIT_BREAKER_STATE": "breakers",
        "CLIENTS": clients_setting,
    }
    env = settings_module(tmp_path, "shared_breaker_settings", database, setting, extra=caches)

    run = functools.partial(python, env)
    run("manage.py", "migrate", "--noinput", "-v", "0")
    run("-c", OPENER, name)  # opens the circuit (2 failures) and exits once the block is in Redis
    assert len(server.received("/down")) == 2
    answer = json.loads(run("-c", FRESH_WORKER, name, "down", "10").strip().splitlines()[-1])
    assert answer["built"] < 1.0
    if not answer["late"]:  # the first read landed within FIRST_READ_WAIT: no call to the open circuit
        assert answer["calls"] == [[502, True]] * 10, answer
        assert len(server.received("/down")) == 2  # none of the new worker's
    else:
        # On a machine where importing redis and connecting takes longer (a VM three times slower
        # than the last: 0.29 s), the wait ends with the warning, as documented, and the worker calls
        # by what it knows until the read lands or its own failures trip it (MINIMUM_THROUGHPUT 2).
        went = len(server.received("/down")) - 2
        assert went <= 2, answer
        assert answer["calls"] == [[500, False]] * went + [[502, True]] * (10 - went), answer


OPENER = """
import sys, django
django.setup()
from django_aio_request import clients, get
client = clients[sys.argv[1]]
for _ in range(2):
    with client.request(get("down")):
        pass
client.circuit_breaker.store.sync()  # the block written to Redis before this process exits
"""

EXITING_WORKER = """
import django
django.setup()
from django_aio_request import clients, get
client = clients["billing"]
for _ in range(3):
    with client.request(get("down")) as response:
        pass
assert response.status == 502, response.status  # open: the breaker's fallback
"""

TRANSITIONS = """
import json, django
django.setup()
from django_aio_request.models import BreakerTransition
print(json.dumps([[t.from_state, t.to_state] for t in BreakerTransition.objects.order_by("at")]))
"""

SIGTERMED_WORKER = (
    EXITING_WORKER
    + """
import signal, sys, time
if sys.argv[1] == "handled":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # what docs/admin.md tells such a process to do
print("open", flush=True)
time.sleep(60)  # a worker loop, until systemd's SIGTERM
"""
)


@pytest.mark.same_on_every_django  # Python's signal handling, no Django release's
@pytest.mark.parametrize(("handled", "published"), [(False, []), (True, [["closed", "open"]])])
def test_a_plain_process_ended_by_sigterm_publishes_a_last_round_only_if_it_handles_it(
    server: LoopbackServer, tmp_path: Path, handled: bool, published: list[list[str]]
) -> None:
    """docs/admin.md: the last round runs as Python exits, and Python does not exit on SIGTERM by
    itself: a plain process (a management command's worker loop under systemd) dies on it with its
    transitions since the last round unpublished, as with SIGKILL (a review), unless it turns
    SIGTERM into an exit."""
    server.route("/down", lambda h: h.reply(500))
    env = billing_on_sqlite(tmp_path, "sigtermed_worker", server.url, 30)
    python(env, "manage.py", "migrate", "--noinput", "-v", "0")
    worker = subprocess.Popen(
        [sys.executable, "-c", SIGTERMED_WORKER, "handled" if handled else "plain"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert worker.stdout is not None
    assert worker.stdout.readline().strip() == "open"  # the circuit opened; the next round is 30 s away
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == (0 if handled else -signal.SIGTERM)
    worker.stdout.close()
    assert json.loads(python(env, "-c", TRANSITIONS).strip().splitlines()[-1]) == published


OPERATOR = """
import sys, django
django.setup()
from django.utils import timezone
from django_aio_request.models import BreakerOverride
BreakerOverride.objects.create(client="billing", endpoint=sys.argv[1], mode="force_open", changed_at=timezone.now())
"""

FRESH_WORKER = """
import json, logging, sys, time, django
django.setup()
from django_aio_request import clients, get
late = []  # the store's warning that its first read did not land within the wait
class Late(logging.Handler):
    def emit(self, record):
        if "did not answer this process's first read" in record.getMessage():
            late.append(record.getMessage())
logging.getLogger("django_aio_request.breaker.cache_store").addHandler(Late())
name, path, count = sys.argv[1], sys.argv[2], int(sys.argv[3])  # the client, the path it calls, how often
started = time.monotonic()
client = clients[name]
built = time.monotonic() - started
calls = []
for _ in range(count):
    with client.request(get(path)) as response:
        calls.append([response.status, "X-Circuit-Breaker" in response.headers])
print(json.dumps({"built": built, "calls": calls, "late": late}))
"""


@pytest.mark.parametrize("loop_stays", [False, True], ids=["loop-ends", "loop-stays"])
def test_a_first_lookup_on_an_event_loop_does_not_wait_for_a_hanging_database(
    server: LoopbackServer, tmp_path: Path, loop_stays: bool
) -> None:
    """The first ``clients["billing"]`` in an async view held the event loop for the whole first-read
    wait (0.25 s, every task of the loop with it) while a database that never answers was read. Now
    a lookup on a loop's thread returns at once and the client calls before the overrides are read;
    a sync lookup still waits, and says so (loop-ends: the loop is gone before its check is due).
    When the loop is still there at the end of the wait, it logs the warning, naming the loop, and
    later builds do not wait, as after a sync build that gave up (loop-stays)."""
    server.route("/up", lambda h: h.reply(200))
    breakers = {name: {"ENDPOINT": server.url, "CIRCUIT_BREAKER": BREAKER} for name in ("billing", "refunds")}
    with silent_listener() as port:
        database = {"ENGINE": "django.db.backends.postgresql", "HOST": "127.0.0.1", "PORT": str(port),
                    "NAME": "hangs", "USER": "nobody"}  # fmt: skip
        env = settings_module(
            tmp_path, "hanging_database_settings", database, {"SERVICE_NAME": "orders", "CLIENTS": breakers}
        )
        done = subprocess.run(
            [sys.executable, "-c", ON_A_LOOP, "stays" if loop_stays else "ends"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["looked_up"] < 0.1, answer  # it waited 0.25 s on the loop's thread
    assert answer["status"] == 200, answer
    late = "circuit breaker overrides not read within 0.25 s (the database is slow or hangs): client"
    if loop_stays:
        assert answer["warned_on_loop"] == [
            f"{late} 'billing' (built on an event loop's thread, which does not wait for them) calls before "
            "admin's overrides are applied; builds do not wait until a round finishes"
        ], answer
        assert answer["sync_lookup"] < 0.2, answer  # the database hangs: no build waits for it now
        assert len(answer["warnings"]) == 1, answer
    else:
        assert answer["warned_on_loop"] == [], answer  # nothing while the read may still land in time
        assert 0.25 <= answer["sync_lookup"] < 0.8, answer  # a sync build waits, as before
        assert len(answer["warnings"]) == 1, answer
        assert answer["warnings"][0].startswith(f"{late} 'refunds' calls before"), answer


ON_A_LOOP = """
import asyncio, json, logging, sys, time, django
django.setup()
from django_aio_request import clients, get

warnings = []
handler = logging.Handler()
handler.emit = lambda record: warnings.append(record.getMessage())
logging.getLogger("django_aio_request.breaker_publisher").addHandler(handler)

async def view(stays):
    started = time.monotonic()
    client = clients["billing"]
    looked_up = time.monotonic() - started
    async with client.arequest(get("up")) as response:
        status = response.status
    if stays:
        await asyncio.sleep(0.6)  # past the first-read wait: the loop looks whether the read landed
    return {"looked_up": looked_up, "status": status, "warned_on_loop": list(warnings)}

answer = asyncio.run(view(sys.argv[1] == "stays"))
started = time.monotonic()
clients["refunds"]
answer["sync_lookup"] = time.monotonic() - started
answer["warnings"] = warnings
print(json.dumps(answer))
"""


def test_a_forked_child_starts_its_own_thread(publisher: Publisher) -> None:
    publisher.start()
    assert publisher.running
    pid = os.fork()
    if pid == 0:  # the child: the parent's thread did not survive the fork, and the publisher knows it
        os._exit(0 if not publisher.running and publisher._thread is None else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert publisher.running  # the parent's own goes on


@pytest.mark.django_db
def test_a_client_kept_across_fork_is_the_child_s_published_and_overridden(
    server: LoopbackServer, publisher: Publisher
) -> None:
    """gunicorn --preload, or a module-level ``billing = clients["billing"]``: the client built and
    used before fork() was neither published by the child nor given admin's overrides there (the
    child's registry was emptied, so its rounds did not list it). In the child it is the registry's
    client, its first call starts the thread, and the child's rounds report it under the child's pid
    with the child's calls only, and lift the override the parent's round applied once its row goes.
    (The child works on its copy of the in-memory test database.)"""
    server.route("/down", lambda h: h.reply(200))  # call() asks for /down
    with override_settings(AIO_REQUEST=setting(server.url)):
        kept = clients["billing"]
        assert call("billing", 3) == [200, 200, 200]
        now = datetime.datetime.now(tz=datetime.UTC)
        BreakerOverride.objects.create(client="billing", endpoint=server.url, mode="force_closed", changed_at=now)
        assert publisher.run_once()  # the parent's round applies it, and publishes 3 successes
        assert breaker().state[server.url] is CircuitState.FORCED_CLOSED
        parent_pid = os.getpid()

        def child() -> dict[str, object]:
            before_call = publisher.running
            with kept.request(get("down")) as first:
                pass
            started = publisher.running
            BreakerOverride.objects.filter(client="billing").delete()  # admin lifts it after the fork
            with kept.request(get("down")) as second:
                pass
            assert publisher.run_once()
            state = str(breaker().state[server.url])
            BreakerOverride.objects.create(client="billing", endpoint=server.url, mode="force_open", changed_at=now)
            assert publisher.run_once()
            with kept.request(get("down")) as forced:
                pass
            assert publisher.run_once()
            reports = {
                "parent" if pid == parent_pid else "child" if pid == os.getpid() else str(pid): [successes, rejected]
                for pid, successes, rejected in BreakerReport.objects.values_list("pid", "successes", "rejected")
            }
            return {
                "same": clients["billing"] is kept,
                "running": [before_call, started],
                "statuses": [first.status, second.status, forced.status],
                "after_lift": state,
                "reports": reports,
                "transitions_of_the_child": [
                    list(t)
                    for t in BreakerTransition.objects.filter(pid=os.getpid())
                    .order_by("at", "id")
                    .values_list("from_state", "to_state")
                ],
            }

        answer = in_child(child)
    assert answer == {
        "same": True,
        "running": [False, True],  # no thread until the first call in the child
        "statuses": [200, 200, 502],
        "after_lift": "closed",  # the parent's round applied FORCE_CLOSED: the child's lifted it
        # The child's own calls (2 successes, 1 rejected), not the parent's 3 as well.
        "reports": {"parent": [3, 0], "child": [2, 1]},
        "transitions_of_the_child": [["forced_closed", "closed"], ["closed", "forced_open"]],
    }


PRELOAD_APP = """
import django
from django.core.wsgi import get_wsgi_application
from django_aio_request import clients, get

application = get_wsgi_application()
billing = clients["billing"]  # built in gunicorn's master (--preload) and kept, as a module's client
with billing.request(get("up")) as response:  # warmed up: a call before the workers are forked
    assert response.status == 200, response.status
"""

PRELOAD_URLS = """
import json, os
from django.http import HttpResponse
from django.urls import path
from django_aio_request import clients, get
import preload_app

def call(request):
    with preload_app.billing.request(get("up")) as response:
        status = response.status
    same = clients["billing"] is preload_app.billing
    return HttpResponse(json.dumps({"pid": os.getpid(), "status": status, "same": same}))

urlpatterns = [path("call", call)]
"""


@pytest.mark.django_db(databases=["postgres"], transaction=True)
def test_gunicorn_preload_workers_publish_the_master_s_client_and_obey_overrides(
    server: LoopbackServer, tmp_path: Path
) -> None:
    """gunicorn --preload with a client built and used at import in the master (docs/admin.md): a
    worker's calls on that module-level client are published under the worker's pid (its own
    calls, not the master's warm-up), ``clients["billing"]`` is that very client, and an override
    set after the fork is obeyed within the publishing interval. The worker's rounds listed no
    client, no thread ran there, and the override was never applied: 200 for ever."""
    server.route("/up", lambda h: h.reply(200))
    clients_setting = {"billing": {"ENDPOINT": server.url, "CIRCUIT_BREAKER": BREAKER,
                                   "SAFE_METHOD_STRATEGY": {"NAME": "single"}}}  # fmt: skip
    test_database = connections["postgres"].settings_dict  # the test run's PostgreSQL database, shared
    database = {key: test_database[key] for key in ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT")}
    aio_request = {"SERVICE_NAME": "orders", "CIRCUIT_BREAKER_PUBLISH_INTERVAL": 0.2, "CLIENTS": clients_setting}
    env = settings_module(
        tmp_path, "preload_settings", database, aio_request, "ROOT_URLCONF = 'preload_urls'\nALLOWED_HOSTS = ['*']\n"
    )
    (tmp_path / "preload_app.py").write_text(PRELOAD_APP)
    (tmp_path / "preload_urls.py").write_text(PRELOAD_URLS)
    port = free_port()
    log = tmp_path / "gunicorn.log"
    command = [str(Path(sys.executable).parent / "gunicorn"), "--preload", "-w", "1", "-b", f"127.0.0.1:{port}",
               "preload_app:application"]  # fmt: skip
    with log.open("wb") as out:
        gunicorn = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    reports = BreakerReport.objects.using("postgres")
    try:
        try:
            wait_until_listening(gunicorn, port, "gunicorn")
        except RuntimeError as error:
            raise RuntimeError(f"{error}:\n{log.read_text()}") from None

        def call_worker() -> dict[str, Any]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/call", timeout=10) as answer:
                return json.loads(answer.read())  # type: ignore[no-any-return]

        first = call_worker()
        worker = first["pid"]
        assert (first["status"], first["same"], worker != gunicorn.pid) == (200, True, True), first
        # The worker's own call, not the master's warm-up as well (the master publishes that one).
        wait_for(lambda: reports.filter(pid=worker, successes=1).exists(), "the worker publishes the master's client")
        wait_for(lambda: reports.filter(pid=gunicorn.pid, successes=1).exists(), "the master publishes its warm-up")
        now = datetime.datetime.now(tz=datetime.UTC)
        BreakerOverride.objects.using("postgres").create(
            client="billing", endpoint=server.url, mode="force_open", changed_at=now
        )
        set_at = time.monotonic()
        wait_for(lambda: call_worker()["status"] == 502, "the worker obeys the override set after the fork")
        assert time.monotonic() - set_at < 2.0  # the interval is 0.2 s
        last = call_worker()
        assert (last["status"], last["same"], last["pid"]) == (502, True, worker), last
        wait_for(lambda: reports.filter(pid=worker, state="forced_open").exists(), "the worker shows the forced state")
    finally:
        gunicorn.send_signal(signal.SIGTERM)
        try:
            gunicorn.wait(timeout=15)
        except subprocess.TimeoutExpired:
            gunicorn.kill()
            gunicorn.wait()


def wait_for(condition: "object", what: str, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if condition():  # type: ignore[operator]
                return
        except OperationalError as error:
            # The test database is SQLite in shared-cache memory: a read while the publisher thread
            # writes fails at once ("table is locked") where a real database waits. Read again.
            if "locked" not in str(error):
                raise
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


@pytest.mark.django_db(databases=["postgres"])
def test_postgresql_reports_and_the_view(server: LoopbackServer, publisher: Publisher) -> None:
    server.route("/down", lambda h: h.reply(500))
    publisher.database = "postgres"
    with override_settings(AIO_REQUEST=setting(server.url)):
        call("billing", 3)
        assert publisher.run_once()
        assert publisher.run_once()  # the upsert on conflict
    now = datetime.datetime.now(tz=datetime.UTC)
    BreakerReport.objects.using("postgres").create(
        client="billing", endpoint=server.url, host="other", pid=1, state="closed", successes=2, reported_at=now,
        expires_at=now + datetime.timedelta(minutes=1),
    )  # fmt: skip
    row = BreakerStatus.objects.using("postgres").get()
    assert (row.state, row.processes, row.failures, row.successes) == ("open", 2, 2, 2)
    assert isinstance(row.failure_ratio, float)
    assert row.failure_ratio == 0.5
    assert row.processes_summary() == "2 processes: 1 open, 1 closed"
    assert BreakerTransition.objects.using("postgres").get().to_state == "open"


@pytest.mark.django_db
def test_a_breaker_sharing_a_cache_reports_its_alias(server: LoopbackServer, publisher: Publisher) -> None:
    server.route("/down", lambda h: h.reply(500))
    with override_settings(AIO_REQUEST=setting(server.url, CIRCUIT_BREAKER_STATE="default")):
        call("billing", 1)
        assert publisher.run_once()
    assert BreakerReport.objects.get().store == "default"


@pytest.mark.django_db
def test_a_cache_alias_no_database_text_holds_is_reported_escaped(
    server: LoopbackServer, publisher: Publisher, settings: Any, admin_client: BrowserClient
) -> None:
    """``CIRCUIT_BREAKER_STATE = os.environ["BREAKER_CACHE"]`` with a byte that is not UTF-8: the alias
    is a lone surrogate, the cache works, and written as it was every publishing round failed (a
    review), the process's other clients' reports too."""
    alias = "shared\udcff"
    settings.CACHES = {**settings.CACHES, alias: {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    server.route("/down", lambda h: h.reply(500))
    with override_settings(AIO_REQUEST=setting(server.url, CIRCUIT_BREAKER_STATE=alias)):
        call("billing", 1)
        assert publisher.run_once()
    assert BreakerReport.objects.get().store == "shared\\udcff"
    url = reverse("admin:django_aio_request_breakerstatus_change", args=[quote(breaker_id("billing", server.url))])
    assert "shared in cache &#x27;shared\\\\udcff&#x27;" in admin_client.get(url).content.decode()


@pytest.mark.django_db
def test_a_process_whose_shared_cache_does_not_answer_is_shown_counting_on_its_own(
    server: LoopbackServer, publisher: Publisher, settings: Any, admin_client: BrowserClient
) -> None:
    """A review: with Redis down, each process logged that it counted on its own, and admin still said
    "shared in cache" for each of them. The cache here refuses connections (no server on its port)."""
    server.route("/down", lambda h: h.reply(500))
    settings.CACHES = {
        **settings.CACHES,
        "gone": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        },
    }
    with override_settings(AIO_REQUEST=setting(server.url, CIRCUIT_BREAKER_STATE="gone")):
        call("billing", 1)
        store = breaker().store
        assert eventually(lambda: getattr(store, "healthy", True) is False, timeout=10)
        assert publisher.run_once()
        assert BreakerReport.objects.get().store == "gone (unreachable)"
        url = reverse("admin:django_aio_request_breakerstatus_change", args=[quote(breaker_id("billing", server.url))])
        html = admin_client.get(url).content.decode()
        assert "this process, until cache &#x27;gone&#x27; answers" in html
        assert "shared in cache" not in html


@pytest.mark.django_db
def test_a_process_whose_shared_cache_hangs_is_shown_counting_on_its_own(
    server: LoopbackServer, publisher: Publisher, settings: Any, admin_client: BrowserClient
) -> None:
    """A review: a cache that hangs (a blackholed Redis without socket timeouts) never fails, so admin
    said "shared in cache" for as long as it hung, while the log said the process decided alone."""
    server.route("/down", lambda h: h.reply(500))
    hanging_cache.arm()
    settings.CACHES = {
        **settings.CACHES,
        "hanging": {"BACKEND": "tests.support.hanging_cache.HangingCache", "OPTIONS": {"seconds": 30}},
    }
    url = reverse("admin:django_aio_request_breakerstatus_change", args=[quote(breaker_id("billing", server.url))])
    try:
        with override_settings(AIO_REQUEST=setting(server.url, CIRCUIT_BREAKER_STATE="hanging")):
            call("billing", 1)
            store = breaker().store
            assert isinstance(store, CacheCircuitStore)
            # The store's sync thread asks the cache within a round of the call (0.1 s; later on a busy
            # machine: read at once, it had not yet in a CI run of 2026-12-07)
            assert eventually(lambda: bool(hanging_cache.calls), timeout=5), "the store never asked the cache"
            time.sleep(store.stall_after + 0.3)  # the round that began with the call still hangs
            assert publisher.run_once()
            assert BreakerReport.objects.get().store == "hanging (unreachable)"
            html = admin_client.get(url).content.decode()
            assert "this process, until cache &#x27;hanging&#x27; answers" in html
            assert "shared in cache" not in html
            hanging_cache.release()  # the cache answers again: the counts are shared again
            shared_again = lambda: publisher.run_once() and BreakerReport.objects.get().store == "hanging"  # noqa: E731
            assert eventually(shared_again, timeout=10)
            assert "shared in cache &#x27;hanging&#x27;" in admin_client.get(url).content.decode()
    finally:
        hanging_cache.release()


@pytest.mark.django_db
def test_counts_cover_the_last_minute_whatever_the_sampling_window(
    server: LoopbackServer, publisher: Publisher
) -> None:
    """The README's example breaker samples 1 s: its own counts are empty a second later, also while open."""
    server.route("/down", lambda h: h.reply(500))
    quick = {"BREAK_DURATION": 0.5, "SAMPLING_DURATION": 1.0, "MINIMUM_THROUGHPUT": 2, "FAILURE_THRESHOLD": 0.5}
    billing = {"ENDPOINT": server.url, "CIRCUIT_BREAKER": quick, "SAFE_METHOD_STRATEGY": {"NAME": "single"}}
    with override_settings(AIO_REQUEST={"CLIENTS": {"billing": billing}}):
        assert call("billing", 4) == [500, 500, 502, 502]  # two failures open it; two calls rejected
        time.sleep(1.2)  # past the sampling window and the break
        assert breaker().counts(server.url) == (0, 0)
        assert publisher.run_once()
        report = BreakerReport.objects.get()
        assert (report.state, report.failures, report.successes, report.rejected) == ("open", 2, 0, 2)
        assert report.window_seconds == 60.0
        row = BreakerStatus.objects.get()
        assert (row.failures, row.rejected, row.failure_ratio) == (2, 2, 1.0)
        # The break is over and no call came: the page says a probe is due rather than only "open".
        assert row.blocked_until is not None
        assert row.blocked_until < datetime.datetime.now(tz=datetime.UTC)
        from django_aio_request.admin import state_note

        assert re.match(r"probe due: the break ended \d+ s ago; the next call probes$", state_note(row))
        assert call("billing", 1) == [500]  # the probe, failed: open again for 0.5 s
        assert publisher.run_once()
        row = BreakerStatus.objects.get()
        assert (row.state, row.failures, row.rejected) == ("open", 3, 2)
        assert state_note(row).startswith("probe in ")


@pytest.mark.django_db
def test_a_round_stamps_the_heartbeat_on_the_database_clock(server: LoopbackServer, publisher: Publisher) -> None:
    server.route("/down", lambda h: h.reply(500))
    with override_settings(AIO_REQUEST=setting(server.url)):
        call("billing", 1)
        publisher._interval = 1.0
        assert publisher.run_once()
        report = BreakerReport.objects.get()
        ttl = (report.expires_at - report.reported_at).total_seconds()
        assert ttl == pytest.approx(breaker_publisher.MIN_HEARTBEAT_TTL, abs=0.01)
        assert abs((report.reported_at - datetime.datetime.now(tz=datetime.UTC)).total_seconds()) < 2
        publisher._interval = 3.0
        assert publisher.run_once()
        report = BreakerReport.objects.get()
        assert (report.expires_at - report.reported_at).total_seconds() == pytest.approx(15.0, abs=0.01)


SHOP_TESTS = """
import time

import responses
from django.test import TestCase

from django_aio_request import clients, get


class InvoiceTests(TestCase):
    @responses.activate
    def test_request_built(self):
        responses.get("http://billing.test:8080/api/invoices/7", json={"id": 7})
        with clients["billing"].request(get("invoices/{id}", path_parameters={"id": 7})) as response:
            self.assertEqual(response.json(), {"id": 7})
        time.sleep(0.6)  # the publisher's rounds (every 0.2 s) run while the test does
"""


@pytest.mark.django_db(databases=["postgres"])
def test_manage_py_test_on_postgresql_with_conn_max_age_drops_its_test_database(tmp_path: Path) -> None:
    """The docs/testing.md way (``responses``, a client with a breaker) in ``manage.py test`` on
    PostgreSQL with ``CONN_MAX_AGE``: the publisher's thread kept its connection to the test
    database, which Django could then not drop ("being accessed by other users"): exit 1, and the
    database left behind."""
    test_database = connections["postgres"].settings_dict
    name = f"test_publisher_conn_max_age_{os.getpid()}"
    database = {key: test_database[key] for key in ("ENGINE", "USER", "PASSWORD", "HOST", "PORT")}
    database |= {"NAME": test_database["NAME"], "CONN_MAX_AGE": 60, "TEST": {"NAME": name}}
    aio_request = {
        "CIRCUIT_BREAKER_PUBLISH_INTERVAL": 0.2,
        "CLIENTS": {"billing": {"ENDPOINT": "http://billing.test:8080/api/", "CIRCUIT_BREAKER": {}}},
    }
    extra = "INSTALLED_APPS = [*INSTALLED_APPS, 'shop']\nTEST_RUNNER = 'django.test.runner.DiscoverRunner'\n"
    env = settings_module(tmp_path, "shop_settings", database, aio_request, extra)
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").write_text("")
    (tmp_path / "shop" / "tests.py").write_text(SHOP_TESTS)

    import psycopg

    # Its own connection, in autocommit: DROP DATABASE cannot run in the test's transaction.
    server = psycopg.connect(
        host=test_database["HOST"], port=test_database["PORT"] or None, user=test_database["USER"],
        password=test_database["PASSWORD"] or None, dbname=test_database["NAME"], autocommit=True,
    )  # fmt: skip
    try:
        run = subprocess.run(
            [sys.executable, "-m", "django", "test", "shop", "--noinput"],
            check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
        assert "Ran 1 test" in run.stderr
        assert server.execute("SELECT datname FROM pg_database WHERE datname = %s", [name]).fetchall() == []
    finally:
        server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        server.close()


@pytest.mark.parametrize(("interval", "ttl"), [(0.2, 5.0), (1.0, 5.0), (10.0, 50.0)])
def test_a_report_counts_for_five_intervals_and_never_less_than_five_seconds(interval: float, ttl: float) -> None:
    """README and docs/admin.md: a process that stops publishing stops counting within about five
    publishing intervals (5 s by default): the report's lifetime, which each round renews."""
    assert Publisher(interval=interval).heartbeat_ttl == ttl


_CALLS_BILLING_WITH_DATABASE = """
import time
from django.test import TestCase
from django_aio_request import clients, get
from django_aio_request.testing import force_breaker

class Billing(TestCase):
    def test_billing_is_called(self):
        with clients["billing"].request(get("x")) as response:
            self.assertEqual(response.status, 489)  # port 9 refuses
        with force_breaker("billing", "open"):
            with clients["billing"].request(get("x")) as response:
                self.assertEqual(response.status, 502)
        time.sleep(0.5)  # rounds publish meanwhile
"""


def test_a_test_run_on_postgresql_writes_nothing_into_the_real_database_and_ends_without_a_warning(
    tmp_path: Path,
) -> None:
    """At the end of a test run Django drops the test database and then names the real one again in
    the settings every connection shares. A publisher round that found the test database's name and
    connected once the real name was back wrote the tests' breakers into the real database (4 and 5
    of 6 runs of manage.py test at a 0.1 s publishing interval, here); one that connected in between
    warned that the state "cannot be published" (database "test_..." does not exist), an outage
    that never was (a review: 13 of 23 runs; under pytest, with a project's stream handler, a logging
    error's traceback too)."""
    import psycopg
    from django.conf import settings

    from tests.support.postgres import ALIAS, unreachable

    why = unreachable()
    assert why is None, why
    pg = settings.DATABASES[ALIAS]
    real = f"aio_end_{uuid.uuid4().hex[:10]}"
    database = {key: pg[key] for key in ("USER", "PASSWORD", "HOST", "PORT")}
    database.update(ENGINE="django.db.backends.postgresql", NAME=real)
    env = write_project(tmp_path, repr({"default": database}), aio_request='"CIRCUIT_BREAKER_PUBLISH_INTERVAL": 0.1, ')
    (tmp_path / "test_billing.py").write_text(_CALLS_BILLING_WITH_DATABASE)
    admin: dict[str, Any] = {"host": pg["HOST"] or None, "port": pg["PORT"] or None, "user": pg["USER"] or None}
    admin.update(dbname=pg["NAME"], password=pg["PASSWORD"] or None)
    with psycopg.connect(**admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{real}"')
    try:
        django = [sys.executable, "-m", "django"]
        subprocess.run([*django, "migrate", "-v0"], cwd=tmp_path, env=env, check=True, timeout=120)
        warned = []
        for _ in range(4):
            done = subprocess.run(
                [*django, "test", "-v0", "--noinput", "test_billing"],
                check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            warned += [line for line in done.stderr.splitlines() if "circuit breaker state" in line]
        with psycopg.connect(**{**admin, "dbname": real}) as connection:
            reports = connection.execute("SELECT count(*) FROM django_aio_request_breakerreport").fetchone()
            transitions = connection.execute("SELECT count(*) FROM django_aio_request_breakertransition").fetchone()
    finally:
        with psycopg.connect(**admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{real}"')
    assert (reports, transitions) == ((0,), (0,))
    assert warned == []


_ODD_DATABASES = {
    # values worked out when read, as a rotating password's token is
    "lazy": """
class Entry(dict):
    def __getitem__(self, key):
        value = super().__getitem__(key)
        return value() if callable(value) else value

    def get(self, key, default=None):
        return self[key] if key in self else default

DATABASES = {"default": Entry(ENGINE="django.db.backends.sqlite3", NAME=lambda: "real.sqlite3")}
""",
    # a subclass whose __new__ takes an argument
    "made with an argument": """
class Entry(dict):
    def __new__(cls, source):
        return super().__new__(cls)

    def __init__(self, source):
        super().__init__(source)

DATABASES = {"default": Entry({"ENGINE": "django.db.backends.sqlite3", "NAME": "real.sqlite3"})}
""",
    # a subclass that refuses items set once made (Django's setdefault, C-level, still works)
    "frozen": """
class Entry(dict):
    def __setitem__(self, key, value):
        raise TypeError("frozen settings")

DATABASES = {"default": Entry(ENGINE="django.db.backends.sqlite3", NAME="real.sqlite3")}
""",
    # a subclass that boxes what is set and unboxes what is read
    "boxing": """
class Box:
    def __init__(self, value):
        self.value = value

class Entry(dict):
    def __init__(self, **values):
        super().__init__()
        for key, value in values.items():
            self[key] = value

    def __setitem__(self, key, value):
        super().__setitem__(key, Box(value))

    def __getitem__(self, key):
        value = super().__getitem__(key)
        return value.value if isinstance(value, Box) else value

    def get(self, key, default=None):
        return self[key] if key in self else default

DATABASES = {"default": Entry(ENGINE="django.db.backends.sqlite3", NAME="real.sqlite3")}
""",
}
_PUBLISHES = """
import time
import django
django.setup()
from django_aio_request import clients, get
from django_aio_request.models import BreakerReport
with clients["billing"].request(get("x")) as response:
    assert response.status == 489, response.status  # port 9 refuses
end = time.monotonic() + 10
while not BreakerReport.objects.exists() and time.monotonic() < end:
    time.sleep(0.1)
print(BreakerReport.objects.count())
"""


@pytest.mark.parametrize("kind", list(_ODD_DATABASES))
def test_a_database_entry_of_a_dict_subclass_is_published_to(tmp_path: Path, kind: str) -> None:
    """The publisher's rounds connect on a copy of a database's settings (_pin), each value read as
    Django reads it. Made with dict(), the copy held a subclass's raw values (a password worked out
    when read: every round of a real process failed, "object of type 'function' has no len()");
    with copy.copy(), a subclass made anew through its own __new__ and __setitem__ failed where they
    take arguments, refuse or wrap (a review each; Django's own queries worked)."""
    (tmp_path / "lazy_databases.py").write_text(_ODD_DATABASES[kind])
    env = write_project(tmp_path, "__import__('lazy_databases').DATABASES")
    django = [sys.executable, "-m", "django"]
    subprocess.run([*django, "migrate", "-v0"], cwd=tmp_path, env=env, check=True, timeout=120)
    done = subprocess.run(
        [sys.executable, "-c", _PUBLISHES], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1", done.stderr
    assert "cannot be published" not in done.stderr
