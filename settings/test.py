import os
import urllib.parse
from typing import Any

from settings.base import *  # noqa: F403

DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

AIO_REQUEST = {
    "SERVICE_NAME": "tests",
    "CLIENTS": {},
}

# A real PostgreSQL server for the tests that need one (@pytest.mark.django_db(databases=["postgres"])).
# pytest-django creates a test database on it (below). An empty URL leaves the alias out;
# tests/postgres.py skips those tests when the server is not reachable (fails them when CI=true).
POSTGRES_URL = os.environ.get("AIO_REQUEST_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
if POSTGRES_URL:
    _pg = urllib.parse.urlsplit(POSTGRES_URL)
    _name = urllib.parse.unquote(_pg.path.lstrip("/")) or "postgres"
    DATABASES["postgres"] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _name,
        "USER": urllib.parse.unquote(_pg.username or ""),
        "PASSWORD": urllib.parse.unquote(_pg.password or ""),
        "HOST": _pg.hostname or "",
        "PORT": str(_pg.port or ""),
        "TEST": {
            # One test database per test run (test_test_<pid>), so that runs at the same time on one
            # server do not drop each other's; pytest-django drops it at the end.
            "NAME": f"test_{_name}_{os.getpid()}",
            "DEPENDENCIES": [],  # created on its own, also when no test needs "default"
        },
    }

# A real Redis for the shared circuit breaker state (AIO_REQUEST["CIRCUIT_BREAKER_STATE"] = "shared").
# Only tests that use the "shared" alias connect; tests/redis_server.py skips them when it cannot be
# reached (fails them when CI=true). Short socket timeouts: an outage must not hang the tests.
REDIS_URL = os.environ.get("AIO_REQUEST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
_shared_cache: dict[str, Any] = {
    "BACKEND": "django.core.cache.backends.redis.RedisCache",
    "LOCATION": REDIS_URL,
    # One prefix per pytest-xdist worker (processes the tests start inherit the variable), so tests
    # running at the same time on one Redis never read each other's breakers.
    "KEY_PREFIX": f"aio-request-tests-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}",
    "OPTIONS": {"socket_timeout": 1.0, "socket_connect_timeout": 1.0},
}
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "shared": _shared_cache,
}
