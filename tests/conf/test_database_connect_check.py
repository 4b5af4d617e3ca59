"""``manage.py check`` warns (django_aio_request.W011) when queries are bounded by the deadline but
opening a PostgreSQL connection is not, and never crashes on the settings it looks at."""

import os
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

from django_aio_request.checks import (
    check_database_connect_timeout,
    check_pool_health_checks,
    check_psycopg2_cancel,
    check_unbounded_databases,
)
from tests.conf.test_settings_checks import manage
from tests.support.loopback import silent_listener

ROOT = Path(__file__).resolve().parents[2]
PG = "django.db.backends.postgresql"
pytestmark = pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
ON = {"DATABASE_STATEMENT_TIMEOUT": True}


def _ids(databases: Any, aio_request: Any) -> list[str]:
    with override_settings(DATABASES=databases, AIO_REQUEST=aio_request):
        return [message.id for message in check_database_connect_timeout() if message.id is not None]


@pytest.mark.parametrize(
    ("options", "warns"),
    [
        (None, True),
        ({}, True),
        ({"connect_timeout": 0}, True),  # libpq reads 0 as no limit
        ({"connect_timeout": "0"}, True),
        ({"connect_timeout": 2}, False),
        ({"connect_timeout": "2"}, False),
        # Whole seconds, and 0 or less waits for ever: none of these bounds connecting.
        ({"connect_timeout": 0.5}, True),
        ({"connect_timeout": "0.9"}, True),
        ({"connect_timeout": "00"}, True),
        ({"connect_timeout": -1}, True),
        ({"connect_timeout": "soon"}, True),
        ({"connect_timeout": "1.9"}, False),
        # Longer than the longest deadline a request may have (MAX_TIMEOUT, 60 s): no bound it would
        # notice (1e9 passed, and psycopg waited on a server that never answered; a review).
        ({"connect_timeout": 60}, False),
        ({"connect_timeout": 61}, True),
        ({"connect_timeout": 1e9}, True),
        ({"connect_timeout": "1e300"}, True),
    ],
)
def test_a_postgresql_database_without_connect_timeout_warns(options: Any, warns: bool) -> None:
    database: dict[str, Any] = {"ENGINE": PG, "NAME": "shop"}
    if options is not None:
        database["OPTIONS"] = options
    assert _ids({"default": database}, ON) == (["django_aio_request.W011"] if warns else [])


def test_a_connect_timeout_in_options_that_are_any_mapping_counts() -> None:
    """OPTIONS (or DATABASES, or an entry) given as a read-only mapping: Django and psycopg connect with
    its connect_timeout, and W011 said there was none."""
    options = types.MappingProxyType({"connect_timeout": 5})
    database = types.MappingProxyType({"ENGINE": PG, "NAME": "shop", "OPTIONS": options})
    assert _ids({"default": {"ENGINE": PG, "NAME": "shop", "OPTIONS": options}}, ON) == []
    assert _ids(types.MappingProxyType({"default": database}), ON) == []
    bare = types.MappingProxyType({"default": types.MappingProxyType({"ENGINE": PG, "NAME": "shop"})})
    assert _ids(bare, ON) == ["django_aio_request.W011"]


def test_a_connect_timeout_is_judged_by_the_max_timeout_set() -> None:
    database = {"ENGINE": PG, "NAME": "shop", "OPTIONS": {"connect_timeout": 90}}
    assert _ids({"default": database}, ON) == ["django_aio_request.W011"]
    assert _ids({"default": database}, {**ON, "MAX_TIMEOUT": 120}) == []


def test_only_where_the_bound_is_on_and_not_with_pgconnect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    bare = {"default": {"ENGINE": PG, "NAME": "shop"}}
    assert _ids(bare, {}) == []
    assert _ids(bare, {"DATABASE_STATEMENT_TIMEOUT": False}) == []
    assert _ids({"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}, ON) == []
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "-1")  # waits for ever, as 0 does
    assert _ids(bare, ON) == ["django_aio_request.W011"]
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "3")
    assert _ids(bare, ON) == []


