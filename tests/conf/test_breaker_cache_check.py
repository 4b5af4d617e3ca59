"""``manage.py check`` warns (django_aio_request.W010) when the breakers' shared cache has no socket
timeouts, and never crashes on the settings it looks at."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
from django.test import override_settings

from django_aio_request.checks import check_breaker_cache_timeouts

ROOT = Path(__file__).resolve().parents[2]
REDIS = "django.core.cache.backends.redis.RedisCache"
LOCMEM = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}


def _ids(caches: Any, aio_request: Any) -> list[str]:
    with override_settings(CACHES=caches, AIO_REQUEST=aio_request):
        return [message.id for message in check_breaker_cache_timeouts() if message.id is not None]


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


def test_manage_py_check_shows_the_warning() -> None:
    """As an operator runs it: manage.py in a subprocess, with settings naming a Redis without timeouts."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.support.settings_breaker_cache", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--tag", "django_aio_request"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr  # a warning, not an error
    assert "django_aio_request.W010" in result.stderr
    assert "socket_timeout" in result.stderr
