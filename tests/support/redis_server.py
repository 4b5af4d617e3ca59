"""The Redis server behind the ``shared`` cache alias of settings.test (AIO_REQUEST_TEST_REDIS_URL).

``require_redis()`` skips the calling test when the server cannot be reached, or, with ``CI=true``,
fails it: CI must run these tests (.ci/services.sh starts a server).
"""

import functools
import os
import shutil
import subprocess
import time

import pytest

URL_ENV = "AIO_REQUEST_TEST_REDIS_URL"


@functools.cache
def unreachable() -> str | None:
    """Why the server cannot be used, or None when it answers."""
    from django.conf import settings

    url = settings.CACHES["shared"]["LOCATION"]
    try:
        import redis
    except ImportError:
        return f"the redis package is not installed (pip install -e '.[test]'), needed for Redis at {url}"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2).ping()
    except redis.RedisError as error:
        return f"Redis not reachable at {url} ({error}); start it (.ci/services.sh) or set {URL_ENV}"
    return None


def require_redis() -> None:
    reason = unreachable()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the Redis tests must run, not be skipped)", pytrace=False)
    pytest.skip(reason)


class RedisProcess:
    """A throwaway redis-server on ``port`` (for outage and recovery tests); None if the binary is missing."""

    def __init__(self, port: int) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server")
        self.port = port
        self.process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(port=port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
