"""System checks: ``manage.py check`` reports every problem of ``settings.AIO_REQUEST``.

Each problem is one message whose id names its kind (``django_aio_request.E001`` unknown key, ...:
``conf/reader.py`` lists them); the message names the client and key, the hint what is allowed.
Reading the setting never raises here: the checks exist to report bad settings, not to crash on them.
"""

import functools
import importlib
import inspect
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from django.conf import settings
from django.core import checks
from django.utils.functional import Promise
from django.utils.module_loading import import_string

from django_aio_request.conf.cache_backends import nearest_known
from django_aio_request.conf.current import misspelt_setting
from django_aio_request.conf.reader import BAD_IMPORT, LARGEST, UNEXPECTED, shown
from django_aio_request.conf.schema import DEFAULT_MAX_TIMEOUT, LOCAL_BREAKER_STATE, SETTING, read_settings
from django_aio_request.core.client_setup import error_text, holds_credentials
from django_aio_request.server.async_stack import HINT as ASYNC_STACK_HINT
from django_aio_request.server.async_stack import cancelling, sync_only_below, warning_text

#: The ids of the checks of other settings (those of AIO_REQUEST's own: ``conf/reader.py``'s CODES).
CACHE_WITHOUT_TIMEOUTS = "W010"
DATABASE_WITHOUT_CONNECT_TIMEOUT = "W011"
SYNC_MIDDLEWARE_BELOW = "W012"
POOL_HEALTH_CHECK_UNBOUNDED = "W013"
UNBOUNDED_DATABASE = "W014"
PSYCOPG2_CANCEL = "W015"
MISSPELT_SETTING = "W016"
UNSUPPORTED_DATABASE = "E020"  # E0xx below E020: AIO_REQUEST's own (conf/reader.py)
MIDDLEWARE_TWICE = "E021"
CODES = {
    CACHE_WITHOUT_TIMEOUTS: "the breakers' shared cache sets no socket timeouts of its own",
    DATABASE_WITHOUT_CONNECT_TIMEOUT: "queries bounded by the deadline, connecting not",
    SYNC_MIDDLEWARE_BELOW: "async views cannot be cancelled: sync-only middleware below AioRequestMiddleware",
    POOL_HEALTH_CHECK_UNBOUNDED: "queries bounded by the deadline, the connection pool's health check not",
    UNBOUNDED_DATABASE: "DATABASE_STATEMENT_TIMEOUT on, and a database it cannot bound (not PostgreSQL)",
    PSYCOPG2_CANCEL: "DATABASE_STATEMENT_TIMEOUT cancels through psycopg2, which holds the process while it waits",
    UNSUPPORTED_DATABASE: "the app's tables migrated to a database other than SQLite or PostgreSQL",
    MISSPELT_SETTING: "AIO_REQUEST is not set, and a setting spelt like it is",
    MIDDLEWARE_TWICE: "AioRequestMiddleware is in MIDDLEWARE more than once",
}
#: The databases the app's migrations are written for: its view of the breakers (0002, 0004) is SQL
#: both accept, and other backends' dialects refuse it (MySQL and MariaDB: ``||`` is OR there, and
#: ``DOUBLE PRECISION`` no type a ``CAST`` takes).
SUPPORTED_VENDORS = ("sqlite", "postgresql")


