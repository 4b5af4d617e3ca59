"""``manage.py check`` and ``migrate`` refuse (django_aio_request.E020) a database the app's tables
would be migrated to that is neither SQLite nor PostgreSQL, before ``migrate`` changes anything.

On MariaDB, ``check`` passed, and ``migrate`` applied 0001, failed at 0002's view with a traceback
(``||`` is OR in MySQL's dialect, and ``DOUBLE PRECISION`` no type ``CAST`` takes) and left the
migrations of the apps after it (sessions) unapplied. Run against the MariaDB of the machine
(127.0.0.1:3306, root) through PyMySQL, as a project using MySQL connects.
"""

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conf.test_settings_checks import manage
from tests.support.mariadb import HOST, PORT, require_mariadb


@pytest.fixture
def mariadb_database() -> Iterator[str]:
    """A database of its own on the machine's MariaDB, dropped after the test."""
    require_mariadb()
    import pymysql

    name = f"aio_request_e020_{uuid.uuid4().hex[:8]}"
    server = pymysql.connect(host=HOST, port=PORT, user="root", autocommit=True)
    with contextlib.closing(server):
        server.cursor().execute(f"CREATE DATABASE {name}")
        try:
            yield name
        finally:
            server.cursor().execute(f"DROP DATABASE {name}")
            server.cursor().execute(f"DROP DATABASE IF EXISTS test_{name}")  # what manage.py test left


def _tables(name: str) -> list[str]:
    import pymysql

    with contextlib.closing(pymysql.connect(host=HOST, port=PORT, user="root", database=name)) as db:
        cursor = db.cursor()
        cursor.execute("SHOW TABLES")
        return sorted(row[0] for row in cursor.fetchall())


def _settings(name: str, router: bool) -> str:
    return f"""
import pymysql
pymysql.install_as_MySQLdb()
from settings.test import *
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "django.contrib.sessions", "django_aio_request"]
ROOT_URLCONF = "bad_settings"
urlpatterns = []
DATABASES = {{
    "default": {{"ENGINE": "django.db.backends.mysql", "NAME": {name!r}, "HOST": "127.0.0.1", "PORT": "3306",
                 "USER": "root"}},
    "breakers": {{"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
}}
AIO_REQUEST = {{"CLIENTS": {{"billing": {{"ENDPOINT": "http://127.0.0.1:9/"}}}}}}
DATABASE_ROUTERS = {["tests.conf.test_database_vendor_check.BreakersElsewhere"] if router else []!r}
"""


class BreakersElsewhere:
    """Sends django_aio_request's tables to the "breakers" database, as the hint says."""

    def db_for_read(self, model: type, **hints: object) -> str | None:
        return "breakers" if model._meta.app_label == "django_aio_request" else None  # type: ignore[attr-defined]

    db_for_write = db_for_read

    def allow_migrate(self, db: str, app_label: str, **hints: object) -> bool:
        return (db == "breakers") == (app_label == "django_aio_request")


def test_migrate_on_mariadb_stops_before_changing_anything_with_e020(tmp_path: Path, mariadb_database: str) -> None:
    checked = manage(tmp_path, "check", settings=_settings(mariadb_database, router=False))
    assert checked.returncode == 1, checked.stderr
    assert "settings.DATABASES['default']: (django_aio_request.E020) settings.DATABASES['default'] is mysql" in (
        checked.stderr
    )
    assert "Traceback" not in checked.stderr
    migrated = manage(tmp_path, "migrate", settings=_settings(mariadb_database, router=False))
    assert migrated.returncode == 1, migrated.stdout + migrated.stderr
    assert "(django_aio_request.E020)" in migrated.stderr
    assert "Traceback" not in migrated.stderr
    assert _tables(mariadb_database) == []  # nothing half applied


def test_the_app_s_tables_routed_to_a_supported_database_migrate_beside_mariadb(
    tmp_path: Path, mariadb_database: str
) -> None:
    migrated = manage(tmp_path, "migrate", "-v0", settings=_settings(mariadb_database, router=True))
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    assert "django_session" in _tables(mariadb_database)
    assert not [table for table in _tables(mariadb_database) if table.startswith("django_aio_request")]


def test_a_mariadb_database_the_app_s_tables_do_not_go_to_is_no_error(tmp_path: Path, mariadb_database: str) -> None:
    """A legacy MySQL alias beside the project's SQLite or PostgreSQL: E020 judged every alias and
    stopped check, migrate and runserver; it judges where the app's rows go, and what a command
    names (migrate --database)."""
    legacy = f"""
import pymysql
pymysql.install_as_MySQLdb()
from settings.test import *
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "django_aio_request"]
ROOT_URLCONF = "bad_settings"
urlpatterns = []
DATABASES = {{
    "default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": {str(tmp_path / "default.sqlite3")!r}}},
    "legacy": {{"ENGINE": "django.db.backends.mysql", "NAME": {mariadb_database!r}, "HOST": "127.0.0.1",
                "PORT": "3306", "USER": "root"}},
}}
AIO_REQUEST = {{"CLIENTS": {{"billing": {{"ENDPOINT": "http://127.0.0.1:9/"}}}}}}
"""
    checked = manage(tmp_path, "check", settings=legacy)
    assert checked.returncode == 0, checked.stderr
    migrated = manage(tmp_path, "migrate", "-v0", settings=legacy)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    elsewhere = manage(tmp_path, "migrate", "--database", "legacy", settings=legacy)
    assert elsewhere.returncode == 1, elsewhere.stdout + elsewhere.stderr
    assert "settings.DATABASES['legacy']: (django_aio_request.E020)" in elsewhere.stderr
    assert _tables(mariadb_database) == []


def test_no_database_at_all_is_no_error(tmp_path: Path) -> None:
    """DATABASES = {}: the app used for its clients only (Django's dummy backend, vendor "unknown")."""
    nothing = """
from settings.test import *
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "django_aio_request"]
ROOT_URLCONF = "bad_settings"
urlpatterns = []
DATABASES = {}
AIO_REQUEST = {"CLIENTS": {"billing": {"ENDPOINT": "http://127.0.0.1:9/"}}}
"""
    checked = manage(tmp_path, "check", settings=nothing)
    assert checked.returncode == 0, checked.stderr


def test_manage_py_test_on_mariadb_stops_with_e020_before_making_a_table(tmp_path: Path, mariadb_database: str) -> None:
    """Django's test runner migrates its test databases before it runs the checks: on MariaDB it
    made 0001's tables and failed at 0002's view with MariaDB's syntax error, E020 never shown."""
    (tmp_path / "test_with_db.py").write_text(
        "from django.test import TestCase\n\nclass WithDatabase(TestCase):\n    def test_it(self):\n        pass\n"
    )
    tested = manage(tmp_path, "test", "--noinput", "test_with_db", settings=_settings(mariadb_database, router=False))
    assert tested.returncode != 0, tested.stdout + tested.stderr
    assert "django_aio_request.E020: database 'default' is mysql" in tested.stderr
    assert "You have an error in your SQL syntax" not in tested.stderr
    assert not [table for table in _tables(f"test_{mariadb_database}") if table.startswith("django_aio_request")]
