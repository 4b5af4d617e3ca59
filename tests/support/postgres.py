"""The PostgreSQL server behind the ``postgres`` alias (settings.test, AIO_REQUEST_TEST_POSTGRES_URL).

Tests that need it say so with ``@pytest.mark.django_db(databases=["postgres"])``. When the
server cannot be reached they are skipped with the reason, or, with ``CI=true``, they fail: CI
must run them. The alias is then dropped from the settings before pytest-django sets up the test
databases, so the other database tests still run. conftest.py calls the two hooks below.
"""

import contextlib
import functools
import os
from collections.abc import Iterator

import pytest

ALIAS = "postgres"
URL_ENV = "AIO_REQUEST_TEST_POSTGRES_URL"
_REQUIRED = pytest.StashKey[str]()


def uses_postgres(item: pytest.Item) -> bool:
    marker = item.get_closest_marker("django_db")
    databases = marker.kwargs.get("databases") if marker is not None else None
    return databases == "__all__" or (databases is not None and ALIAS in databases)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@functools.cache
def unreachable() -> str | None:
    """Why the server cannot be used, or None when it answers."""
    from django.conf import settings

    config = settings.DATABASES.get(ALIAS)
    if config is None:
        return f"{URL_ENV} is empty: no PostgreSQL server for the tests"
    where = f"{config['USER'] or '(default user)'}@{config['HOST'] or 'localhost'}:{config['PORT'] or 5432}"
    where += f"/{config['NAME']}"
    hint = f"start it or set {URL_ENV}"
    try:
        import psycopg
    except ImportError:
        return f"psycopg is not installed (pip install -e '.[test]'), needed for PostgreSQL at {where}"
    try:
        psycopg.connect(
            dbname=str(config["NAME"]),
            user=str(config["USER"]) or None,
            password=str(config["PASSWORD"]) or None,
            host=str(config["HOST"]) or None,
            port=str(config["PORT"]) or None,
            connect_timeout=3,
        ).close()
    except psycopg.Error as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"PostgreSQL not reachable at {where} ({detail}); {hint}"
    return None


def collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip (or, with CI=true, fail) the tests that need the server when it cannot be reached."""
    needing = [item for item in items if uses_postgres(item)]
    if not needing:
        return
    reason = unreachable()
    if reason is None:
        return
    from django.conf import settings

    settings.DATABASES.pop(ALIAS, None)  # pytest-django sets up only the aliases that exist
    for item in needing:
        if in_ci():
            item.stash[_REQUIRED] = reason
        else:
            item.add_marker(pytest.mark.skip(reason=reason))


def runtest_setup(item: pytest.Item) -> None:
    reason = item.stash.get(_REQUIRED, None)
    if reason is not None:
        pytest.fail(f"{reason} (CI=true: the PostgreSQL tests must run, not be skipped)", pytrace=False)


@contextlib.contextmanager
def locked(table: str, mode: str) -> Iterator[None]:
    """Another session of the test database of the "postgres" alias holding ``LOCK TABLE table IN mode MODE``
    (SHARE: what a plain ``CREATE INDEX`` takes; ACCESS EXCLUSIVE: an ``ALTER TABLE``) until the block ends."""
    import psycopg
    from django.db import connections

    reached = connections[ALIAS].settings_dict
    with psycopg.connect(
        dbname=reached["NAME"], user=reached["USER"] or None, password=reached["PASSWORD"] or None,
        host=reached["HOST"] or None, port=reached["PORT"] or None,
    ) as other:  # fmt: skip
        other.execute(f"LOCK TABLE {table} IN {mode} MODE")
        try:
            yield
        finally:
            other.rollback()
