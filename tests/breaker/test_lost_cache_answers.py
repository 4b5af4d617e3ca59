"""The breaker's shared state when the cache did a write but its answer was lost: a Redis that
stalls past its clients' socket timeout right after the write (a real redis-server of the test's
own, behind a proxy that loses the answer to one request: tests/support/answer_losing_proxy.py).
The write is then made and the store cannot know it: it must count nothing twice, and must not take
a claim it made for someone else's."""

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.cache import caches
from django.test import override_settings

from django_aio_request import CircuitState
from django_aio_request.breaker.cache_store import CacheCircuitStore
from tests.breaker.test_cache_store import LOGGER, breaker_with, run, state_of, wait_for
from tests.support.answer_losing_proxy import AnswerLosingProxy
from tests.support.loopback import free_port
from tests.support.redis_server import RedisProcess


class Lossy:
    """A redis-server of the test's own, reached through the proxy as the cache alias ``lossy``
    (0.2 s socket timeouts), and a client of the server itself to read what it holds."""

    def __init__(self, server: RedisProcess, proxy: AnswerLosingProxy) -> None:
        import redis

        self.proxy = proxy
        self.raw = redis.Redis(port=server.port)
        self.namespace = f"lost-{uuid.uuid4().hex[:12]}"
        self.stores: list[CacheCircuitStore] = []

    def store(self) -> CacheCircuitStore:
        store = CacheCircuitStore(
            "lossy", connect=lambda: caches.create_connection("lossy"), namespace=self.namespace, sync_interval=0.05
        )
        self.stores.append(store)
        return store

    def failures(self) -> int:
        """The failures counted in the cache, every window's."""
        return sum(int(self.raw.get(key) or 0) for key in self.raw.keys(f"*{self.namespace}*:f"))


@pytest.fixture
def lossy() -> Iterator[Lossy]:
    try:
        server = RedisProcess(free_port())
    except FileNotFoundError:
        pytest.fail("redis-server is not installed (.ci/services.sh installs it)")
    proxy = AnswerLosingProxy(server.port)
    cache = {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": f"redis://127.0.0.1:{proxy.port}/0",
        "OPTIONS": {"socket_timeout": 0.2, "socket_connect_timeout": 0.2},
    }
    caches_setting: dict[str, Any] = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    made = None
    try:
        with override_settings(CACHES={**caches_setting, "lossy": cache}):
            made = Lossy(server, proxy)
            yield made
    finally:
        for store in made.stores if made is not None else []:
            store.close()
        proxy.close()
        server.stop()


@pytest.mark.timeout(30)
def test_outcomes_whose_count_s_answer_was_lost_are_counted_once(
    lossy: Lossy, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/circuit-breaker.md: each outcome is counted once, by the process that saw it. The add
    to a count whose answer was lost was made: read back and added again, it counted the batch
    twice (7 failures in the cache for 4), in every process's view, with no warning."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    store = lossy.store()
    breaker = breaker_with(store, minimum_throughput=1000)
    run(breaker, False)
    assert wait_for(lambda: lossy.failures() == 1)
    lossy.proxy.lose_answer_to(b"INCRBY")
    for _ in range(3):
        run(breaker, False)
    assert lossy.proxy.lost.wait(5), "no count's answer was lost: the test tests nothing"
    time.sleep(0.5)  # the socket timeout (0.2 s), and rounds after it
    assert wait_for(lambda: store.healthy)
    assert lossy.failures() == 4
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(messages) == 2, messages
    assert "'lossy' failed" in messages[0]
    assert "answers again" in messages[1]


@pytest.mark.timeout(30)
def test_a_probe_claim_whose_answer_was_lost_is_still_this_process_s(lossy: Lossy) -> None:
    """docs/circuit-breaker.md: after a break, one process of all sends the probe. A claim the cache
    made while its answer was lost left no process knowing it held it: every claim of the block
    failed on it and nobody probed until it expired, two breaks later (a review: the probe due
    2 s after the break went 6.5 s after it, with a 2 s break)."""
    store = lossy.store()
    breaker = breaker_with(store, minimum_throughput=2, break_duration=1.0)
    run(breaker, False)
    run(breaker, False)
    assert wait_for(lambda: state_of(breaker) is CircuitState.OPEN)
    time.sleep(1.1)  # the break is over: the next call asks for the probe
    lossy.proxy.lose_answer_to(b":probe:")
    assert run(breaker, True) == "fallback"
    assert lossy.proxy.lost.wait(5), "no claim's answer was lost: the test tests nothing"
    assert wait_for(lambda: not store.healthy)  # its round failed
    assert wait_for(lambda: store.healthy)  # and the next one answered
    # From here the key's two breaks are 0.8 s away at the least: the probe goes well before.
    probed_at = None
    started = time.monotonic()
    while time.monotonic() - started < 0.6:
        if run(breaker, True) == "ran":
            probed_at = time.monotonic() - started
            break
        time.sleep(0.02)
    assert probed_at is not None, "no probe went while the lost claim held the block"
    assert wait_for(lambda: state_of(breaker) is CircuitState.CLOSED)
