"""The MariaDB server of the machine (127.0.0.1:3306, root without a password), reached through PyMySQL.

``require_mariadb()`` skips the calling test when the server cannot be reached, or, with ``CI=true``,
fails it: CI must run these tests (.ci/services.sh starts a server).
"""

import os

import pytest

HOST, PORT = "127.0.0.1", 3306


def unreachable() -> str | None:
    """Why the server cannot be used, or None when it answers."""
    try:
        import pymysql
    except ImportError:
        return "the pymysql package is not installed (pip install -e '.[test]'), needed for MariaDB"
    try:
        pymysql.connect(host=HOST, port=PORT, user="root", connect_timeout=2).close()
    except pymysql.MySQLError as error:
        return f"MariaDB not reachable at {HOST}:{PORT} as root ({error}); start it (.ci/services.sh)"
    return None


def require_mariadb() -> None:
    reason = unreachable()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the MariaDB tests must run, not be skipped)", pytrace=False)
    pytest.skip(reason)
