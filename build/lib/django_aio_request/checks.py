"""System checks: ``manage.py check`` reports every problem of ``settings.AIO_REQUEST``.

Each problem is one message whose id names its kind (``django_aio_request.E001`` unknown key, ...:
``conf/reader.py`` lists them); the message names the client and key, the hint what is allowed.
Reading the setting never raises here: the checks exist to report bad settings, not to crash on them.
"""

import os
import urllib.parse
from typing import Any

from django.conf import settings
from django.core import checks

from django_aio_request.conf.reader import UNEXPECTED
from django_aio_request.conf.schema import SETTING, read_settings

#: The ids of the checks of other settings (those of AIO_REQUEST's own: ``conf/reader.py``'s CODES).
CACHE_WITHOUT_TIMEOUTS = "W010"
DATABASE_WITHOUT_CONNECT_TIMEOUT = "W011"
CODES = {
    CACHE_WITHOUT_TIMEOUTS: "the breakers' shared cache has no socket timeouts",
    DATABASE_WITHOUT_CONNECT_TIMEOUT: "queries bounded by the deadline, connecting not",
}


@checks.register("django_aio_request")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Report every problem in ``settings.AIO_REQUEST`` (``manage.py check --tag django_aio_request``)."""
    try:
        _, problems = read_settings(getattr(settings, SETTING, None))
    except Exception as error:
        return [
            checks.Error(
                f"{SETTING} could not be read: {type(error).__name__}: {error}",
                hint="please report this with the setting's value: the reader should have named the problem",
                obj=f"settings.{SETTING}",
                id=f"django_aio_request.{UNEXPECTED}",
            )
        ]
    return [
        (checks.Warning if problem.warning else checks.Error)(
            f"{SETTING}{problem.path} {problem.message}",
            hint=problem.hint,
            obj=f"settings.{SETTING}",
            id=f"django_aio_request.{problem.code}",
        )
        for problem in problems
    ]


#: Backends that talk to a server over a socket, with the OPTIONS keys of their socket timeouts.
#: Without them the client library waits for ever on a server that stops answering.
_SOCKET_TIMEOUT_OPTIONS = {
    "django.core.cache.backends.redis.RedisCache": ("socket_timeout", "socket_connect_timeout"),
    "django_redis.cache.RedisCache": ("SOCKET_TIMEOUT", "SOCKET_CONNECT_TIMEOUT"),
    "django.core.cache.backends.memcached.PyMemcacheCache": ("timeout", "connect_timeout"),
}


def _in_every_redis_url(location: object) -> set[str]:
    """The query parameters every ``redis://`` URL of a cache's LOCATION sets (redis-py reads
    ``?socket_timeout=1&socket_connect_timeout=1`` as those options); LOCATION is a URL, several
    separated by commas, or a list of them."""
    urls = location.split(",") if isinstance(location, str) else location
    if not isinstance(urls, list | tuple) or not urls:
        return set()
    found: set[str] | None = None
    for url in urls:
        if not isinstance(url, str):
            return set()
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(url.strip()).query)
        named = {name.lower() for name, values in query.items() if values and values[-1].strip()}
        found = named if found is None else found & named
    return found or set()


def _bounds_connecting(value: object) -> bool:
    """Whether a ``connect_timeout`` (or PGCONNECT_TIMEOUT) bounds opening a connection: libpq and
    psycopg take its whole seconds (``int(float(value))``) and wait for ever (psycopg: 130 s) for
    0 or less, so ``0.5``, ``"00"`` and ``-1`` do not."""
    try:
        return int(float(str(value).strip())) >= 1
    except (ValueError, OverflowError):
        return False


@checks.register("django_aio_request")
def check_breaker_cache_timeouts(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Warn when the breaker's shared cache (``AIO_REQUEST["CIRCUIT_BREAKER_STATE"]``) has no socket
    timeouts: no call waits for it, but a hung connection stops the sharing of breaker state until
    the process restarts. Never raises, whatever the settings hold (check_settings reports those)."""
    setting = getattr(settings, SETTING, None)
    alias = setting.get("CIRCUIT_BREAKER_STATE") if isinstance(setting, dict) else None
    caches = getattr(settings, "CACHES", None)
    if not isinstance(alias, str) or not isinstance(caches, dict) or not isinstance(caches.get(alias), dict):
        return []
    backend = caches[alias].get("BACKEND")
    names = _SOCKET_TIMEOUT_OPTIONS.get(backend) if isinstance(backend, str) else None
    if names is None:
        return []
    options = caches[alias].get("OPTIONS")
    options = options if isinstance(options, dict) else {}
    in_urls = _in_every_redis_url(caches[alias].get("LOCATION")) if "redis" in backend.lower() else set()
    missing = [name for name in names if options.get(name) is None and name.lower() not in in_urls]
    if not missing:
        return []
    return [
        checks.Warning(
            f"settings.CACHES[{alias!r}], the circuit breakers' shared state, has no {' and no '.join(missing)}:"
            " a cache server that stops answering (blackholed, frozen) hangs its connection for ever",
            hint=f"set OPTIONS {', '.join(f'{name!r}' for name in names)} to a few seconds, e.g. "
            + ", ".join(f"{name!r}: 1.0" for name in names),
            obj=f"settings.CACHES[{alias!r}]",
            id=f"django_aio_request.{CACHE_WITHOUT_TIMEOUTS}",
        )
    ]


@checks.register("django_aio_request")
def check_database_connect_timeout(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Warn when queries are bounded by the deadline (``DATABASE_STATEMENT_TIMEOUT``) but opening a
    PostgreSQL connection is not: libpq waits for a server that accepts and never answers as long
    as the kernel keeps the connection (no ``connect_timeout`` by default), and a request that has
    to connect first is held past its deadline. Never raises, whatever the settings hold."""
    setting = getattr(settings, SETTING, None)
    databases = getattr(settings, "DATABASES", None)
    if not isinstance(setting, dict) or setting.get("DATABASE_STATEMENT_TIMEOUT") is not True:
        return []
    if not isinstance(databases, dict) or _bounds_connecting(os.environ.get("PGCONNECT_TIMEOUT", "0")):
        return []
    found: list[checks.CheckMessage] = []
    for alias, database in databases.items():
        engine = str(database.get("ENGINE", "")) if isinstance(database, dict) else ""
        if "postgresql" not in engine and "postgis" not in engine:  # PostGIS's queries are bounded too
            continue
        options = database.get("OPTIONS")
        timeout = options.get("connect_timeout") if isinstance(options, dict) else None
        if timeout is not None and _bounds_connecting(timeout):
            continue
        found.append(
            checks.Warning(
                f"settings.DATABASES[{alias!r}] has no connect_timeout: DATABASE_STATEMENT_TIMEOUT bounds its"
                " queries by the request's deadline, but not the opening of a connection, which waits for a"
                " server that accepts and never answers for as long as the kernel keeps trying",
                hint="set OPTIONS {'connect_timeout': 2} (whole seconds, 2 at least: libpq reads 1 as 2; or"
                " PGCONNECT_TIMEOUT in the environment),"
                " and CONN_MAX_AGE so that few requests connect at all",
                obj=f"settings.DATABASES[{alias!r}]",
                id=f"django_aio_request.{DATABASE_WITHOUT_CONNECT_TIMEOUT}",
            )
        )
    return found