@pytest.mark.parametrize("options", [{"connect_timeout": 0}, {"connect_timeout": "0"}, {"connect_timeout": -1}])
def test_pgconnect_timeout_does_not_hide_a_connect_timeout_in_options_that_waits_for_ever(
    monkeypatch: pytest.MonkeyPatch, options: dict[str, Any]
) -> None:
    """libpq and psycopg use OPTIONS' connect_timeout, even 0, over PGCONNECT_TIMEOUT (psycopg's
    conninfo get_param() reads the environment only for a parameter not given): the environment
    bounds only the databases without one, and each database is judged on its own."""
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "5")
    unbounded = {"ENGINE": PG, "NAME": "shop", "OPTIONS": options}
    from_environment = {"ENGINE": PG, "NAME": "stock"}
    given_none = {"ENGINE": PG, "NAME": "stock", "OPTIONS": {"connect_timeout": None}}  # psycopg drops a None
    with override_settings(
        DATABASES={"default": unbounded, "stock": from_environment, "none": given_none}, AIO_REQUEST=ON
    ):
        found = check_database_connect_timeout()
    assert [(message.id, message.obj) for message in found] == [
        ("django_aio_request.W011", "settings.DATABASES['default']")
    ]
    assert f"has connect_timeout {options['connect_timeout']!r}, which does not bound connecting" in found[0].msg
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "0")
    bounded = {"ENGINE": PG, "NAME": "shop", "OPTIONS": {"connect_timeout": 2}}  # OPTIONS win this way too
    assert _ids({"default": bounded}, ON) == []


def test_an_aio_request_that_is_any_mapping_is_read_as_a_dict() -> None:
    """The settings reader accepts any mapping for AIO_REQUEST (a types.MappingProxyType too): so does the check."""
    bare = {"default": {"ENGINE": PG, "NAME": "shop"}}
    assert _ids(bare, types.MappingProxyType(ON)) == ["django_aio_request.W011"]
    assert _ids(bare, types.MappingProxyType({"DATABASE_STATEMENT_TIMEOUT": False})) == []


def test_a_postgis_database_is_bounded_so_it_is_warned_about_too() -> None:
    postgis = {"default": {"ENGINE": "django.contrib.gis.db.backends.postgis", "NAME": "maps"}}
    assert _ids(postgis, ON) == ["django_aio_request.W011"]