@checks.register("django_aio_request")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Report every problem in ``settings.AIO_REQUEST`` (``manage.py check --tag django_aio_request``)."""
    try:
        _, problems = read_settings(getattr(settings, SETTING, {}))
    except (Exception, SystemExit) as error:
        return [
            checks.Error(
                f"{SETTING} could not be read: {type(error).__name__}: {error_text(error)}",
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


def _never_raising(check: Callable[..., list[checks.CheckMessage]]) -> Callable[..., list[checks.CheckMessage]]:
    """``check``, reporting what it did not foresee as an error (E099) instead of raising: these checks
    read other settings (``CACHES``, ``DATABASES``) as users wrote them, and a value whose ``str()``
    or ``get()`` raised crashed ``manage.py check`` with a traceback (a review, 3 of 25 hostile cases)."""

    @functools.wraps(check)
    def checked(*args: Any, **kwargs: Any) -> list[checks.CheckMessage]:
        try:
            return check(*args, **kwargs)
        except Exception as error:
            return [
                checks.Error(
                    f"{check.__name__} could not read the settings it checks: {type(error).__name__}: {_text(error)}",
                    hint="a setting holds an object that fails when read as Django reads it",
                    id=f"django_aio_request.{UNEXPECTED}",
                )
            ]

    return checked


def _text(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:
        return "(its message could not be printed either)"


#: Backends that talk to a server over a socket, with the OPTIONS keys of their socket timeouts
#: (read, connect). pymemcache sets none by default: it waits for ever on a server that stops
#: answering; redis-py waits for ever before 8.0 and 5 s from 8.0 on (``redis_default_timeouts``).
_SOCKET_TIMEOUT_OPTIONS = {
    "django.core.cache.backends.redis.RedisCache": ("socket_timeout", "socket_connect_timeout"),
    "django_redis.cache.RedisCache": ("SOCKET_TIMEOUT", "SOCKET_CONNECT_TIMEOUT"),
    "django.core.cache.backends.memcached.PyMemcacheCache": ("timeout", "connect_timeout"),
}
#: Django's RedisCache hands OPTIONS to redis-py as they are, None included (django-redis drops a None).
_PASSES_NONE = "django.core.cache.backends.redis.RedisCache"
_DJANGO_REDIS = "django_redis.cache.RedisCache"


def redis_default_timeouts() -> tuple[float | None, float | None, str]:
    """The socket timeouts (read, connect) a redis-py ``Connection`` gets when none is given, and the
    installed redis-py's version: (None, None) before redis-py 8.0 (no bound), (5, 5) from 8.0 on.
    Read from ``Connection.__init__``'s defaults, as Django's RedisCache and django-redis build their
    pools (``ConnectionPool.from_url`` with the timeouts only if set)."""
    try:
        import redis
        import redis.connection
    except ImportError:  # the cache cannot work at all; its first use says so
        return None, None, "not installed"
    found: dict[str, Any] = {}
    for cls in redis.connection.Connection.__mro__:
        init = vars(cls).get("__init__")
        if init is None:
            continue
        try:
            parameters = inspect.signature(init).parameters
        except (TypeError, ValueError):
            continue
        for name in ("socket_timeout", "socket_connect_timeout"):
            if name in parameters and name not in found:
                found[name] = parameters[name].default
    read, connect = found.get("socket_timeout"), found.get("socket_connect_timeout")
    return (
        read if isinstance(read, int | float) else None,
        connect if isinstance(connect, int | float) else None,
        str(getattr(redis, "__version__", "?")),
    )


def _timeout_sources(
    backend: str, names: tuple[str, str], options: Mapping[str, Any], in_urls: set[str]
) -> dict[str, str]:
    """Where each socket timeout of the cache comes from: "set" (OPTIONS or every redis:// URL),
    "default" (redis-py's own, from 8.0 on) or "none" (no bound). redis-py bounds connecting by the
    read timeout when no connect timeout is given (before 8.0 always, from 8.0 on when it is None)."""
    read_name, connect_name = names
    if "memcached" in backend.lower():
        return {name: "set" if options.get(name) is not None else "none" for name in names}
    read_default, connect_default, _ = redis_default_timeouts()

    def given(name: str) -> bool:
        return _seconds(options.get(name)) or name.lower() in in_urls

    def none_passed(name: str) -> bool:  # None handed to redis-py, which then has no default to fall back on
        return backend == _PASSES_NONE and name in options and options[name] is None

    if given(read_name):
        read = "set"
    elif none_passed(read_name) or read_default is None:
        read = "none"
    else:
        read = "default"
    if given(connect_name):
        connect = "set"
    elif none_passed(connect_name) or connect_default is None:
        connect = read
    else:
        connect = "default"
    return {read_name: read, connect_name: connect}


def _seconds(value: object) -> bool:
    """Whether an OPTIONS timeout is one the cache client can use: a number of seconds above 0 and at
    most LARGEST (999,999,999), which ``socket.settimeout`` takes. A string ("0.2") fails every command
    with TypeError, 0 (or False) makes the socket non-blocking, inf or 1e10 fail every command with
    OverflowError (``timestamp out of range for platform time_t``), and so does NaN. True is taken:
    redis-py and pymemcache hand it to ``socket.settimeout``, which reads it as 1 s."""
    return isinstance(value, int | float) and 0 < value <= LARGEST


#: How each Redis backend splits a LOCATION string into its servers' URLs (the first is the primary,
#: which every write goes to): Django's RedisCache on ";" or "," (``re.split("[;,]", server)``),
#: django-redis on "," only (``DefaultClient``: ``server.split(",")``).
_LOCATION_SEPARATORS = {_PASSES_NONE: "[;,]", "django_redis.cache.RedisCache": ","}


def _url_queries(location: object, backend: str) -> list[dict[str, list[str]]]:
    """The query parameters of each ``redis://`` URL of a cache's LOCATION (a URL, several separated
    as ``backend`` separates them, or a list of them); [] when LOCATION is none of those or a URL
    cannot be parsed. Split on "," only, a LOCATION of Django's RedisCache with ";" read as one URL:
    ``redis://p/0;redis://r/0?socket_timeout=1&socket_connect_timeout=1`` had no warning, though
    the primary sets no timeouts, and the same with both URLs timed had a wrong one (its
    ``?socket_connect_timeout=1;redis://...`` "not a number")."""
    urls = _location_urls(location, backend)
    if urls is None:
        return []
    try:
        return [urllib.parse.parse_qs(urllib.parse.urlsplit(url.strip()).query) for url in urls]
    except ValueError:  # "redis://[::1:6379/0": redis-py cannot read it either; its first use says so
        return []


def _location_urls(location: object, backend: str) -> list[str] | None:
    """The URLs of a cache's LOCATION (a URL, several separated as ``backend`` separates them, or a
    list of them), as given; None when it is none of those."""
    urls = re.split(_LOCATION_SEPARATORS.get(backend, ","), location) if isinstance(location, str) else location
    # Any sequence, as Django's caches take one (a UserList was "no LOCATION redis can connect to").
    if (
        not isinstance(urls, Sequence)
        or isinstance(urls, bytes | bytearray)
        or not all(isinstance(url, str) for url in urls)
    ):
        return None
    return list(urls)


def _in_every_redis_url(location: object, backend: str) -> set[str]:
    """The query parameters every ``redis://`` URL of a cache's LOCATION sets (redis-py reads
    ``?socket_timeout=1&socket_connect_timeout=1`` as those options, in lower case only, its first
    value of each, and lets them replace the same options given in OPTIONS)."""
    found: set[str] | None = None
    for query in _url_queries(location, backend):
        named = {name for name, values in query.items() if values and values[0].strip()}
        found = named if found is None else found & named
    return found or set()


def _url_seconds(value: str) -> bool:
    """Whether a URL's timeout is one redis-py can use: it reads it with ``float()`` (a value that
    cannot be read fails the cache's first use), then as an OPTIONS value (:func:`_seconds`)."""
    try:
        return _seconds(float(value))
    except ValueError:
        return False


def _unusable_timeouts(names: tuple[str, str], options: Mapping[str, Any], location: object, backend: str) -> list[str]:
    """Timeouts the cache is given in a form its client cannot use: each one fails every command.

    With redis, a timeout in the LOCATION's URL replaces the one in OPTIONS (redis-py's
    ``ConnectionPool.from_url``): an OPTIONS value every URL replaces is never used, and the URL's
    own value is the one judged."""
    redis = "redis" in backend.lower()
    queries = _url_queries(location, backend) if redis else []
    replaced = _in_every_redis_url(location, backend) if redis else set()
    found = [
        f"OPTIONS[{name!r}] is {shown(options[name])}, not a number of seconds above 0 and at most {LARGEST:,}"
        for name in names
        if options.get(name) is not None and not _seconds(options[name]) and name.lower() not in replaced
    ]
    if redis:
        lower = {name.lower() for name in names}
        # A value is quoted only where the LOCATION holds no credentials: a password holding
        # "&socket_timeout=" was quoted as the value (a review).
        urls = _location_urls(location, backend) or []
        secret = (isinstance(location, str) and holds_credentials(location)) or any(map(holds_credentials, urls))
        found += sorted(
            {
                f"its LOCATION's ?{name}={'(left out)' if secret else values[0][:40]} is not a number of seconds"
                f" above 0 and at most {LARGEST:,}"
                for query in queries
                for name, values in query.items()
                if name in lower and values and values[0].strip() and not _url_seconds(values[0])
            }
        )
        spelt = {name for query in queries for name in query if name.lower() in lower} - lower
        found += [
            f"its LOCATION's ?{name}= is not a parameter redis-py reads (only {name.lower()})" for name in sorted(spelt)
        ]
    if backend == _PASSES_NONE:
        found += _options_redis_py_refuses(options, location)
    elif backend == _DJANGO_REDIS and (own := _django_redis_url_options(options)) is not None:
        # django-redis makes its pool with redis-py's ConnectionPool.from_url too: a URL's options
        # go to redis-py's connections as they do from Django's RedisCache (its own OPTIONS do not).
        taken, by_scheme = _redis_py_keywords()
        found += _url_options_refused(location, _DJANGO_REDIS, taken | own, by_scheme)
    return found


#: django-redis's connection factories whose pools are redis-py's ``ConnectionPool.from_url`` of each
#: URL (the Sentinel one after taking ``?is_master=`` out of it, for a Sentinel pool that also takes
#: ``?check_connection=``), and the URL options each takes besides redis-py's connection's.
_DJANGO_REDIS_FACTORIES = {
    "django_redis.pool.ConnectionFactory": frozenset(),
    # Its pool also takes ?ssl= and ?service_name= (redis-py's SentinelConnectionPool), and with ?ssl=
    # the TLS connection's options: taken whether or not ?ssl= is on (a review: W010 named them of a
    # Sentinel cache over TLS that worked).
    "django_redis.pool.SentinelConnectionFactory": frozenset({"is_master", "check_connection", "ssl", "service_name"}),
}
#: The pool class each of those factories sets itself when OPTIONS name none (``setdefault`` on the
#: OPTIONS in settings.CACHES, so a cache used before the check has it): the factory's own, judged.
_DJANGO_REDIS_OWN_POOLS = {
    "django_redis.pool.ConnectionFactory": frozenset({"redis.connection.ConnectionPool", "redis.ConnectionPool"}),
    "django_redis.pool.SentinelConnectionFactory": frozenset({"redis.sentinel.SentinelConnectionPool"}),
}


#: django-redis's own clients, all ``DefaultClient`` or its subclasses: named so, judged without
#: importing django-redis.
_DJANGO_REDIS_CLIENTS = frozenset(
    f"django_redis.client.{name}" for name in ("DefaultClient", "HerdClient", "ShardClient", "SentinelClient")
)


def _django_redis_url_options(options: Mapping[str, Any]) -> frozenset[str] | None:
    """The URL options django-redis takes itself, besides those of redis-py's connection, when its
    pools are made from each URL by one of its own connection factories (``_DJANGO_REDIS_FACTORIES``)
    for one of its own clients (``DefaultClient`` and its subclasses: Herd, Shard, Sentinel, a project's
    own); None when its pools may be made otherwise and its URL options are not judged: a pool or
    connection class of the user's, whose keywords may differ, another factory or client class, or
    one that cannot be imported (E008 says so where it can tell). Read as django-redis reads them: a
    ``CONNECTION_FACTORY`` of ``None`` or ``""`` falls back to ``DJANGO_REDIS_CONNECTION_FACTORY``.
    A ``CONNECTION_POOL_CLASS`` that is the factory's own (which it sets itself where none is named)
    is judged. Skipped at first for every factory and client class but the plain ones, a Sentinel
    cache's ``?retry=3`` that fails every command, and a project's own subclass of ``DefaultClient``'s,
    passed (a review); judged with the Sentinel factory's own options, its README's examples pass."""
    pool_kwargs = options.get("CONNECTION_POOL_KWARGS")
    if isinstance(pool_kwargs, Mapping) and "connection_class" in pool_kwargs:
        return None
    factory = options.get("CONNECTION_FACTORY") or getattr(settings, "DJANGO_REDIS_CONNECTION_FACTORY", None)
    factory = "django_redis.pool.ConnectionFactory" if factory is None else factory
    if not isinstance(factory, str) or factory not in _DJANGO_REDIS_FACTORIES:
        return None  # another factory, a subclass too: it may make its pools otherwise
    pool = options.get("CONNECTION_POOL_CLASS")
    if pool is not None and not (isinstance(pool, str) and pool in _DJANGO_REDIS_OWN_POOLS[factory]):
        return None
    client = options.get("CLIENT_CLASS") or "django_redis.client.DefaultClient"
    if not isinstance(client, str) or (
        client not in _DJANGO_REDIS_CLIENTS and not _is_subclass(client, "django_redis.client.DefaultClient")
    ):
        return None
    taken = _DJANGO_REDIS_FACTORIES[factory]
    if "ssl" in taken:
        _, by_scheme = _redis_py_keywords()
        taken |= _keywords(by_scheme["rediss"]) if by_scheme else set()
    return frozenset(taken)


def _is_subclass(path: str, base: str) -> bool:
    """Whether the class ``path`` names is the class ``base`` names or a subclass; False when either
    cannot be imported."""
    try:
        found, wanted = import_string(path), import_string(base)
    except (Exception, SystemExit):  # any failure to import: not judged
        return False
    return isinstance(found, type) and isinstance(wanted, type) and issubclass(found, wanted)


def _redis_py_keywords() -> tuple[set[str], dict[str, type]]:
    """The keywords of redis-py's pool and connection, and its connection class by URL scheme
    (empty when redis-py is not installed: E008 says so)."""
    try:
        import redis
        import redis.connection
    except ImportError:
        return set(), {}
    by_scheme = {"redis": redis.Connection, "rediss": redis.SSLConnection, "unix": redis.UnixDomainSocketConnection}
    return _keywords(redis.ConnectionPool) | _keywords(redis.connection.AbstractConnection), by_scheme


def _options_redis_py_refuses(options: Mapping[str, Any], location: object) -> list[str]:
    """OPTIONS of Django's ``RedisCache`` that redis-py takes no keyword for: Django hands them all to
    its connections, and every command then fails with ``TypeError`` (django-redis's capitals,
    ``SOCKET_TIMEOUT``, passed W010 as "no socket_timeout" a review). The keywords are those of
    redis-py's pool and of the connection class each URL's scheme makes, as installed (``ssl_*`` on
    a ``redis://`` URL fails too); a ``pool_class`` or ``connection_class`` of the user's may take
    others, and is not judged."""
    if "pool_class" in options or "connection_class" in options:
        return []
    redis_py_own, by_scheme = _redis_py_keywords()
    if not by_scheme:  # redis-py is not installed: E008 says so
        return []
    schemes = {_redis_scheme(url) for url in _location_urls(location, _PASSES_NONE) or []}
    taken = {"serializer", "pool_class", "parser_class"} | redis_py_own  # the first three: Django's RedisCacheClient's
    # Taken only if every URL's connection class takes it (each URL's pool gets the same OPTIONS).
    per_url = [_keywords(by_scheme[scheme]) for scheme in schemes if scheme is not None]
    everywhere = set.intersection(*per_url) if per_url else set().union(*map(_keywords, by_scheme.values()))
    taken |= everywhere
    known = taken | set().union(*map(_keywords, by_scheme.values()))
    lower = {name.lower(): name for name in known}
    refused = _url_options_refused(location, _PASSES_NONE, redis_py_own, by_scheme)  # a URL's go to redis-py alone
    return refused + [
        f"OPTIONS[{name!r}] is an option {_REFUSED}"
        + (
            f" (only {lower[name.lower()]!r})"
            if isinstance(name, str) and name.lower() in lower and lower[name.lower()] != name
            else " for the URLs of this LOCATION"
            if name in known
            else ""
        )
        for name in options
        if name not in taken
    ]


def _url_options_refused(location: object, backend: str, taken: set[str], by_scheme: Mapping[str, type]) -> list[str]:
    """The options in the LOCATION's URLs that redis-py takes no keyword for (``?nosuchoption=1``), or
    takes only as an object (``?retry=3``, ``_OBJECT_OPTIONS``): its URL parser passes a name it does
    not know on to the connection, and the text of one it does not convert, and every command then
    fails (``TypeError``, ``AttributeError``; both passed the check: reviews). ``taken`` are the pool's
    and every connection's keywords; each URL adds those of the connection class its scheme makes. A
    name whose lower case is a timeout's is left to W010's own words ("only socket_timeout"). Where the
    LOCATION holds credentials the names are left out: a password holding a ``?`` is read as the start of the options.
    ``backend`` (Django's ``RedisCache`` or django-redis) tells how the LOCATION splits into URLs."""
    urls = _location_urls(location, backend) or []
    withheld = isinstance(location, str) and holds_credentials(location)
    found: list[str] = []
    for url in urls:
        scheme = _redis_scheme(url)
        if scheme is None:
            continue  # E008 names a URL of no scheme redis-py reads
        try:
            names = urllib.parse.parse_qs(urllib.parse.urlparse(url).query)  # as redis-py's parse_url reads it
        except ValueError:
            continue  # its parser refuses the URL: E008
        takes = taken | _keywords(by_scheme[scheme])
        # Named as taken only as objects, whether or not redis-py's signatures name them (its pool
        # reads ``cache`` and ``cache_config`` from its **kwargs); but a unix:// or rediss:// URL's
        # connection_class is the one its scheme sets, whatever the URL says (redis-py's parse_url).
        objects = [name for name in names if name in _OBJECT_OPTIONS and (name, scheme) not in _SET_BY_SCHEME]
        refused = [
            name
            for name in names
            if name not in takes and name not in _OBJECT_OPTIONS and name.lower() not in _TIMEOUT_NAMES
        ]
        if not refused and not objects:
            continue
        if withheld or holds_credentials(url):
            found.append(
                f"its LOCATION {shown(location if withheld else url)[:80]} has URL options {_REFUSED}"
                " (their names left out, as they may quote the password: percent-encode a '?', '#' or '&' in it)"
            )
        else:
            found += [f"its LOCATION's ?{name[:40]}= is an option {_REFUSED}" for name in refused]
            found += [f"its LOCATION's ?{name}= is an option {_REFUSED} as text, as a URL gives it" for name in objects]
    return list(dict.fromkeys(found))


#: redis-py's keywords that take an object (a ``Retry``, a callable, a class, a number its URL parser
#: does not convert), which a URL hands on as text: each made every command, or every connection, of
#: Django's ``RedisCache`` fail (``?retry=3``: ``'str' object has no attribute 'call_with_retry'``), and
#: passed the check (a review). Each is tried against a real Redis in
#: tests/conf/test_breaker_cache_check.py::test_a_url_option_redis_py_takes_only_as_an_object_is_warned_of.
_OBJECT_OPTIONS = frozenset(
    {
        "cache",
        "cache_config",
        "command_packer",
        "connection_class",
        "credential_provider",
        "driver_info",
        "event_dispatcher",
        "maint_notifications_config",
        "oss_cluster_maint_notifications_handler",
        "parser_class",
        "redis_connect_func",
        "retry",
        "socket_keepalive_options",
        "socket_type",
    }
)
#: Options a URL's scheme sets whatever the URL says (redis-py's parse_url): a unix:// or rediss://
#: URL's ``?connection_class=`` is replaced, and the cache works.
_SET_BY_SCHEME = frozenset({("connection_class", "unix"), ("connection_class", "rediss")})


#: What W010 says of an option redis-py does not take (OPTIONS or a URL's), its hint then saying to leave it out.
_REFUSED = "redis-py does not take"

#: The timeouts' URL options, whose other spellings W010 names with the one redis-py reads.
_TIMEOUT_NAMES = frozenset(_SOCKET_TIMEOUT_OPTIONS[_PASSES_NONE])


def _keywords(cls: type) -> set[str]:
    """The keyword arguments ``cls.__init__`` names, and those of each ``__init__`` above it that it
    hands the rest on to (``**kwargs``): redis-py's TLS connection takes every keyword of the plain
    one (``socket_keepalive`` on a ``rediss://`` URL was named as refused, and the cache worked: a review)."""
    names: set[str] = set()
    for klass in cls.__mro__[:-1]:  # object's own __init__ takes nothing
        init = vars(klass).get("__init__")
        if init is None:
            continue
        try:
            parameters = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            break
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    names.discard("self")  # ?self=1 is no keyword: "got multiple values for argument 'self'"
    return names


def _bounds_connecting(value: object, longest: float) -> bool:
    """Whether a ``connect_timeout`` (or PGCONNECT_TIMEOUT) bounds opening a connection: libpq and
    psycopg take its whole seconds (``int(float(value))``) and wait for ever (psycopg: 130 s) for
    0 or less, so ``0.5``, ``"00"`` and ``-1`` do not; nor does one longer than ``longest``, the
    longest deadline a request may have (MAX_TIMEOUT): ``1e9`` passed, and a connect waited on."""
    try:
        return 1 <= int(float(str(value).strip())) <= longest
    except (ValueError, OverflowError):
        return False


def _longest_deadline() -> float:
    """``AIO_REQUEST["MAX_TIMEOUT"]`` where it is a number of seconds above 0, else its default
    (check_settings reports a wrong one)."""
    setting = getattr(settings, SETTING, None)
    value = setting.get("MAX_TIMEOUT") if isinstance(setting, Mapping) else None
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf:
        return float(value)
    return DEFAULT_MAX_TIMEOUT


@checks.register("django_aio_request")
@_never_raising
def check_breaker_cache_backend(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Report a breakers' shared cache (``AIO_REQUEST["CIRCUIT_BREAKER_STATE"]``) whose ``BACKEND`` is
    missing or cannot be imported: every sync round of the breakers would fail, and each process
    decide alone for good, with nothing but the outage's log line to say why. Never raises."""
    found = _breaker_cache()
    if found is None:
        return []  # check_settings reports an alias that names no cache
    alias, cache = found
    backend = cache.get("BACKEND")
    try:
        if not isinstance(backend, str):
            raise TypeError(f"BACKEND is {shown(backend)}, not a dotted path")
        found_backend = import_string(backend)
    except (Exception, SystemExit) as error:  # whatever importing it raises is the message
        return _unusable_breaker_cache(
            alias,
            f"has a BACKEND that cannot be imported ({type(error).__name__}: {error_text(error)})",
            "a cache backend such as 'django.core.cache.backends.redis.RedisCache'",
        )
    from django.core.cache.backends.base import BaseCache

    if not (isinstance(found_backend, type) and issubclass(found_backend, BaseCache)):
        # "builtins.dict" passed this check, and Django's own cache check ended in a traceback (a review).
        return _unusable_breaker_cache(
            alias,
            f"has a BACKEND, {backend!r}, that is no cache backend (no subclass of Django's BaseCache)",
            "a cache backend such as 'django.core.cache.backends.redis.RedisCache'",
        )
    unmakeable = _unmakeable(cache)
    if unmakeable is not None:
        return _unusable_breaker_cache(alias, *unmakeable)
    kind = nearest_known(backend, _KNOWN_BACKENDS)  # a subclass of Django's RedisCache is one too
    unimportable = _unimportable_options(cache.get("OPTIONS"), kind)
    if unimportable:
        return _unusable_breaker_cache(
            alias, "; ".join(unimportable), "give the dotted path of a class that imports, or leave the option out"
        )
    library = CLIENT_LIBRARIES.get(str(kind))
    if library is None:
        return []
    unreachable = _no_redis_location(cache.get("LOCATION"), str(kind))
    if unreachable is not None:
        return _unusable_breaker_cache(alias, unreachable, "LOCATION = 'redis://host:6379/0'")
    try:
        importlib.import_module(library)
    except (Exception, SystemExit) as error:
        # The backend imports, and imports its client library only when first used: check passed,
        # and every sync round failed with ModuleNotFoundError (a review: redis-py not installed).
        return _unusable_breaker_cache(
            alias,
            f"uses {backend}, whose client library {library!r} cannot be imported"
            f" ({type(error).__name__}: {error_text(error)})",
            f"install it (pip install {library})",
        )
    return []


def _unmakeable(cache: Mapping[str, Any]) -> tuple[str, str] | None:
    """(what, hint) for the parts of a cache's settings every backend reads as it is made, which made
    each use of the cache raise (passed, every sync round failed: a review): ``OPTIONS`` that is no
    dict, a ``KEY_FUNCTION`` that is no callable and no dotted path that imports, or whose own
    signature cannot take ``(key, key_prefix, version)``."""
    hint = "the dotted path of a function (key, key_prefix, version) -> str, or leave it out"
    if "OPTIONS" in cache and not isinstance(cache["OPTIONS"], Mapping):  # None too: Django reads only
        # a missing OPTIONS as {}
        return f"has OPTIONS that are {shown(cache['OPTIONS'])}, not a dict", "OPTIONS = {...}, or leave it out"
    key_function = cache.get("KEY_FUNCTION")
    if key_function is None:
        return None
    if not callable(key_function):
        try:  # as Django's get_key_func() does: a lazy string of a dotted path works too (a review)
            key_function = import_string(key_function)
        except (Exception, SystemExit) as error:
            return (
                f"has a KEY_FUNCTION that is no callable and no dotted path that imports"
                f" ({type(error).__name__}: {error_text(error)})",
                hint,
            )
        if not callable(key_function):
            return f"has a KEY_FUNCTION, {shown(cache['KEY_FUNCTION'])}, that is not callable", hint
    # The function's own signature, as the cache calls it: not the one functools.wraps shows (the
    # wrapped function's), which refused an adapter (key, key_prefix, version) around a function of
    # the key alone, and let through a wrapper of the key alone around a full one (two reviews).
    try:
        signature = inspect.signature(key_function, follow_wrapped=False)
    except (Exception, SystemExit):
        return None  # no signature to read (a builtin), or one of the user's that raises: taken
    try:
        signature.bind("key", "prefix", 1)
    except TypeError:
        return f"has a KEY_FUNCTION that cannot take (key, key_prefix, version): {signature}", hint
    except (Exception, SystemExit):
        return None  # a signature of the user's whose bind() fails otherwise: taken
    return None


#: The options of each backend that name a class by its dotted path, imported when the cache is
#: first used: one that cannot be imported passed the check, and every sync round failed (a review).
_DOTTED_OPTIONS = {_PASSES_NONE: ("serializer", "pool_class", "parser_class")}  # RedisCacheClient's import_string()


def _unimportable_options(options: object, backend: object) -> list[str]:
    """What is wrong with each option of ``backend`` naming a class by a dotted path that cannot be imported."""
    if not isinstance(options, Mapping) or not isinstance(backend, str):
        return []
    found = []
    for name in _DOTTED_OPTIONS.get(backend, ()):
        value = options.get(name)
        if not isinstance(value, str):  # a class given as such, or none
            continue
        try:
            import_string(value)
        except (Exception, SystemExit) as error:
            found.append(
                f"has OPTIONS[{name!r}] {shown(value)}, which cannot be imported"
                f" ({type(error).__name__}: {error_text(error)})"
            )
    return found


def _no_redis_location(location: object, backend: str) -> str | None:
    """Why a redis backend's LOCATION names no server it can connect to, or None. Without one, or
    with a URL with no scheme (``"127.0.0.1:6379"``), the check passed and every command failed
    ("Redis URL must specify one of the following schemes", a review)."""
    if backend not in _LOCATION_SEPARATORS:
        return None
    urls = _location_urls(location, backend) if not (isinstance(location, str) and not location.strip()) else None
    if not urls:
        return f"has no LOCATION redis can connect to ({shown(location)})"
    # A LOCATION of several URLs in one string is split where a password may hold the separator
    # ("redis://:Xk9f,Zr8@h/0" read as "redis://:Xk9f" and "Zr8@h/0"): the pieces are shown as the
    # whole is, and their words are cleared of the whole's credentials (a review).
    whole = [location] if isinstance(location, str) and holds_credentials(location) else []
    for url in urls:
        seen = shown(whole[0] if whole else url)[:80]
        # As redis-py reads it: the scheme first, with nothing before it ("; redis://r/0", with a
        # space after the separator, passed when the URLs were stripped: every read failed, a review).
        if _redis_scheme(url) is None:
            return f"has a LOCATION that is no redis://, rediss:// or unix:// URL ({seen})"
        unreadable = _redis_url_problem(url)
        if unreadable is not None:
            if whole or holds_credentials(url):
                # redis-py's words quote what a password holding a "/", "?" or "#" was read as (the
                # port: "Port could not be cast to integer value as 'Xk9f'"), in ways no part of it can
                # be looked for in (repr's escapes, an address between "[" and "]": reviews).
                return f"has a LOCATION redis cannot read ({seen}: {_WORDS_LEFT_OUT})"
            return f"has a LOCATION redis cannot read ({seen}: {unreadable})"
    return None


# What E008 says of a LOCATION with a password that redis cannot read, and its likely cause.
_WORDS_LEFT_OUT = (
    "redis-py's words are left out, as they may quote the password; if it holds '/', '?', '#', '@', ',',"
    " ';', '[' or ']', percent-encode them ('%2F', '%3F', '%23', '%40', '%2C', '%3B', '%5B', '%5D'),"
    " which redis-py decodes"
)


def _redis_url_problem(url: str) -> str | None:
    """What redis-py's own URL parser says is wrong with ``url`` (a port that is no number or out of
    range, an option it cannot read), or None. Such a URL passed the check and every sync round
    failed with ValueError ("Port could not be cast to integer value", a review). Without redis-py,
    or one with no parser to ask, the client library's own check (below) speaks."""
    try:
        from redis.connection import parse_url
    except Exception:
        return None
    try:
        parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as error:
        return str(error)
    except Exception:
        return None  # not a URL problem the parser names: the round will say
    return None


def _redis_scheme(url: str) -> str | None:
    """The scheme redis-py reads ``url`` by (``redis``, ``rediss``, ``unix``), or None for none of them."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    return scheme if scheme in ("redis", "rediss", "unix") else None


def _unusable_breaker_cache(alias: str, what: str, hint: str) -> list[checks.CheckMessage]:
    """The E008 of a breakers' shared cache that every sync round would fail on."""
    return [
        checks.Error(
            f"settings.CACHES[{alias!r}], the circuit breakers' shared state, {what}: breaker state would never"
            " be shared",
            hint=hint,
            obj=f"settings.CACHES[{alias!r}]",
            id=f"django_aio_request.{BAD_IMPORT}",
        )
    ]


#: The client library each cache backend imports only when first used, by the backend's dotted path.
CLIENT_LIBRARIES = {
    "django.core.cache.backends.redis.RedisCache": "redis",
    "django_redis.cache.RedisCache": "redis",
    "django.core.cache.backends.memcached.PyMemcacheCache": "pymemcache",
    "django.core.cache.backends.memcached.PyLibMCCache": "pylibmc",
}
#: The backends these checks know by their dotted paths; another backend is judged as the nearest of
#: these it derives from (conf/cache_backends.py).
_KNOWN_BACKENDS = frozenset(CLIENT_LIBRARIES) | frozenset(_SOCKET_TIMEOUT_OPTIONS) | frozenset(_DOTTED_OPTIONS)


@checks.register("django_aio_request")
@_never_raising
def check_breaker_cache_timeouts(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Warn when the breaker's shared cache (``AIO_REQUEST["CIRCUIT_BREAKER_STATE"]``) does not bound
    its socket timeouts itself. No call waits for the cache, but a round of the sync thread does:
    without a bound (pymemcache, redis-py before 8.0, or None), a server that stops answering stops
    the sharing of breaker state until it answers on that connection again; with redis-py 8's default
    (5 s), each round stalls 5 s, so sharing resumes up to 5 s after the server is back. Never raises,
    whatever the settings hold (check_settings reports those)."""
    found = _breaker_cache()
    if found is None:
        return []
    alias, cache = found
    backend = nearest_known(cache.get("BACKEND"), _KNOWN_BACKENDS)  # a subclass is judged as its base
    names = _SOCKET_TIMEOUT_OPTIONS.get(backend) if isinstance(backend, str) else None
    if names is None or not isinstance(backend, str):
        return []
    options = cache.get("OPTIONS")
    options = options if isinstance(options, Mapping) else {}
    is_redis = "redis" in backend.lower()
    location = cache.get("LOCATION")
    in_urls = _in_every_redis_url(location, backend) if is_redis else set()
    unusable = _unusable_timeouts(names, options, location, backend)
    if unusable:
        return [
            checks.Warning(
                f"settings.CACHES[{alias!r}], the circuit breakers' shared state: {'; '.join(unusable)}: the cache"
                " client fails every command with it"
                + (
                    " (where one URL of several has it, a replica's or a shard's, those that go there)"
                    if is_redis and len(_location_urls(location, backend) or []) > 1
                    else ""
                )
                + ", so breaker state is not shared (each process decides alone, and logs the outage)",
                hint=", ".join(f"{name!r}: 1.0" for name in names)
                + " in OPTIONS"
                + (", or ?socket_timeout=1&socket_connect_timeout=1 in a redis:// URL" if is_redis else "")
                + (f"; leave out an option {_REFUSED}" if any(_REFUSED in line for line in unusable) else ""),
                obj=f"settings.CACHES[{alias!r}]",
                id=f"django_aio_request.{CACHE_WITHOUT_TIMEOUTS}",
            )
        ]
    sources = _timeout_sources(backend, names, options, in_urls)
    unbounded = [name for name in names if sources[name] == "none"]
    defaulted = [name for name in names if sources[name] == "default"]
    hint = f"set OPTIONS {', '.join(f'{name!r}' for name in names)} to what a sync round may take, e.g. " + ", ".join(
        f"{name!r}: 1.0" for name in names
    )
    where = f"settings.CACHES[{alias!r}], the circuit breakers' shared state,"
    _, _, version = redis_default_timeouts()
    if unbounded:
        if "memcached" in backend.lower():
            why = " (pymemcache sets none by default)"
        elif backend == _PASSES_NONE and names[0] in options:  # socket_timeout None: connecting falls back on it
            why = " (None: no bound, whatever redis-py's default)"
        elif version == "not installed":  # E008 says to install it; which defaults then apply is not known yet
            why = " (redis-py, not installed yet, sets none before 8.0 and 5 s from 8.0 on)"
        else:
            why = f" (redis-py {version} sets none by default; 8.0 and later set 5 s)"
        message = (
            f"{where} has no {' and no '.join(unbounded)}{why}: a cache server that stops answering (frozen,"
            " blackholed) holds a sync round of the breakers with no bound, and breaker state is not shared"
            " until it answers on that connection again, which a blackholed one may never do (calls are not"
            " held: each process decides alone meanwhile)"
        )
    elif defaulted:
        seconds = max(value for value in redis_default_timeouts()[:2] if value is not None)
        them = "them" if len(defaulted) > 1 else "it"
        message = (
            f"{where} sets no {' and no '.join(defaulted)}: redis-py {version} bounds {them} at its default of"
            f" {seconds:g} s, so a cache server that stops answering (frozen, blackholed) holds each sync round of"
            f" the breakers {seconds:g} s before it fails, and the sharing of breaker state resumes up to"
            f" {seconds:g} s after the server is back (calls are not held: each process decides alone once a"
            " round has stalled 1 s); redis-py before 8.0 has no default: the same settings wait with no bound"
        )
    else:
        return []
    return [
        checks.Warning(
            message,
            hint=hint,
            obj=f"settings.CACHES[{alias!r}]",
            id=f"django_aio_request.{CACHE_WITHOUT_TIMEOUTS}",
        )
    ]


def _databases_under_the_bound() -> Mapping[Any, Any]:
    """``settings.DATABASES`` when ``DATABASE_STATEMENT_TIMEOUT`` is on, else nothing to judge.
    Whatever the settings hold."""
    setting = getattr(settings, SETTING, None)
    databases = getattr(settings, "DATABASES", None)
    if not isinstance(setting, Mapping) or setting.get("DATABASE_STATEMENT_TIMEOUT") is not True:
        return {}
    return databases if isinstance(databases, Mapping) else {}


def _bounded_databases() -> list[tuple[Any, Mapping[str, Any]]]:
    """``(alias, settings)`` of each PostgreSQL (or PostGIS) database whose queries are bounded by the
    deadline: none unless ``DATABASE_STATEMENT_TIMEOUT`` is on. Whatever the settings hold."""
    found = []
    for alias, database in _databases_under_the_bound().items():
        engine = str(database.get("ENGINE", "")) if isinstance(database, Mapping) else ""
        # By the backend's vendor, as the bound tells each connection: a wrapper named otherwise
        # (psqlextra.backend) is bounded too, and was judged by no check (a review). A backend that
        # cannot be loaded here (PostGIS without GDAL) by its name.
        vendor = _vendor(engine) if engine else None
        if vendor == "postgresql" or (vendor is None and ("postgresql" in engine or "postgis" in engine)):
            found.append((alias, database))
    return found


def _database_warning(alias: Any, message: str, hint: str, code: str) -> checks.Warning:
    """A warning about ``settings.DATABASES[alias]``: ``message`` follows the database's name."""
    where = f"settings.DATABASES[{alias!r}]"
    return checks.Warning(f"{where} {message}", hint=hint, obj=where, id=f"django_aio_request.{code}")


@checks.register("django_aio_request")
@_never_raising
def check_database_connect_timeout(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Warn when queries are bounded by the deadline (``DATABASE_STATEMENT_TIMEOUT``) but opening a
    PostgreSQL connection is not: libpq waits for a server that accepts and never answers as long
    as the kernel keeps the connection (no ``connect_timeout`` by default), and a request that has
    to connect first is held past its deadline. Never raises, whatever the settings hold."""
    found: list[checks.CheckMessage] = []
    longest = _longest_deadline()
    for alias, database in _bounded_databases():
        options = database.get("OPTIONS")
        # Any mapping (a types.MappingProxyType too): Django and psycopg read it as a dict.
        timeout = options.get("connect_timeout") if isinstance(options, Mapping) else None
        # A connect_timeout in OPTIONS, even 0, is what libpq and psycopg use: PGCONNECT_TIMEOUT only
        # counts where there is none (psycopg drops a None, so the environment counts then too).
        if timeout is None:
            from_environment = os.environ.get("PGCONNECT_TIMEOUT")
            if from_environment is not None and _bounds_connecting(from_environment, longest):
                continue
            what = "has no connect_timeout"
        elif _bounds_connecting(timeout, longest):
            continue
        else:
            what = (
                f"has connect_timeout {shown(timeout)}, which does not bound connecting within the longest"
                f" deadline a request may have (MAX_TIMEOUT, {longest:g} s) (and overrides PGCONNECT_TIMEOUT)"
            )
        found.append(
            _database_warning(
                alias,
                f"{what}: DATABASE_STATEMENT_TIMEOUT bounds its queries by the request's deadline, but not the"
                " opening of a connection, which waits for a server that accepts and never answers for as long"
                " as the kernel keeps trying",
                "set OPTIONS {'connect_timeout': 2} (whole seconds, 2 at least: libpq reads 1 as 2; or"
                " PGCONNECT_TIMEOUT in the environment, for a database whose OPTIONS have no connect_timeout),"
                " and CONN_MAX_AGE so that few requests connect at all",
                DATABASE_WITHOUT_CONNECT_TIMEOUT,
            )
        )
    return found


@checks.register("django_aio_request")
@_never_raising
def check_pool_health_checks(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Warn when queries are bounded by the deadline but a PostgreSQL database uses Django's pool
    (``OPTIONS["pool"]``) with ``CONN_HEALTH_CHECKS``: Django then has the pool check each connection
    it hands out (psycopg_pool's ``check_connection``), outside the cursors the bound wraps, and a
    server that stops answering holds the request with no bound (a review: past 30 s at a 0.5 s
    deadline). Never raises, whatever the settings hold."""
    found: list[checks.CheckMessage] = []
    for alias, database in _bounded_databases():
        options = database.get("OPTIONS")
        pooled = isinstance(options, Mapping) and bool(options.get("pool"))  # True or the pool's own options
        if pooled and database.get("CONN_HEALTH_CHECKS"):
            found.append(
                _database_warning(
                    alias,
                    "uses Django's connection pool with CONN_HEALTH_CHECKS: the pool checks each connection as it"
                    " hands it out, outside the cursors DATABASE_STATEMENT_TIMEOUT bounds, and a server that stops"
                    " answering holds the request with no bound, past its deadline and the pool's timeout",
                    "turn CONN_HEALTH_CHECKS off for this database: a broken pooled connection then fails its"
                    " request's first query, which the deadline bounds, and the pool replaces it",
                    POOL_HEALTH_CHECK_UNBOUNDED,
                )
            )
    return found


def _vendor(engine: str) -> str | None:
    """The ``vendor`` of a database backend, read off its class as the bound reads it off each
    connection (server/database.py), without connecting; None when the backend cannot be loaded
    (Django's own error says so)."""
    try:
        return str(import_string(f"{engine}.base.DatabaseWrapper").vendor)
    except Exception:
        return None


@checks.register("django_aio_request")
@_never_raising
def check_unbounded_databases(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Warn for each database ``DATABASE_STATEMENT_TIMEOUT`` cannot bound, when it is on: the bound is
    PostgreSQL's (``statement_timeout`` and cancel requests), and a SQLite or MariaDB query ran its
    whole length past the deadline (a 4 s one answered 200 after 4.2 s at a 0.5 s deadline) while
    ``check`` said nothing, also in a project with no PostgreSQL at all (a review)."""
    found: list[checks.CheckMessage] = []
    for alias, database in _databases_under_the_bound().items():
        engine = database.get("ENGINE") if isinstance(database, Mapping) else None
        vendor = _vendor(engine) if isinstance(engine, str) and engine else None
        # "unknown": Django's dummy backend (DATABASES = {}), no queries to bound.
        if vendor is None or vendor in ("postgresql", "unknown"):
            continue
        found.append(
            _database_warning(
                alias,
                f"is {vendor}: DATABASE_STATEMENT_TIMEOUT bounds PostgreSQL's queries only, and a query on this"
                " database runs its whole length, past the request's deadline",
                "bound this database's queries yourself if they can be long (its own timeout setting), or"
                " silence this warning for it (SILENCED_SYSTEM_CHECKS) if they cannot",
                UNBOUNDED_DATABASE,
            )
        )
    return found


@checks.register("django_aio_request")
@_never_raising
def check_psycopg2_cancel(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Warn when the bound is on for a PostgreSQL database and Django talks to it through psycopg2:
    psycopg2's ``connection.cancel()`` holds the interpreter's lock while it waits for the server,
    and a cancel request that gets no answer froze the whole process, every thread and event loop
    (a review: under gunicorn the worker was killed at its 30 s timeout with every request in flight;
    docs/database.md, Limits). psycopg 3 sends its cancel with the lock released."""
    bounded = [alias for alias, _ in _bounded_databases()]
    if not bounded:
        return []
    try:
        from django.db.backends.postgresql import psycopg_any
    except Exception:  # no PostgreSQL driver at all: Django's own error says so
        return []
    if getattr(psycopg_any, "is_psycopg3", True):
        return []
    return [
        _database_warning(
            alias,
            "is used through psycopg2: DATABASE_STATEMENT_TIMEOUT cancels a query at the deadline with psycopg2's"
            " connection.cancel(), which holds the whole process while it waits for the server's answer, and one"
            " that never comes freezes every thread of the process",
            "install psycopg 3 (pip install 'psycopg[binary]'), which Django prefers when both are installed",
            PSYCOPG2_CANCEL,
        )
        for alias in bounded
    ]


@checks.register("django_aio_request")
@_never_raising
def check_async_stack(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Warn when ``CANCEL_ASYNC_VIEWS_ON_TIMEOUT`` is on and middleware below AioRequestMiddleware
    cannot run async: under ASGI no async view is then cancelled (server/async_stack.py)."""
    if not cancelling(getattr(settings, SETTING, None)):
        return []
    below = sync_only_below(getattr(settings, "MIDDLEWARE", None))
    if not below:
        return []
    return [
        checks.Warning(
            warning_text(below),
            hint=ASYNC_STACK_HINT,
            obj="settings.MIDDLEWARE",
            id=f"django_aio_request.{SYNC_MIDDLEWARE_BELOW}",
        )
    ]


@checks.register("django_aio_request")
@_never_raising
def check_misspelt_setting(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Warn when ``AIO_REQUEST`` is not set and a setting spelt like it is (``AIO_REQUESTS``): check
    passed it, every default applied, and the first look-up of a client raised UnknownClientError
    (a review)."""
    near = misspelt_setting()
    if near is None:
        return []
    return [
        checks.Warning(
            f"settings.{SETTING} is not set, and settings.{near} is: a misspelling? Every default applies,"
            f" and no client of settings.{near} is configured",
            hint=f"rename settings.{near} to settings.{SETTING}",
            obj=f"settings.{near}",
            id=f"django_aio_request.{MISSPELT_SETTING}",
        )
    ]


@checks.register("django_aio_request")
@_never_raising
def check_middleware_once(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Report ``AioRequestMiddleware`` (or a subclass) listed more than once in ``MIDDLEWARE``, as a base
    and a local settings file that each append it do: every request was then counted twice, and with
    ``SHEDDING`` took two slots of the limit, so that with ``MAX_CONCURRENCY`` 1 every request was
    refused (503) and a learned limit fell to 1 (a review)."""
    from django_aio_request.server.middleware import AioRequestMiddleware

    middleware = getattr(settings, "MIDDLEWARE", None)
    if not isinstance(middleware, Sequence) or isinstance(middleware, str):
        return []
    found: list[object] = []
    for path in middleware:
        try:
            # A lazy string of one is read as its text, as Django's handler reads it (a review).
            factory = import_string(str(path)) if isinstance(path, str | Promise) else None
        except Exception:  # Django reports a path that cannot be imported when it loads the middleware
            continue
        if isinstance(factory, type) and issubclass(factory, AioRequestMiddleware):
            found.append(path)
    if len(found) < 2:
        return []
    listed = ", ".join(repr(str(path)) for path in found)
    return [
        checks.Error(
            f"AioRequestMiddleware is in settings.MIDDLEWARE {len(found)} times ({listed}):"
            " each request would be counted, and with SHEDDING held to the limit, once for each",
            hint="list it once, right after SecurityMiddleware",
            obj="settings.MIDDLEWARE",
            id=f"django_aio_request.{MIDDLEWARE_TWICE}",
        )
    ]


@checks.register("django_aio_request")
@_never_raising
def check_database_vendor(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """An error for each database the app's tables would be migrated to that is neither SQLite nor
    PostgreSQL (by its backend's ``vendor``, so PostGIS and wrapped backends count as theirs). On
    MariaDB, ``check`` passed and ``migrate`` failed half way, at the view of 0002, with a
    traceback, and left the migrations of apps after it (sessions) unapplied too."""
    from django.db import connections, router

    from django_aio_request.models import BreakerReport

    # The databases a command is about (migrate's --database, check --database), else the one the
    # app's rows are written to: a legacy MySQL alias beside them stopped every command.
    databases = kwargs.get("databases")
    if databases is None:
        try:
            databases = [router.db_for_write(BreakerReport)]
        except Exception:  # a router that fails: Django's own use of it says so
            return []
    found: list[checks.CheckMessage] = []
    for alias in databases:
        try:
            vendor = connections[alias].vendor
            migrated_here = router.allow_migrate_model(alias, BreakerReport)
        except Exception:  # a backend that cannot even be loaded: Django's own error says so
            continue
        # "unknown": Django's dummy backend, no database at all (DATABASES = {}): the clients work,
        # the admin's tables have nowhere to go, as before.
        if not migrated_here or vendor in (*SUPPORTED_VENDORS, "unknown"):
            continue
        found.append(
            checks.Error(
                f"settings.DATABASES[{alias!r}] is {vendor}: django_aio_request's migrations (its admin's view of"
                " the circuit breakers) are written for SQLite and PostgreSQL, and migrate would fail half way",
                hint="send the app's tables to a PostgreSQL or SQLite database with a router in DATABASE_ROUTERS"
                " (db_for_read, db_for_write and allow_migrate for app_label 'django_aio_request')",
                obj=f"settings.DATABASES[{alias!r}]",
                id=f"django_aio_request.{UNSUPPORTED_DATABASE}",
            )
        )
    return found


def _breaker_cache() -> tuple[str, Mapping[str, Any]] | None:
    """(alias, settings) of the cache ``CIRCUIT_BREAKER_STATE`` names, or None: "local" (the breakers
    keep their state in memory, even where a cache is called "local": W010 judged that one) or an
    alias that names no cache (check_settings reports it)."""
    setting = getattr(settings, SETTING, None)
    alias = setting.get("CIRCUIT_BREAKER_STATE") if isinstance(setting, Mapping) else None
    if isinstance(alias, Promise):  # a lazy string reads as its text, as the settings reader reads it
        alias = str(alias)
    caches = getattr(settings, "CACHES", None)
    if not isinstance(alias, str) or alias == LOCAL_BREAKER_STATE or not isinstance(caches, Mapping):
        return None
    cache = caches.get(alias)
    return (alias, cache) if isinstance(cache, Mapping) else None
