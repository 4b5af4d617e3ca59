"""``manage.py check`` warns (django_aio_request.W010) when the breakers' shared cache sets no socket
timeouts of its own, says what a server that stops answering then costs with the installed redis-py
(no bound before 8.0, its 5 s default from 8.0 on), and never crashes on the settings it looks at."""

import collections
import re
import types
from pathlib import Path
from typing import Any

import pytest
import redis
from django.core.cache.backends.filebased import FileBasedCache
from django.core.cache.backends.locmem import LocMemCache
from django.core.cache.backends.redis import RedisCache
from django.test import override_settings
from django_redis.client import DefaultClient  # type: ignore[import-untyped]

from django_aio_request import checks as checks_module
from django_aio_request.checks import _OBJECT_OPTIONS, check_breaker_cache_timeouts, redis_default_timeouts
from tests.support.manage import manage

ROOT = Path(__file__).resolve().parents[2]
REDIS = "django.core.cache.backends.redis.RedisCache"
LOCMEM = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
DJANGO_REDIS = "django_redis.cache.RedisCache"
MEMCACHED = "django.core.cache.backends.memcached.PyMemcacheCache"
#: redis-py's defaults (read, connect, version) before 8.0 and from 8.0 on.
BEFORE_8 = (None, None, "7.4.1")
FROM_8 = (5, 5, "8.1.0")


@pytest.fixture(autouse=True)
def _redis_py_8(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check as with redis-py 8 (5 s defaults) whichever is installed, so that the tests mean the same
    with any: before 8.0 a socket_timeout alone bounds connecting too (no warning for it)."""
    monkeypatch.setattr(checks_module, "redis_default_timeouts", lambda: FROM_8)


def _ids(caches: Any, aio_request: Any) -> list[str]:
    with override_settings(CACHES=caches, AIO_REQUEST=aio_request):
        return [message.id for message in check_breaker_cache_timeouts() if message.id is not None]


def _warning(backend: str, options: dict[str, Any]) -> str | None:
    """W010's message for a shared cache of ``backend`` with ``options``, or None without one."""
    caches = {
        "default": LOCMEM,
        "shared": {"BACKEND": backend, "LOCATION": "redis://127.0.0.1:1/0", "OPTIONS": options},
    }
    with override_settings(CACHES=caches, AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"}):
        found = check_breaker_cache_timeouts()
    assert [message.id for message in found] in ([], ["django_aio_request.W010"])
    return found[0].msg if found else None


@pytest.mark.parametrize(
    ("options", "warns"),
    [
        ({}, True),
        ({"socket_timeout": 1.0}, True),
        ({"socket_connect_timeout": 1.0}, True),
        ({"socket_timeout": None, "socket_connect_timeout": 1.0}, True),
        ({"socket_timeout": 1.0, "socket_connect_timeout": 1.0}, False),
    ],
)
def test_django_redis_cache_without_socket_timeouts_warns(options: dict[str, Any], warns: bool) -> None:
    caches = {"default": LOCMEM, "shared": {"BACKEND": REDIS, "LOCATION": "redis://127.0.0.1:1/0", "OPTIONS": options}}
    assert _ids(caches, {"CIRCUIT_BREAKER_STATE": "shared"}) == (["django_aio_request.W010"] if warns else [])


@pytest.mark.parametrize(
    ("location", "warns"),
    [
        ("redis://127.0.0.1:1/0?socket_timeout=1&socket_connect_timeout=1", False),
        (["redis://a:1/0?socket_timeout=1&socket_connect_timeout=1", "redis://b:1/0?socket_timeout=1"], True),
        ("redis://a:1/0?socket_timeout=1&socket_connect_timeout=1,redis://b:1/0?socket_timeout=1", True),
        ("redis://127.0.0.1:1/0?socket_timeout=&socket_connect_timeout=1", True),
    ],
)
def test_socket_timeouts_in_every_url_of_the_location_count(location: Any, warns: bool) -> None:
    """redis-py reads them from the URL (what the warning said were missing were set there)."""
    caches = {"default": LOCMEM, "shared": {"BACKEND": REDIS, "LOCATION": location}}
    assert _ids(caches, {"CIRCUIT_BREAKER_STATE": "shared"}) == (["django_aio_request.W010"] if warns else [])
    if not warns:
        kwargs = redis.ConnectionPool.from_url(location).connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (1.0, 1.0)


def test_django_redis_package_spells_them_in_capitals() -> None:
    backend = "django_redis.cache.RedisCache"
    bare = {"default": LOCMEM, "shared": {"BACKEND": backend, "LOCATION": "redis://127.0.0.1:1/0"}}
    assert _ids(bare, {"CIRCUIT_BREAKER_STATE": "shared"}) == ["django_aio_request.W010"]
    options = {"SOCKET_TIMEOUT": 1, "SOCKET_CONNECT_TIMEOUT": 1}
    timed = {"default": LOCMEM, "shared": {"BACKEND": backend, "OPTIONS": options}}
    assert _ids(timed, {"CIRCUIT_BREAKER_STATE": "shared"}) == []


@pytest.mark.parametrize(
    ("caches", "aio_request"),
    [
        ({"default": LOCMEM}, {"CIRCUIT_BREAKER_STATE": "local"}),  # no shared cache
        ({"default": {"BACKEND": REDIS}}, {}),  # a Redis cache the breakers do not use
        ({"default": LOCMEM}, {"CIRCUIT_BREAKER_STATE": "missing"}),  # check_settings reports that one
        ({"default": LOCMEM}, None),
        ({"default": LOCMEM}, "not a dict"),
        ({"default": LOCMEM}, {"CIRCUIT_BREAKER_STATE": ["x"]}),
        ({"default": "not a dict"}, {"CIRCUIT_BREAKER_STATE": "default"}),
        ({"default": {"BACKEND": REDIS, "OPTIONS": "junk"}}, {"CIRCUIT_BREAKER_STATE": "default"}),
        ({"default": {"BACKEND": 3}}, {"CIRCUIT_BREAKER_STATE": "default"}),
    ],
)
def test_other_settings_give_no_warning_and_no_crash(caches: Any, aio_request: Any) -> None:
    ids = _ids(caches, aio_request)
    assert ids in ([], ["django_aio_request.W010"])
    if not (isinstance(caches.get("default"), dict) and caches["default"].get("BACKEND") == REDIS):
        assert ids == []


def test_local_breaker_state_judges_no_cache_even_one_called_local() -> None:
    """CIRCUIT_BREAKER_STATE "local" keeps the breakers' state in memory, whatever CACHES holds: a
    Redis cache that happened to be called "local" was judged as their shared state (W010, and
    E008 under --tag for a BACKEND that cannot be imported)."""
    from django_aio_request.checks import check_breaker_cache_backend

    caches = {"default": LOCMEM, "local": {"BACKEND": REDIS, "LOCATION": "redis://127.0.0.1:1/0"}}
    assert _ids(caches, {"CIRCUIT_BREAKER_STATE": "local"}) == []
    caches["local"] = {"BACKEND": "no.such.Backend"}
    with override_settings(CACHES=caches, AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "local"}):
        assert check_breaker_cache_backend() == []


def test_manage_py_check_shows_the_warning() -> None:
    """As an operator runs it: manage.py in a subprocess, with settings naming a Redis without timeouts."""
    result = manage("check", "--tag", "django_aio_request", settings="tests.support.settings_breaker_cache")
    assert result.returncode == 0, result.stderr  # a warning, not an error
    assert "django_aio_request.W010" in result.stderr
    assert "socket_timeout" in result.stderr
    if redis_default_timeouts()[0] is None:  # the installed redis-py's, in the subprocess too
        assert "a sync round of the breakers with no bound" in result.stderr
    else:
        assert f"redis-py {redis.__version__} bounds them at its default of 5 s" in result.stderr


def test_the_detected_default_is_the_installed_redis_py_s() -> None:
    """redis-py 8.0 made ``socket_timeout`` and ``socket_connect_timeout`` default to 5 s (redis/_defaults.py);
    7.4.1 and before default both to None, no bound."""
    read, connect, version = redis_default_timeouts()
    assert version == redis.__version__
    if int(redis.__version__.split(".")[0]) >= 8:
        from redis._defaults import DEFAULT_SOCKET_CONNECT_TIMEOUT, DEFAULT_SOCKET_TIMEOUT

        assert (read, connect) == (DEFAULT_SOCKET_TIMEOUT, DEFAULT_SOCKET_CONNECT_TIMEOUT) == (5, 5)
    else:
        assert (read, connect) == (None, None)


# What each configuration gets: "none" (no bound, the warning says so), "default" (redis-py's 5 s, the
# warning names it) or None (no warning), with redis-py before 8.0 and from 8.0 on.
CASES = [
    (REDIS, {}, "none", "default"),
    # redis-py bounds connecting by socket_timeout when no socket_connect_timeout is given: always
    # before 8.0; from 8.0 on only when it is None (left out, it is the 5 s default).
    (REDIS, {"socket_timeout": 1.0}, None, "default"),
    (REDIS, {"socket_timeout": 1.0, "socket_connect_timeout": None}, None, None),
    (REDIS, {"socket_connect_timeout": 1.0}, "none", "default"),
    # None is handed to redis-py as it is: no bound, whatever its default.
    (REDIS, {"socket_timeout": None, "socket_connect_timeout": 1.0}, "none", "none"),
    (REDIS, {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}, None, None),
    # django-redis leaves a None out: redis-py's default applies.
    (DJANGO_REDIS, {"SOCKET_TIMEOUT": None}, "none", "default"),
    (DJANGO_REDIS, {"SOCKET_TIMEOUT": 1, "SOCKET_CONNECT_TIMEOUT": 1}, None, None),
    # pymemcache has no default, whatever redis-py's.
    (MEMCACHED, {}, "none", "none"),
    (MEMCACHED, {"timeout": 1, "connect_timeout": 1}, None, None),
]


@pytest.mark.parametrize(("backend", "options", "before_8", "from_8"), CASES)
def test_the_warning_says_what_the_installed_redis_py_does_without_timeouts(
    monkeypatch: pytest.MonkeyPatch, backend: str, options: dict[str, Any], before_8: str | None, from_8: str | None
) -> None:
    for defaults, expected in ((BEFORE_8, before_8), (FROM_8, from_8)):
        monkeypatch.setattr(checks_module, "redis_default_timeouts", lambda defaults=defaults: defaults)
        message = _warning(backend, options)
        if expected is None:
            assert message is None, (defaults, message)
        elif expected == "none":
            assert message is not None
            assert "with no bound" in message
            assert "default of 5 s" not in message
        else:
            assert message is not None
            assert "redis-py 8.1.0 bounds" in message
            assert "at its default of 5 s" in message
            assert "holds each sync round of the breakers 5 s before it fails" in message
            assert "redis-py before 8.0 has no default" in message
            assert "with no bound" in message  # of the older redis-py only
            assert "shared state, has no" not in message


def test_the_message_names_the_redis_py_version_without_a_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks_module, "redis_default_timeouts", lambda: BEFORE_8)
    message = _warning(REDIS, {})
    assert message is not None
    assert "has no socket_timeout and no socket_connect_timeout (redis-py 7.4.1 sets none by default" in message
    assert "a sync round of the breakers with no bound" in message
    message = _warning(REDIS, {"socket_timeout": None, "socket_connect_timeout": 1.0})
    assert message is not None
    assert "has no socket_timeout (None: no bound, whatever redis-py's default)" in message