@pytest.mark.parametrize(
    "databases",
    [None, "junk", {"default": "junk"}, {"default": {"ENGINE": 3}}, {"default": {"ENGINE": PG, "OPTIONS": "junk"}}],
)
def test_settings_it_cannot_read_are_not_its_business(databases: Any) -> None:
    with override_settings(DATABASES=databases if isinstance(databases, dict) else {}, AIO_REQUEST=ON):
        if not isinstance(databases, dict):
            from django.conf import settings

            settings.DATABASES = databases  # what a broken settings module holds
        check_database_connect_timeout()  # no exception


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a frozen database server)."""
    with silent_listener() as port:
        yield port


def test_the_warning_s_advice_bounds_a_connection_to_a_silent_server(silent_server: int) -> None:
    """What the warning is about, on the real driver: without connect_timeout, connecting to a server
    that accepts and never answers outlasts any deadline; with it, it ends then."""
    import psycopg

    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(host="127.0.0.1", port=silent_server, user="x", dbname="x", connect_timeout=2)
    assert time.monotonic() - started < 2.5  # 2 s is libpq's smallest: a 1 waits 2 s too
    connect = f"import psycopg; psycopg.connect(host='127.0.0.1', port={silent_server}, user='x', dbname='x')"
    environment = {k: v for k, v in os.environ.items() if k != "PGCONNECT_TIMEOUT"}
    with pytest.raises(subprocess.TimeoutExpired):  # still waiting 3 s later
        subprocess.run([sys.executable, "-c", connect], env=environment, timeout=3, capture_output=True, check=False)


def _check_with_the_bound_on(tmp_path: Path, database: str) -> subprocess.CompletedProcess[str]:
    """``manage.py check`` with the test settings, ``database`` (a dict's source) as the default
    database and DATABASE_STATEMENT_TIMEOUT on; it passed (warnings do not fail it)."""
    settings = (
        "from settings.test import *\n"
        f"DATABASES = {{'default': {database}}}\n"
        "AIO_REQUEST = {**AIO_REQUEST, 'DATABASE_STATEMENT_TIMEOUT': True}\n"
    )
    done = manage(tmp_path, "check", settings=settings)
    assert done.returncode == 0, done.stderr
    return done


def test_manage_py_check_shows_the_warning_and_still_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    done = _check_with_the_bound_on(tmp_path, "{'ENGINE': 'django.db.backends.postgresql', 'NAME': 'shop'}")
    assert "(django_aio_request.W011) settings.DATABASES['default'] has no connect_timeout" in done.stderr


def _pool_ids(databases: Any, aio_request: Any) -> list[str]:
    with override_settings(DATABASES=databases, AIO_REQUEST=aio_request):
        return [message.id for message in check_pool_health_checks() if message.id is not None]


@pytest.mark.parametrize(
    ("pool", "health_checks", "engine", "warns"),
    [
        (True, True, PG, True),
        ({"min_size": 2, "max_size": 4}, True, "django.contrib.gis.db.backends.postgis", True),
        (True, False, PG, False),
        (False, True, PG, False),
        (None, True, PG, False),
        (True, True, "django.db.backends.sqlite3", False),
    ],
)
def test_the_pool_s_health_check_which_the_deadline_does_not_bound_is_warned_of(
    pool: Any, health_checks: bool, engine: str, warns: bool
) -> None:
    """Django's pool with CONN_HEALTH_CHECKS: the pool checks each connection it hands out, outside the
    bound, and a server that stopped answering held a request past 30 s at a 0.5 s deadline (a review)."""
    database: dict[str, Any] = {"ENGINE": engine, "NAME": "shop", "CONN_HEALTH_CHECKS": health_checks}
    if pool is not None:
        database["OPTIONS"] = {"pool": pool, "connect_timeout": 2}
    assert _pool_ids({"default": database}, ON) == (["django_aio_request.W013"] if warns else [])
    assert _pool_ids({"default": database}, {}) == []  # the bound off: nothing it would bound


def test_manage_py_check_shows_the_pool_warning_and_still_passes(tmp_path: Path) -> None:
    done = _check_with_the_bound_on(
        tmp_path,
        "{'ENGINE': 'django.db.backends.postgresql', 'NAME': 'shop',"
        " 'CONN_HEALTH_CHECKS': True, 'OPTIONS': {'pool': True, 'connect_timeout': 2}}",
    )
    assert "(django_aio_request.W013) settings.DATABASES['default'] uses Django's connection pool" in done.stderr
    assert "Traceback" not in done.stderr


def _unbounded_ids(databases: Any, aio_request: Any) -> list[str]:
    with override_settings(DATABASES=databases, AIO_REQUEST=aio_request):
        return [message.obj for message in check_unbounded_databases() if message.obj is not None]


def test_each_database_the_bound_cannot_bound_is_warned_of_when_it_is_on() -> None:
    """A SQLite or MariaDB query ran its whole length past the deadline (4 s, answered 200 at a 0.5 s
    deadline) while check said nothing, also where no database was PostgreSQL (a review)."""
    sqlite = {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
    postgres = {"ENGINE": PG, "NAME": "shop", "OPTIONS": {"connect_timeout": 2}}
    postgis = {"ENGINE": "django.contrib.gis.db.backends.postgis", "NAME": "maps"}
    assert _unbounded_ids({"default": sqlite}, ON) == ["settings.DATABASES['default']"]
    assert _unbounded_ids({"default": postgres, "legacy": sqlite, "maps": postgis}, ON) == [
        "settings.DATABASES['legacy']"
    ]
    assert _unbounded_ids({"default": sqlite}, {}) == []  # the bound off: nothing is promised
    assert _unbounded_ids({}, ON) == []  # the dummy backend: no queries
    # A backend that cannot be loaded is Django's own error to report, not a crash here.
    assert _unbounded_ids({"default": {"ENGINE": "no.such.backend"}}, ON) == []


def test_manage_py_check_warns_of_a_mariadb_database_beside_postgresql_and_still_passes(tmp_path: Path) -> None:
    """As a user runs it: MariaDB through PyMySQL (installed as MySQLdb, as such projects do)."""
    settings = (
        "import pymysql\npymysql.install_as_MySQLdb()\n"
        "from settings.test import *\n"
        "DATABASES = {'default': {'ENGINE': 'django.db.backends.postgresql', 'NAME': 'shop',"
        " 'OPTIONS': {'connect_timeout': 2}},"
        " 'legacy': {'ENGINE': 'django.db.backends.mysql', 'NAME': 'legacy', 'HOST': '127.0.0.1'}}\n"
        "AIO_REQUEST = {**AIO_REQUEST, 'DATABASE_STATEMENT_TIMEOUT': True}\n"
    )
    done = manage(tmp_path, "check", settings=settings)
    assert done.returncode == 0, done.stderr
    assert "(django_aio_request.W014) settings.DATABASES['legacy'] is mysql: DATABASE_STATEMENT_TIMEOUT" in (
        done.stderr
    )
    assert "settings.DATABASES['default'] is" not in done.stderr


def test_psycopg2_under_the_bound_is_warned_of(monkeypatch: pytest.MonkeyPatch) -> None:
    """psycopg2's cancel holds the interpreter's lock while it waits: a cancel request that got no
    answer froze the process, and gunicorn killed the worker at 30 s (a review). Which driver Django
    uses is psycopg_any.is_psycopg3 (psycopg 3 preferred when both are installed)."""
    from django.db.backends.postgresql import psycopg_any

    databases = {"default": {"ENGINE": PG, "NAME": "shop"}, "cache": {"ENGINE": "django.db.backends.sqlite3"}}
    with override_settings(DATABASES=databases, AIO_REQUEST=ON):
        assert check_psycopg2_cancel() == []  # psycopg 3, installed here
        monkeypatch.setattr(psycopg_any, "is_psycopg3", False)
        (warning,) = check_psycopg2_cancel()
        assert warning.id == "django_aio_request.W015"
        assert warning.obj == "settings.DATABASES['default']"
        assert "psycopg 3" in (warning.hint or "")
    with override_settings(DATABASES=databases, AIO_REQUEST={}):
        assert check_psycopg2_cancel() == []  # the bound off


def test_a_postgresql_backend_named_otherwise_is_judged_as_postgresql(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound tells PostgreSQL by the backend's vendor: a wrapper whose name says nothing of it
    (django-postgres-extra's ``psqlextra.backend``) is bounded, and was judged by no check: no W011
    without connect_timeout, no W015 under psycopg2 (a review)."""
    from django.db.backends.postgresql import psycopg_any

    databases = {"default": {"ENGINE": "tests.support.wrapped_postgres", "NAME": "shop"}}
    assert _ids(databases, ON) == ["django_aio_request.W011"]
    assert _unbounded_ids(databases, ON) == []  # PostgreSQL: bounded
    monkeypatch.setattr(psycopg_any, "is_psycopg3", False)
    with override_settings(DATABASES=databases, AIO_REQUEST=ON):
        assert [warning.id for warning in check_psycopg2_cancel()] == ["django_aio_request.W015"]