@pytest.mark.parametrize(("backend", "options", "before_8", "from_8"), [case for case in CASES if case[0] == REDIS])
def test_what_the_check_says_of_django_s_redis_cache_is_what_the_installed_redis_py_does(
    backend: str, options: dict[str, Any], before_8: str | None, from_8: str | None
) -> None:
    """The pool Django's RedisCache builds (``ConnectionPool.from_url`` with OPTIONS as they are): its
    connections' timeouts are the ones set, redis-py's default, or None as the check says."""
    read_default, _, _ = redis_default_timeouts()
    expected = from_8 if read_default is not None else before_8
    connection: Any = redis.ConnectionPool.from_url("redis://127.0.0.1:1/0", **options).make_connection()
    timeouts = {connection.socket_timeout, connection.socket_connect_timeout}
    if expected is None:
        assert timeouts == {1.0}
    elif expected == "none":
        assert None in timeouts
    else:
        assert None not in timeouts
        assert read_default in timeouts


@pytest.mark.parametrize(
    ("options", "location"),
    [
        ({"socket_timeout": "0.2", "socket_connect_timeout": "0.2"}, "redis://127.0.0.1:6379/0"),
        ({"socket_timeout": 0, "socket_connect_timeout": 0}, "redis://127.0.0.1:6379/0"),
        ({"socket_timeout": False, "socket_connect_timeout": False}, "redis://127.0.0.1:6379/0"),
        ({"socket_timeout": float("inf"), "socket_connect_timeout": float("inf")}, "redis://127.0.0.1:6379/0"),
        ({"socket_timeout": 1e10, "socket_connect_timeout": 1e10}, "redis://127.0.0.1:6379/0"),
        ({"socket_timeout": float("nan"), "socket_connect_timeout": float("nan")}, "redis://127.0.0.1:6379/0"),
        ({}, "redis://127.0.0.1:6379/0?SOCKET_TIMEOUT=0.2&SOCKET_CONNECT_TIMEOUT=0.2"),
        # django-redis's capitals on Django's RedisCache: W010 said "no socket_timeout" (a review)
        ({"SOCKET_TIMEOUT": 1, "SOCKET_CONNECT_TIMEOUT": 1}, "redis://127.0.0.1:6379/0"),
        ({"socket_timeout": 1, "socket_connect_timeout": 1, "sockettimeout": 1}, "redis://127.0.0.1:6379/0"),
        # a keyword of another scheme's connections: TLS's on a redis:// URL (a review)
        ({"socket_timeout": 1, "socket_connect_timeout": 1, "ssl_cert_reqs": "none"}, "redis://127.0.0.1:6379/0"),
    ],
)
def test_timeouts_the_cache_client_cannot_use_are_reported(options: dict[str, Any], location: str) -> None:
    """A string, 0, or a URL parameter in capitals looked like a timeout to W010 ("no issues"), and the
    cache failed every command with it: the warning now says so (checked on the real Redis)."""
    caches = {"default": LOCMEM, "shared": {"BACKEND": REDIS, "LOCATION": location, "OPTIONS": options}}
    with override_settings(CACHES=caches, AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"}):
        (warning,) = check_breaker_cache_timeouts()
        from django.core.cache import caches as django_caches

        with pytest.raises(Exception):  # noqa: B017, PT011 - TypeError or BlockingIOError, whichever the client meets
            django_caches["shared"].get("django-aio-request-check-probe")
    assert warning.id == "django_aio_request.W010"
    assert "fails every command" in warning.msg


@pytest.mark.parametrize("value", ["0", "inf", "1e10", "abc"])
def test_a_timeout_in_the_url_replaces_options_and_is_judged_itself(value: str) -> None:
    """redis-py lets the URL's timeouts replace those of OPTIONS: usable OPTIONS passed W010 while a
    URL's 0, inf, 1e10 or unreadable value failed every command (on the real Redis)."""
    location = f"redis://127.0.0.1:6379/0?socket_timeout={value}&socket_connect_timeout={value}"
    options = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}
    caches = {"default": LOCMEM, "shared": {"BACKEND": REDIS, "LOCATION": location, "OPTIONS": options}}
    with override_settings(CACHES=caches, AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"}):
        (warning,) = check_breaker_cache_timeouts()
        from django.core.cache import caches as django_caches

        with pytest.raises(Exception):  # noqa: B017, PT011 - ValueError, OverflowError or a connection error
            django_caches["shared"].get("django-aio-request-check-probe")
    assert warning.id == "django_aio_request.W010"
    assert f"?socket_timeout={value} is not a number of seconds" in warning.msg
    assert "OPTIONS" not in warning.msg.split(":")[1]  # the OPTIONS values are replaced, not blamed


def test_options_every_url_replaces_are_not_reported() -> None:
    """OPTIONS timeouts of 0 that the URL replaces with 1 s were reported as failing every command,
    though redis-py never uses them and the cache works (on the real Redis)."""
    location = "redis://127.0.0.1:6379/0?socket_timeout=1&socket_connect_timeout=1"
    options = {"socket_timeout": 0.0, "socket_connect_timeout": 0.0}
    caches = {"default": LOCMEM, "shared": {"BACKEND": REDIS, "LOCATION": location, "OPTIONS": options}}
    with override_settings(CACHES=caches, AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"}):
        assert check_breaker_cache_timeouts() == []
        from django.core.cache import caches as django_caches

        assert django_caches["shared"].get("django-aio-request-check-probe") is None


@pytest.mark.parametrize("value", [True, 1, 999_999_999])
def test_timeouts_the_cache_client_can_use_are_not_reported(value: Any) -> None:
    """True was reported as failing every command, yet redis-py hands it to ``socket.settimeout``,
    which reads it as 1 s: the cache works (on the real Redis), and the check says nothing. The
    largest number the settings take (999,999,999 s) is one the socket takes too."""
    options = {"socket_timeout": value, "socket_connect_timeout": value}
    caches = {
        "default": LOCMEM,
        "shared": {"BACKEND": REDIS, "LOCATION": "redis://127.0.0.1:6379/0", "OPTIONS": options},
    }
    with override_settings(CACHES=caches, AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"}):
        assert check_breaker_cache_timeouts() == []
        from django.core.cache import caches as django_caches

        assert django_caches["shared"].get("django-aio-request-check-probe") is None


def test_a_location_that_is_not_a_url_does_not_crash_manage_py_check(tmp_path: Path) -> None:
    """``redis://[::1:6379/0`` made ``check`` (and ``migrate``) end in a ValueError traceback, and the
    settings' real errors were never shown."""
    (tmp_path / "bad_location_settings.py").write_text(
        "from tests.support.settings_breaker_cache import *  # noqa: F403\n"
        "CACHES = {**CACHES, 'breakers': {**CACHES['breakers'], 'LOCATION': 'redis://[::1:6379/0'}}\n"
        "AIO_REQUEST = {**AIO_REQUEST, 'TIMEOUT': -1}\n"
    )
    result = manage("check", settings="bad_location_settings", path=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "django_aio_request.E003" in result.stderr


@pytest.mark.parametrize("backend", ["no.such.module.Cache", "django.core.cache.backends.redis.NoSuchCache", None, 3])
def test_a_breaker_cache_whose_backend_cannot_be_imported_is_an_error(backend: Any) -> None:
    """It passed ``check`` silently, and every sync round then failed: the breakers never shared state."""
    from django_aio_request.checks import check_breaker_cache_backend

    shared: dict[str, Any] = {"LOCATION": "redis://127.0.0.1:6379/0"}
    if backend is not None:
        shared["BACKEND"] = backend
    with override_settings(
        CACHES={"default": LOCMEM, "shared": shared}, AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"}
    ):
        (error,) = check_breaker_cache_backend()
    assert error.id == "django_aio_request.E008"
    assert "cannot be imported" in error.msg
    with override_settings(
        CACHES={"default": LOCMEM, "shared": {**shared, "BACKEND": REDIS}},
        AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"},
    ):
        assert check_breaker_cache_backend() == []


@pytest.mark.parametrize(
    ("shared", "said"),
    [
        ({"BACKEND": REDIS}, "has no LOCATION redis can connect to"),
        ({"BACKEND": REDIS, "LOCATION": ""}, "has no LOCATION redis can connect to"),
        ({"BACKEND": REDIS, "LOCATION": "127.0.0.1:6379"}, "is no redis://, rediss:// or unix:// URL"),
        ({"BACKEND": REDIS, "LOCATION": "redis://127.0.0.1:6379/0;127.0.0.1:6380"}, "is no redis://"),
        # a space after the separator: redis-py reads the scheme at the very start (a review)
        ({"BACKEND": REDIS, "LOCATION": "redis://127.0.0.1:6379/0; redis://127.0.0.1:6379/1"}, "is no redis://"),
        # redis-py's own parser refuses these at every command (a review: check passed, no round ever did)
        (
            {"BACKEND": REDIS, "LOCATION": "redis://127.0.0.1:notaport/0"},
            "redis cannot read ('redis://127.0.0.1:notaport/0': Port could not be cast to integer value",
        ),
        ({"BACKEND": REDIS, "LOCATION": "redis://127.0.0.1:99999/0"}, "Port out of range"),
        ({"BACKEND": REDIS, "LOCATION": ["redis://a/0", "redis://b:6379/0?socket_timeout=soon"]}, "socket_timeout"),
    ],
)
def test_a_redis_breaker_cache_with_no_url_it_can_connect_to_is_an_error(shared: dict[str, Any], said: str) -> None:
    """No LOCATION, or one with no scheme: ``check --tag django_aio_request`` passed, and every command
    of the cache failed ("Redis URL must specify one of the following schemes"), so every sync round
    of the breakers too (a review)."""
    from django.core.cache import caches as django_caches

    from django_aio_request.checks import check_breaker_cache_backend

    with override_settings(
        CACHES={"default": LOCMEM, "shared": shared}, AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"}
    ):
        (error,) = check_breaker_cache_backend()
        with pytest.raises(Exception):  # noqa: B017, PT011 - whatever redis-py raises for it
            django_caches["shared"].get("django-aio-request-check-probe")
    assert error.id == "django_aio_request.E008"
    assert said in error.msg
    for fine in (
        "redis://127.0.0.1:6379/0",
        "rediss://h:6380/0",
        "unix:///run/redis.sock",
        ["redis://a/0", "redis://b/0"],
        collections.UserList(["redis://a/0"]),  # any sequence, as Django's caches take (a review)
    ):
        with override_settings(
            CACHES={"default": LOCMEM, "shared": {"BACKEND": REDIS, "LOCATION": fine}},
            AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"},
        ):
            assert check_breaker_cache_backend() == [], fine


@pytest.mark.parametrize(
    "userinfo",
    [
        ":Xk9fQ2/Zr8+Tail",
        ":Leaked1?rest",
        ":Leaked2#rest",
        ":Xk9fQ2,Zr8Tail",
        "adm1n:Xk9fQ2;Zr8Tail",
        ":Kq[Zr8Xk9]Tt",  # urlsplit reads what is between "[" and "]" as an IP address, and quotes it
        ":Sup3r\\Secret/tail",  # quoted by repr(), the backslash doubled
    ],
)
def test_a_redis_location_whose_password_redis_cannot_read_is_an_error_that_never_quotes_it(userinfo: str) -> None:
    """redis-py's parser reads a password holding a "/", "?" or "#" as the port, and its words quote
    what came before it ("Port could not be cast to integer value as 'Xk9fQ2'"): E008 repeated them
    after the URL it had shown as 'redis://***@...' (a review). Django splits a LOCATION at "," and
    ";", so a password holding one was shown as the piece before it, 'redis://:Xk9fQ2' (a second
    review). It says what to do: percent-encode the password."""
    from django_aio_request.checks import check_breaker_cache_backend

    shared = {"BACKEND": REDIS, "LOCATION": f"redis://{userinfo}@127.0.0.1:6379/10"}
    with override_settings(
        CACHES={"default": LOCMEM, "shared": shared}, AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"}
    ):
        (error,) = check_breaker_cache_backend()
    assert error.id == "django_aio_request.E008"
    said = f"{error.msg} {error.hint}"
    assert "LOCATION" in error.msg
    assert not [part for part in re.split(r"[:/?#@,;\[\]\\]", userinfo) if len(part) >= 3 and part in said], said
    assert "percent-encode them" in error.msg


def test_a_redis_location_s_parser_words_are_given_when_it_holds_no_password() -> None:
    """The words of redis-py's parser are left out whenever the LOCATION holds a password (they quote
    it in ways no part of it can be looked for in: repr's escapes, an address between brackets), and
    given whole when it holds none."""
    from django_aio_request.checks import check_breaker_cache_backend

    for location, words in (
        ("redis://127.0.0.1:6379/0?socket_timeout=abc", "Invalid value for 'socket_timeout'"),
        ("redis://127.0.0.1:99999/0", "Port out of range"),
        ("redis://:s3cret@127.0.0.1:99999/0", "redis-py's words are left out"),
    ):
        with override_settings(
            CACHES={"default": LOCMEM, "shared": {"BACKEND": REDIS, "LOCATION": location}},
            AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"},
        ):
            (error,) = check_breaker_cache_backend()
        assert words in error.msg
        assert "s3cret" not in error.msg


def test_a_breaker_cache_backend_that_is_no_cache_is_an_error() -> None:
    """``builtins.dict`` imports: this app's check passed, and Django's own ended in a traceback (a review)."""
    from django_aio_request.checks import check_breaker_cache_backend

    shared = {"BACKEND": "builtins.dict", "LOCATION": "x"}
    with override_settings(
        CACHES={"default": LOCMEM, "shared": shared}, AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"}
    ):
        (error,) = check_breaker_cache_backend()
    assert error.id == "django_aio_request.E008"
    assert "is no cache backend" in error.msg


def test_a_breaker_cache_given_as_any_mapping_is_checked_as_a_dict() -> None:
    """A breaker cache (or its OPTIONS) given as a MappingProxyType, which Django opens as it opens a
    dict, was skipped by E008 and W010 without a word."""
    from django_aio_request.checks import check_breaker_cache_backend

    bad = types.MappingProxyType({"BACKEND": "no.such.module.Cache", "LOCATION": "redis://127.0.0.1:6379/0"})
    with override_settings(CACHES={"default": LOCMEM, "shared": bad}, AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"}):
        assert [e.id for e in check_breaker_cache_backend()] == ["django_aio_request.E008"]
    unbounded = types.MappingProxyType(
        {
            "BACKEND": REDIS,
            "LOCATION": "redis://127.0.0.1:6379/0",
            "OPTIONS": types.MappingProxyType({"socket_timeout": 0, "socket_connect_timeout": 0}),
        }
    )
    with override_settings(
        CACHES={"default": LOCMEM, "shared": unbounded}, AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"}
    ):
        assert [w.id for w in check_breaker_cache_timeouts()] == ["django_aio_request.W010"]


@pytest.mark.parametrize(
    ("backend", "django_says"),
    [
        ("no.such.module.Cache", "InvalidCacheBackendError: Could not find backend 'no.such.module.Cache'"),
        (None, "KeyError: 'BACKEND'"),
    ],
)
def test_a_breaker_cache_without_a_usable_backend_is_e008_only_under_the_app_s_tag(
    tmp_path: Path, backend: Any, django_says: str
) -> None:
    """As docs/checks.md (E008) and the README say: Django's own cache check opens every cache of
    settings.CACHES before this app's checks run, so plain ``check`` and ``migrate`` end in Django's
    traceback naming the backend; ``check --tag django_aio_request`` runs only this app's and shows
    E008. If a Django stops raising there, this test says the docs must change."""
    shared = {"LOCATION": "redis://127.0.0.1:6379/0", **({} if backend is None else {"BACKEND": backend})}
    (tmp_path / "unusable_backend_settings.py").write_text(
        "from tests.support.settings_breaker_cache import *  # noqa: F403\n"
        f"CACHES = {{**CACHES, 'breakers': {shared!r}}}\n"
    )
    for command in (["check"], ["migrate"]):
        result = manage(*command, settings="unusable_backend_settings", path=tmp_path)
        assert result.returncode == 1, result.stderr
        assert "Traceback" in result.stderr
        assert django_says in result.stderr.strip().splitlines()[-1], result.stderr
        assert "django_aio_request.E008" not in result.stderr
    result = manage("check", "--tag", "django_aio_request", settings="unusable_backend_settings", path=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "django_aio_request.E008" in result.stderr


@pytest.mark.parametrize(
    ("cache", "django_says", "app_says"),
    [
        (
            {"BACKEND": REDIS, "LOCATION": "redis://127.0.0.1:6379/0", "KEY_FUNCTION": "no.such.make_key"},
            "ModuleNotFoundError: No module named 'no'",
            "has a KEY_FUNCTION that is no callable and no dotted path that imports (ModuleNotFoundError: No module",
        ),
        (  # Django reads a missing OPTIONS as {}, not None
            {"BACKEND": REDIS, "LOCATION": "redis://127.0.0.1:6379/0", "OPTIONS": None},
            "AttributeError: 'NoneType' object has no attribute 'get'",
            "has OPTIONS that are None, not a dict",
        ),
        (
            {"BACKEND": REDIS, "LOCATION": "redis://127.0.0.1:6379/0", "OPTIONS": ["socket_timeout", 1]},
            "AttributeError: 'list' object has no attribute 'get'",
            "has OPTIONS that are ['socket_timeout', 1], not a dict",
        ),
        (  # pymemcache is not in this project's dependencies
            {"BACKEND": "django.core.cache.backends.memcached.PyMemcacheCache", "LOCATION": "127.0.0.1:11211"},
            "ModuleNotFoundError: No module named 'pymemcache'",
            "uses django.core.cache.backends.memcached.PyMemcacheCache, whose client library 'pymemcache' cannot be",
        ),
    ],
)
def test_a_breaker_cache_django_cannot_make_is_e008_under_the_app_s_tag(
    tmp_path: Path, cache: dict[str, Any], django_says: str, app_says: str
) -> None:
    """A ``KEY_FUNCTION`` that cannot be imported, or ``OPTIONS`` given as a list: Django's own cache
    check ends plain ``check`` in its traceback, as for a missing backend (the docs say so), and this
    app's check passed both (a review: every sync round of the breakers would have failed)."""
    (tmp_path / "unmakeable_settings.py").write_text(
        "from tests.support.settings_breaker_cache import *  # noqa: F403\n"
        f"CACHES = {{**CACHES, 'breakers': {cache!r}}}\n"
    )
    result = manage("check", settings="unmakeable_settings", path=tmp_path)
    assert result.returncode == 1, result.stderr
    assert django_says in result.stderr.strip().splitlines()[-1], result.stderr
    result = manage("check", "--tag", "django_aio_request", settings="unmakeable_settings", path=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"(django_aio_request.E008) settings.CACHES['breakers'], the circuit breakers' shared state, {app_says}" in (
        result.stderr
    )


def test_a_breaker_cache_key_function_that_cannot_take_its_arguments_is_e008(tmp_path: Path) -> None:
    """Django makes the cache and calls the key function only when a key is made: plain ``check``
    passed ``os.getcwd``, and every sync round of the breakers raised ``TypeError``."""
    (tmp_path / "bad_key_settings.py").write_text(
        "from tests.support.settings_breaker_cache import *  # noqa: F403\n"
        "CACHES = {**CACHES, 'breakers': {'BACKEND': 'django.core.cache.backends.redis.RedisCache',"
        " 'LOCATION': 'redis://127.0.0.1:6379/0', 'KEY_FUNCTION': 'os.getcwd'}}\n"
    )
    result = manage("check", settings="bad_key_settings", path=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "has a KEY_FUNCTION that cannot take (key, key_prefix, version): ()" in result.stderr


WRAPPED_KEY_FUNCTION = """
import functools


def of_the_key(key):
    return f"app:{key}"


@functools.wraps(of_the_key)
def key_function(key, key_prefix, version):
    return of_the_key(key)


def full(key, key_prefix, version):
    return f"{key_prefix}:{version}:{key}"


@functools.wraps(full)
def of_the_key_alone(key):  # what the cache calls: the wrapper, with three arguments
    return full(key, "", 1)
"""


def test_a_breaker_cache_key_function_is_judged_by_its_own_signature_not_the_one_it_wraps(tmp_path: Path) -> None:
    """An adapter made with functools.wraps takes (key, key_prefix, version), and Django's cache works
    with it; judged by the signature wraps shows (the wrapped function's, ``(key)``), it was E008 and
    stopped plain ``check`` and ``migrate`` (a review)."""
    (tmp_path / "keys_adapter.py").write_text(WRAPPED_KEY_FUNCTION)
    (tmp_path / "wrapped_key_settings.py").write_text(
        "from tests.support.settings_breaker_cache import *  # noqa: F403\n"
        "CACHES = {**CACHES, 'breakers': {**CACHES['breakers'], 'KEY_FUNCTION': 'keys_adapter.key_function'}}\n"
    )
    result = manage("check", settings="wrapped_key_settings", path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "E008" not in result.stderr
    # The other way round: a wrapper of the key alone around a full one fails every call; judged by
    # the signature wraps shows, it passed (a review).
    (tmp_path / "narrow_key_settings.py").write_text(
        "from tests.support.settings_breaker_cache import *  # noqa: F403\n"
        "CACHES = {**CACHES, 'breakers': {**CACHES['breakers'], 'KEY_FUNCTION': 'keys_adapter.of_the_key_alone'}}\n"
    )
    result = manage("check", settings="narrow_key_settings", path=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "has a KEY_FUNCTION that cannot take (key, key_prefix, version): (key)" in result.stderr


def test_a_breaker_cache_key_function_given_as_a_lazy_string_passes(tmp_path: Path) -> None:
    """Django's get_key_func() imports a lazy string of a dotted path as it imports a str: the check
    refused it with E008 for a while, which stopped plain ``check`` and ``migrate`` (a review)."""
    (tmp_path / "lazy_key_settings.py").write_text(
        "from django.utils.functional import lazy\n"
        "from tests.support.settings_breaker_cache import *  # noqa: F403\n"
        "CACHES = {**CACHES, 'breakers': {**CACHES['breakers'],"
        " 'KEY_FUNCTION': lazy(lambda: 'django.core.cache.backends.base.default_key_func', str)()}}\n"
    )
    result = manage("check", "--tag", "django_aio_request", settings="lazy_key_settings", path=tmp_path)
    assert "E008" not in result.stderr, result.stderr
    result = manage("check", settings="lazy_key_settings", path=tmp_path)
    assert result.returncode == 0, result.stderr


_TIMED = "?socket_timeout=1&socket_connect_timeout=1"


@pytest.mark.parametrize(
    ("backend", "location", "warning"),
    [
        # Django's RedisCache splits on ";" or ",": the primary (every write) has no timeouts of its own
        (REDIS, f"redis://127.0.0.1:6379/0;redis://127.0.0.1:6379/1{_TIMED}", "sets no socket_timeout"),
        (REDIS, f"redis://127.0.0.1:6379/0{_TIMED};redis://127.0.0.1:6379/1{_TIMED}", None),
        (REDIS, f"redis://127.0.0.1:6379/0{_TIMED};redis://127.0.0.1:6379/1{_TIMED},redis://b:1/2{_TIMED}", None),
        # django-redis splits on "," only: ";" is part of the URL, and its timeout is not a number
        (DJANGO_REDIS, f"redis://a:1/0{_TIMED};redis://b:1/1{_TIMED}", "?socket_connect_timeout=1;redis://b:1/1"),
    ],
)
def test_a_location_is_split_into_urls_as_its_backend_splits_it(backend: str, location: str, warning: Any) -> None:
    """Split on "," only, a LOCATION of Django's RedisCache with ";" was read as one URL: no W010 for a
    primary without timeouts, and a wrong one ("?socket_connect_timeout=1;redis://... is not a number")
    when every URL set them."""
    caches = {"default": LOCMEM, "shared": {"BACKEND": backend, "LOCATION": location}}
    with override_settings(CACHES=caches, AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"}):
        found = check_breaker_cache_timeouts()
    if warning is None:
        assert found == []
        servers = RedisCache(location, {})._servers  # type: ignore[attr-defined]
        for url in servers:  # what redis-py gets, URL by URL: timed
            kwargs = redis.ConnectionPool.from_url(url).connection_kwargs
            assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (1.0, 1.0)
    else:
        (message,) = found
        assert message.id == "django_aio_request.W010"
        assert warning in message.msg, message.msg


def test_a_lazy_alias_is_judged_as_its_text() -> None:
    """A lazy string reads as the text it stands for (docs/checks.md): the settings reader took a lazy
    CIRCUIT_BREAKER_STATE, and this check skipped it (no W010 for the same cache a plain alias got)."""
    from django.utils.functional import lazy

    caches = {"default": LOCMEM, "shared": {"BACKEND": REDIS, "LOCATION": "redis://127.0.0.1:1/0"}}
    assert _ids(caches, {"CIRCUIT_BREAKER_STATE": lazy(str, str)("shared")}) == ["django_aio_request.W010"]


def test_a_breaker_cache_whose_client_library_is_not_installed_is_an_error(tmp_path: Path) -> None:
    """Django's RedisCache imports redis-py only when first used: without it ``check`` passed, and
    each process then logged that it counted on its own (ModuleNotFoundError), for good (a review)."""
    (tmp_path / "no_redis_settings.py").write_text(
        "import sys\n"
        "class NoRedis:  # redis-py not installed\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'redis' or name.startswith('redis.'):\n"
        "            raise ModuleNotFoundError(f\"No module named '{name}'\")\n"
        "sys.meta_path.insert(0, NoRedis())\n"
        "for name in [n for n in sys.modules if n == 'redis' or n.startswith('redis.')]:\n"
        "    del sys.modules[name]\n"
        "from tests.support.settings_breaker_cache import *  # noqa: F403\n"
    )
    result = manage("check", "--tag", "django_aio_request", settings="no_redis_settings", path=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "whose client library 'redis' cannot be imported" in result.stderr
    assert "(django_aio_request.E008)" in result.stderr
    assert "HINT: install it (pip install redis)" in result.stderr
    # W010 beside it says what redis-py does once installed; it read "(redis-py not installed sets none
    # by default; ...)" (a review)
    assert "(redis-py, not installed yet, sets none before 8.0 and 5 s from 8.0 on)" in result.stderr
    assert "not installed sets" not in result.stderr
    assert (
        manage("check", "--tag", "django_aio_request", settings="tests.support.settings_breaker_cache").returncode == 0
    )


@pytest.mark.parametrize(
    ("location", "options"),
    [
        ("rediss://127.0.0.1:6380/0", {"ssl_cert_reqs": "none"}),
        ("unix:///run/redis/redis.sock", {"path": "/run/redis/redis.sock"}),
        ("redis://127.0.0.1:6379/0", {"max_connections": 10, "health_check_interval": 30, "client_name": "x"}),
        ("redis://127.0.0.1:6379/0", {"pool_class": "redis.BlockingConnectionPool", "timeout": 5}),
    ],
)
def test_options_redis_py_takes_for_the_location_s_urls_are_not_reported(
    location: str, options: dict[str, Any]
) -> None:
    """What W010 names is what redis-py refuses for the connections this LOCATION makes: TLS's keywords
    on a ``rediss://`` URL, a socket path on ``unix://``, the pool's own; a pool class of your own is not judged."""
    timed = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0, **options}
    caches = {"default": LOCMEM, "shared": {"BACKEND": REDIS, "LOCATION": location, "OPTIONS": timed}}
    with override_settings(CACHES=caches, AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"}):
        assert check_breaker_cache_timeouts() == []


class MyRedisCache(RedisCache):
    """A project's own backend, a subclass of Django's."""


class CountedLocMemCache(LocMemCache):
    """As django-prometheus's (``django_prometheus.cache.backends.locmem``): Django's, counted."""


class CountedFileBasedCache(FileBasedCache):
    """As django-prometheus's ``FileBasedCache``."""


@pytest.mark.parametrize(
    ("backend", "warned"),
    [
        (f"{__name__}.CountedLocMemCache", "django_aio_request.W002"),
        (f"{__name__}.CountedFileBasedCache", "django_aio_request.W003"),
    ],
)
def test_a_subclass_of_a_per_process_or_lossy_backend_is_warned_of_as_its_base(backend: str, warned: str) -> None:
    """The backend was matched by its dotted path: django-prometheus's LocMemCache, which keeps its data
    in each process as Django's does, had no W002, and its FileBasedCache no W003 (a review)."""
    from django_aio_request.checks import check_settings

    caches = {"default": LOCMEM, "shared": {"BACKEND": backend, "LOCATION": "/tmp/aio-request-no-such-dir"}}
    with override_settings(CACHES=caches, AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"}):
        found = [message.id for message in check_settings()]
    assert found == [warned]


def test_a_subclass_of_django_s_redis_cache_without_timeouts_is_warned_of_as_django_s() -> None:
    """A one-line subclass of RedisCache had no W010, and redis-py's defaults held its rounds as Django's."""
    assert _warning(f"{__name__}.MyRedisCache", {}) == _warning(REDIS, {})
    assert _warning(f"{__name__}.MyRedisCache", {}) is not None
    assert _warning(f"{__name__}.MyRedisCache", {"socket_timeout": 1, "socket_connect_timeout": 1}) is None


@pytest.mark.parametrize(
    ("backend", "option"),
    [
        (REDIS, "parser_class"),
        (REDIS, "pool_class"),
        (REDIS, "serializer"),
        (f"{__name__}.MyRedisCache", "serializer"),
    ],
)
def test_an_option_naming_a_class_that_cannot_be_imported_is_an_error(backend: str, option: str) -> None:
    """Imported only when the cache is first used: check passed, and every sync round of the breakers
    failed with ImportError, each process counting alone for good (a review)."""
    from django_aio_request.checks import check_breaker_cache_backend

    shared = {"BACKEND": backend, "LOCATION": "redis://127.0.0.1:6379/0", "OPTIONS": {option: "redis.nope.Nothing"}}
    with override_settings(
        CACHES={"default": LOCMEM, "shared": shared}, AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"}
    ):
        (error,) = check_breaker_cache_backend()
    assert error.id == "django_aio_request.E008"
    assert f"OPTIONS[{option!r}] 'redis.nope.Nothing', which cannot be imported (ModuleNotFoundError" in error.msg
    importable = {**shared, "OPTIONS": {option: "builtins.object"}}
    with override_settings(
        CACHES={"default": LOCMEM, "shared": importable}, AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"}
    ):
        assert check_breaker_cache_backend() == []


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("?nosuchoption=1", ["nosuchoption"]),
        ("?socket_timeout=1&socket_connect_timeout=1&sockettimeout=1", ["sockettimeout"]),
        # a keyword of TLS connections on a redis:// URL: its plain connection refuses it too
        ("?socket_timeout=1&socket_connect_timeout=1&ssl_cert_reqs=none&db=10", ["ssl_cert_reqs"]),
        # Django's own OPTIONS names go to redis-py when written in a URL, and "self" is no keyword (a review)
        ("?socket_timeout=1&socket_connect_timeout=1&serializer=x", ["serializer"]),
        ("?socket_timeout=1&socket_connect_timeout=1&self=1", ["self"]),
    ],
)
def test_a_url_option_redis_py_does_not_take_is_warned_of_and_fails_at_each_connection(
    query: str, named: list[str]
) -> None:
    """redis-py's URL parser passes an option it does not know on, and each connection refuses it
    (TypeError): the check passed it, and every sync round failed. W010 now names it (on the real Redis)."""
    from django.core.cache import caches as django_caches

    from django_aio_request.checks import check_breaker_cache_backend

    shared = {"BACKEND": REDIS, "LOCATION": f"redis://127.0.0.1:6379/10{query}"}
    with override_settings(
        CACHES={"default": LOCMEM, "shared": shared}, AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"}
    ):
        assert check_breaker_cache_backend() == []  # no E008: W010 says it
        (warning,) = check_breaker_cache_timeouts()
        with pytest.raises(TypeError, match=named[0]):  # "unexpected keyword", or "multiple values" for self
            django_caches["shared"].get("django-aio-request-check-probe")
    assert warning.id == "django_aio_request.W010"
    assert "fails every command" in warning.msg
    for name in named:
        assert f"?{name}= is an option redis-py does not take" in warning.msg
    assert "leave out an option redis-py does not take" in str(warning.hint)


@pytest.mark.parametrize("name", sorted(_OBJECT_OPTIONS))
def test_a_url_option_redis_py_takes_only_as_an_object_is_warned_of(name: str) -> None:
    """``?retry=3``: redis-py takes ``retry``, as a ``Retry``; its URL parser hands the text on, and every
    command of the cache failed (``'str' object has no attribute 'call_with_retry'``) while the check
    passed it (a review). Each such option, on the real Redis: named by W010, and the cache fails."""
    from django.core.cache import caches as django_caches

    location = f"redis://127.0.0.1:6379/10?socket_timeout=1&socket_connect_timeout=1&{name}=1"
    with override_settings(
        CACHES={"default": LOCMEM, "shared": {"BACKEND": REDIS, "LOCATION": location}},
        AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"},
    ):
        (warning,) = check_breaker_cache_timeouts()
        key = f"django-aio-request-object-option-{name}"  # its own, kept 1 s: some writes go through

        def set_and_get() -> object:
            django_caches["shared"].set(key, 1.5, 1)
            return django_caches["shared"].get(key)

        with pytest.raises(Exception):  # noqa: B017, PT011 - what each raises is redis-py's to choose
            set_and_get()
    assert warning.id == "django_aio_request.W010"
    # ``cache`` and ``cache_config`` too, which the pool reads from its **kwargs (named as not taken at all
    # at first: a review)
    named = f"its LOCATION's ?{name}= is an option redis-py does not take as text, as a URL gives it"
    assert re.search(re.escape(named) + "[;:]", warning.msg), warning.msg
    assert "leave out an option redis-py does not take" in str(warning.hint)


@pytest.mark.parametrize("scheme", ["unix", "rediss"])
def test_the_connection_class_a_url_s_scheme_sets_is_not_warned_of(scheme: str) -> None:
    """redis-py's URL parser sets a ``unix://`` or ``rediss://`` URL's connection class itself, whatever
    ``?connection_class=`` says, and the cache works: W010 named it at first (a review)."""
    location = {
        "unix": "unix:///run/redis.sock?db=10&socket_timeout=1&socket_connect_timeout=1&connection_class=x",
        "rediss": "rediss://127.0.0.1:6379/10?socket_timeout=1&socket_connect_timeout=1&connection_class=x",
    }[scheme]
    expected = {"unix": redis.UnixDomainSocketConnection, "rediss": redis.SSLConnection}[scheme]
    assert redis.ConnectionPool.from_url(location).connection_class is expected
    with override_settings(
        CACHES={"default": LOCMEM, "shared": {"BACKEND": REDIS, "LOCATION": location}},
        AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"},
    ):
        assert check_breaker_cache_timeouts() == []
    # On redis:// the text is the class, and fails (the test above)
    assert redis.ConnectionPool.from_url(location.replace(f"{scheme}://", "redis://")).connection_class == "x"


def test_django_redis_url_options_are_judged_as_redis_py_reads_them() -> None:
    """django-redis makes its pool with redis-py's ``ConnectionPool.from_url``, as Django's ``RedisCache``
    does: ``?retry=3`` or ``?nosuchoption=1`` failed every command and passed the check (a review, with
    django-redis 7.0). Its own OPTIONS are not redis-py's. On the real Redis, through django-redis."""
    from django.core.cache import caches as django_caches

    location = "redis://127.0.0.1:6379/10?retry=3&nosuchoption=1"
    options = {"SOCKET_TIMEOUT": 1, "SOCKET_CONNECT_TIMEOUT": 1}
    for client in (
        {},
        {"CLIENT_CLASS": "django_redis.client.HerdClient"},
        {"CLIENT_CLASS": "tests.conf.test_breaker_cache_check.ProjectClient"},
    ):
        cache = {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": location, "OPTIONS": {**options, **client}}
        with override_settings(
            CACHES={"default": LOCMEM, "shared": cache}, AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"}
        ):
            (warning,) = check_breaker_cache_timeouts()
            with pytest.raises(Exception):  # noqa: B017, PT011 - redis-py's TypeError or AttributeError
                django_caches["shared"].get("django-aio-request-check-probe")
        assert "its LOCATION's ?nosuchoption= is an option redis-py does not take:" in warning.msg.replace(";", ":")
        assert "its LOCATION's ?retry= is an option redis-py does not take as text" in warning.msg
        assert "OPTIONS" not in warning.msg.partition(":")[2]  # django-redis's own OPTIONS are not redis-py's
        assert "a replica's or a shard's" not in warning.msg  # one URL
    # The cache without them works, and is not warned of
    cache = {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": "redis://127.0.0.1:6379/10", "OPTIONS": options}
    with override_settings(
        CACHES={"default": LOCMEM, "shared": cache}, AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"}
    ):
        assert check_breaker_cache_timeouts() == []
        assert django_caches["shared"].get("django-aio-request-check-probe") is None


@pytest.mark.parametrize(
    ("own", "location", "setting", "named"),
    [
        # Its Sentinel factory takes ?is_master= out of each URL, and its pool takes ?check_connection=:
        # W010 said django-redis's own README's example failed every command, and it worked (a review)
        (
            {"CONNECTION_FACTORY": "django_redis.pool.SentinelConnectionFactory"},
            ["redis://mymaster/10?is_master=1", "redis://mymaster/10?is_master=0&check_connection=true"],
            {},
            [],
        ),
        (
            {"CLIENT_CLASS": "django_redis.client.SentinelClient"},
            "redis://mymaster/10?is_master=0",
            {"DJANGO_REDIS_CONNECTION_FACTORY": "django_redis.pool.SentinelConnectionFactory"},
            [],
        ),
        # ... but a Sentinel URL's ?retry=3 fails every command as any other: named (skipped at first: a review)
        (
            {"CONNECTION_FACTORY": "django_redis.pool.SentinelConnectionFactory"},
            "redis://mymaster/10?is_master=0&retry=3",
            {},
            ["retry"],
        ),
        # django-redis's README's form, its pool class named; and a Sentinel cache over TLS, whose pool takes
        # ?ssl= and the TLS options (W010 named them of such a cache that worked: a review)
        (
            {
                "CONNECTION_FACTORY": "django_redis.pool.SentinelConnectionFactory",
                "CONNECTION_POOL_CLASS": "redis.sentinel.SentinelConnectionPool",
            },
            "redis://mymaster/10?is_master=0&retry=3",
            {},
            ["retry"],
        ),
        (
            {"CONNECTION_FACTORY": "django_redis.pool.SentinelConnectionFactory"},
            "redis://tlsmaster/10?ssl=true&ssl_cert_reqs=none&service_name=mymaster",
            {},
            [],
        ),
        # The plain factory's own pool class, named, is judged too
        (
            {"CONNECTION_POOL_CLASS": "redis.connection.ConnectionPool"},
            "redis://127.0.0.1:6379/10?retry=3",
            {},
            ["retry"],
        ),
        # A factory given as None or "" is django-redis's setting's, or its plain one
        ({"CONNECTION_FACTORY": ""}, "redis://127.0.0.1:6379/10?retry=3", {}, ["retry"]),
        (
            {"CONNECTION_FACTORY": None},
            "redis://mymaster/10?is_master=0",
            {"DJANGO_REDIS_CONNECTION_FACTORY": "django_redis.pool.SentinelConnectionFactory"},
            [],
        ),
        # Pools django-redis may make otherwise: not judged
        ({"CONNECTION_POOL_CLASS": "myproject.Pool"}, "redis://127.0.0.1:6379/10?retry=3", {}, []),
        ({"CONNECTION_POOL_KWARGS": {"connection_class": object}}, "redis://127.0.0.1:6379/10?retry=3", {}, []),
        ({"CONNECTION_FACTORY": "myproject.Factory"}, "redis://127.0.0.1:6379/10?retry=3", {}, []),
        ({"CLIENT_CLASS": "myproject.NoSuchClient"}, "redis://127.0.0.1:6379/10?retry=3", {}, []),
    ],
)
def test_django_redis_url_options_are_judged_by_the_factory_that_reads_them(
    own: dict[str, object], location: object, setting: dict[str, object], named: list[str]
) -> None:
    cache = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": location,
        "OPTIONS": {"SOCKET_TIMEOUT": 1, "SOCKET_CONNECT_TIMEOUT": 1, **own},
    }
    with override_settings(
        CACHES={"default": LOCMEM, "shared": cache}, AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"}, **setting
    ):
        found = check_breaker_cache_timeouts()
    names = ("is_master", "check_connection", "ssl", "ssl_cert_reqs", "service_name", "retry")
    said = [name for name in names if found and f"?{name}=" in found[0].msg]
    assert said == named, found


def test_several_urls_are_said_to_fail_what_goes_to_the_one_with_the_option() -> None:
    """A replica's URL with ``?retry=3`` fails the reads that go there, not every command (a review)."""
    location = ["redis://127.0.0.1:6379/10", "redis://127.0.0.1:6379/11?retry=3"]
    cache = {"BACKEND": REDIS, "LOCATION": location}
    with override_settings(
        CACHES={"default": LOCMEM, "shared": cache}, AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"}
    ):
        (warning,) = check_breaker_cache_timeouts()
    assert "(where one URL of several has it, a replica's or a shard's, those that go there)" in warning.msg


SHARED_STATE = {"CIRCUIT_BREAKER_STATE": "shared"}


class ProjectClient(DefaultClient):  # type: ignore[misc]  # django-redis has no type hints
    """A project's own django-redis client (a subclass of its DefaultClient): its pools are django-redis's."""


@pytest.mark.parametrize(
    "location",
    [
        "redis://127.0.0.1:6379/10?socket_timeout=1&socket_connect_timeout=1&client_name=probe&health_check_interval=30",
        "redis://127.0.0.1:6379/10?socket_timeout=1&socket_connect_timeout=1&max_connections=4&protocol=3",
    ],
)
def test_url_options_redis_py_takes_are_not_reported(location: str) -> None:
    """The pool's and the connection's own options in a URL pass, and the cache works (on the real Redis)."""
    from django.core.cache import caches as django_caches

    caches = {"default": LOCMEM, "shared": {"BACKEND": REDIS, "LOCATION": location}}
    with override_settings(CACHES=caches, AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"}):
        assert check_breaker_cache_timeouts() == []
        assert django_caches["shared"].get("django-aio-request-check-probe") is None


@pytest.mark.parametrize(
    ("location", "parts"),
    [
        # a password holding a "?": what follows is read as the URL's options
        (
            "redis://:Xk9f?sec=ret42@127.0.0.1:6379/10?socket_timeout=1&socket_connect_timeout=1",
            ["Xk9f", "sec", "ret42"],
        ),
        # a password given as an option (redis-py reads ?password=), holding an "&" (a review)
        (
            "redis://127.0.0.1:6379/10?socket_timeout=1&socket_connect_timeout=1&password=Tr0ub4dor&3horsebattery=staple",
            ["Tr0ub4dor", "3horsebattery", "staple"],
        ),
        (
            ["redis://127.0.0.1:6379/10?socket_timeout=1&socket_connect_timeout=1&password=Tr0ub4dor&3horsebattery=x"],
            ["Tr0ub4dor", "3horsebattery"],
        ),
    ],
)
def test_a_url_option_of_a_location_with_a_password_is_warned_of_without_its_name(
    location: str | list[str], parts: list[str]
) -> None:
    """Naming such an option would quote the password. The warning says there are options redis-py does
    not take and how to write the password, and quotes none of it."""
    caches = {"default": LOCMEM, "shared": {"BACKEND": REDIS, "LOCATION": location}}
    with override_settings(CACHES=caches, AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"}):
        (warning,) = check_breaker_cache_timeouts()
    assert "has URL options redis-py does not take" in warning.msg
    assert "percent-encode" in warning.msg
    for part in parts:
        assert part not in warning.msg + str(warning.hint)


@pytest.mark.parametrize(
    "location",
    [
        "redis://127.0.0.1:6379/10?socket_connect_timeout=1&password=Tr0ub4dor&socket_timeout=3horsebattery",
        "redis://127.0.0.1:6379/10?socket_connect_timeout=1&pass\tword=Tr0ub4dor&socket_timeout=3horsebattery",
        "redis://:Tr0ub?socket_timeout=3horsebattery@127.0.0.1:6379/10",
    ],
)
def test_a_url_timeout_of_a_location_with_a_password_is_judged_without_its_value(location: str) -> None:
    """A password holding "&socket_timeout=" made W010 quote its tail as the timeout's value (a review).
    With credentials in the LOCATION the value is left out; the warning still says it is unusable."""
    caches = {"default": LOCMEM, "shared": {"BACKEND": REDIS, "LOCATION": location}}
    with override_settings(CACHES=caches, AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"}):
        (warning,) = check_breaker_cache_timeouts()
    assert "?socket_timeout=(left out) is not a number of seconds" in warning.msg
    for part in ("Tr0ub", "3horsebattery"):
        assert part not in warning.msg + str(warning.hint)


def test_a_password_option_cut_at_a_separator_is_not_quoted_by_e008() -> None:
    """Django splits a LOCATION at ";": a ``?password=`` holding one was cut there, and E008 named the
    piece after it as "no redis:// URL" (a review). The whole LOCATION is shown, without its options."""
    from django_aio_request.checks import check_breaker_cache_backend

    location = "redis://127.0.0.1:6379/10?password=Tr0ub4dor;3horsebattery"
    caches = {"default": LOCMEM, "shared": {"BACKEND": REDIS, "LOCATION": location}}
    with override_settings(CACHES=caches, AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"}):
        (error,) = check_breaker_cache_backend()
    assert error.id == "django_aio_request.E008"
    assert "'redis://127.0.0.1:6379/10?***'" in error.msg
    for part in ("Tr0ub4dor", "3horsebattery"):
        assert part not in error.msg + str(error.hint)


@pytest.mark.parametrize(
    ("location", "options"),
    [
        ("rediss://127.0.0.1:6380/10?socket_keepalive=true&host=127.0.0.1", {}),
        ("rediss://127.0.0.1:6380/10", {"socket_keepalive": True}),
    ],
)
def test_a_tls_url_takes_what_a_plain_connection_takes(location: str, options: dict[str, Any]) -> None:
    """redis-py's TLS connection hands what it does not name to the plain one: ``socket_keepalive`` on a
    ``rediss://`` URL or in OPTIONS was named as refused, and the cache worked (a review, with a TLS
    Redis). Here the connection is made without connecting, as the cache makes it."""
    timed = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0, **options}
    caches = {"default": LOCMEM, "shared": {"BACKEND": REDIS, "LOCATION": location, "OPTIONS": timed}}
    with override_settings(CACHES=caches, AIO_REQUEST={"CIRCUIT_BREAKER_STATE": "shared"}):
        assert check_breaker_cache_timeouts() == []
    pool = redis.ConnectionPool.from_url(location, **timed)
    assert isinstance(pool.make_connection(), redis.SSLConnection)  # takes the keywords, connects later
