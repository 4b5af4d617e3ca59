"""Priority-aware load shedding: the limiter on its own, its settings, and AioRequestMiddleware with it
on (sync views in threads and async views), with in-flight requests held exactly by blocking views."""

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse
from django.test import AsyncClient, Client
from django.urls import path
from prometheus_client import REGISTRY
from pytest_django.fixtures import Settings

from django_aio_request import Priority, clients
from django_aio_request.conf.schema import read_settings
from django_aio_request.server.shedding import ADMITTED, ConcurrencyLimiter

MIDDLEWARE = "django_aio_request.middleware.AioRequestMiddleware"
HIGH, NORMAL, LOW = Priority.HIGH, Priority.NORMAL, Priority.LOW

pytestmark = pytest.mark.urls(__name__)

# Views: "block" holds its request in flight until the gate opens; "ok" answers at once.
gate = threading.Event()
agate: dict[str, asyncio.Event] = {}


def block(request: HttpRequest) -> HttpResponse:
    if not gate.wait(10):
        return HttpResponse(b"gate never opened", status=500)
    return HttpResponse(b"done")


async def ablock(request: HttpRequest) -> HttpResponse:
    await asyncio.wait_for(agate["event"].wait(), 10)
    return HttpResponse(b"done")


def ok(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"ok")


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("the view failed")


urlpatterns = [path("block", block), path("ablock", ablock), path("ok", ok), path("boom", boom)]


def shedding(**keys: Any) -> dict[str, Any]:
    return {"SERVICE_NAME": "tests", "TIMEOUT": 7.0, "MAX_TIMEOUT": 30.0, "SHEDDING": keys}


@pytest.fixture(autouse=True)
def _middleware(settings: Settings) -> Iterator[None]:
    settings.MIDDLEWARE = [MIDDLEWARE]
    gate.clear()
    yield
    gate.set()


def shed(priority: str, reason: str) -> float:
    return REGISTRY.get_sample_value("aio_request_server_shed_total", {"priority": priority, "reason": reason}) or 0.0


def wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.002)


def in_flight() -> int:
    conf = clients.settings.shedding
    assert conf is not None
    return conf.limiter.in_flight


def headers(priority: Priority, timeout: float | None = None) -> dict[str, str]:
    sent = {"X-Request-Priority": priority.value}
    if timeout is not None:
        sent["X-Request-Timeout"] = str(timeout)
    return sent


class Held:
    """Requests to the blocking view, each on its own thread, held in flight until the gate opens."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.statuses: list[int] = []

    def start(self, priority: Priority, timeout: float | None = None) -> None:
        before = in_flight()

        def run() -> None:
            self.statuses.append(Client().get("/block", headers=headers(priority, timeout)).status_code)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.threads.append(thread)
        wait_until(lambda: in_flight() == before + 1)

    def finish(self) -> list[int]:
        gate.set()
        for thread in self.threads:
            thread.join(10)
        return self.statuses


def get(priority: Priority, timeout: float | None = None, url: str = "/block") -> Any:
    return Client().get(url, headers=headers(priority, timeout))


# The limiter on its own.


def test_limits_keep_reserves_for_higher_priorities() -> None:
    limiter = ConcurrencyLimiter(10, high_priority_reserve=0.2, normal_priority_reserve=0.2)
    assert (limiter.limit(HIGH), limiter.limit(NORMAL), limiter.limit(LOW)) == (10, 8, 6)
    for _ in range(6):
        assert limiter.try_acquire(LOW, None) is ADMITTED
    refused = limiter.try_acquire(LOW, None)
    assert (refused.admitted, refused.reason, refused.retry_after, refused.do_not_retry) == (
        False,
        "capacity",
        1,
        False,
    )
    assert limiter.try_acquire(NORMAL, None).admitted
    assert limiter.try_acquire(NORMAL, None).admitted
    assert not limiter.try_acquire(NORMAL, None).admitted  # normal may not take the high reserve
    assert limiter.try_acquire(HIGH, None).admitted
    assert limiter.try_acquire(HIGH, None).admitted
    assert not limiter.try_acquire(HIGH, None).admitted  # every slot taken
    assert limiter.in_flight == 10
    limiter.release()
    assert not limiter.try_acquire(NORMAL, None).admitted  # a freed slot is still in the high reserve
    assert limiter.try_acquire(HIGH, None).admitted


def test_high_priority_alone_may_use_all_the_capacity() -> None:
    limiter = ConcurrencyLimiter(4, high_priority_reserve=0.5, normal_priority_reserve=0.25)
    assert (limiter.limit(HIGH), limiter.limit(NORMAL), limiter.limit(LOW)) == (4, 2, 1)
    assert all(limiter.try_acquire(HIGH, 5.0).admitted for _ in range(4))
    assert not limiter.try_acquire(HIGH, 5.0).admitted


def test_short_deadlines_are_shed_first_whatever_their_priority() -> None:
    limiter = ConcurrencyLimiter(10, min_time_to_serve=0.5, retry_after=1)
    short = limiter.try_acquire(HIGH, 0.1)
    assert short is ADMITTED  # no pressure yet: served
    for _ in range(5):
        limiter.try_acquire(LOW, None)
    assert limiter.in_flight == 6  # the low limit: low is shed from here on, and so are short deadlines
    refused = limiter.try_acquire(HIGH, 0.1)
    assert (refused.admitted, refused.reason, refused.do_not_retry) == (False, "deadline", True)
    assert limiter.try_acquire(HIGH, 0.6).admitted  # enough time left: the reserve is there for it
    assert limiter.try_acquire(NORMAL, 0.6).admitted


def test_do_not_retry_when_the_deadline_ends_before_retry_after() -> None:
    limiter = ConcurrencyLimiter(1, high_priority_reserve=0, normal_priority_reserve=0, retry_after=2)
    limiter.try_acquire(HIGH, None)
    assert limiter.try_acquire(HIGH, 1.5).do_not_retry
    assert not limiter.try_acquire(HIGH, 2.5).do_not_retry
    assert not limiter.try_acquire(HIGH, None).do_not_retry
    assert limiter.try_acquire(HIGH, 2.5).retry_after == 2


def test_limiter_refuses_bad_arguments_and_unbalanced_release() -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        ConcurrencyLimiter(0)
    with pytest.raises(ValueError, match="reserves"):
        ConcurrencyLimiter(10, high_priority_reserve=0.6, normal_priority_reserve=0.4)
    with pytest.raises(RuntimeError, match="release"):
        ConcurrencyLimiter(1).release()


def test_limiter_is_thread_safe() -> None:
    limiter = ConcurrencyLimiter(5, high_priority_reserve=0.2, normal_priority_reserve=0.2)
    limits = {HIGH: 5, NORMAL: 4, LOW: 3}
    lock = threading.Lock()
    held = [0]
    over: list[tuple[Priority, int]] = []
    start = threading.Barrier(12)

    def hammer(priority: Priority) -> None:
        start.wait()
        for _ in range(3000):
            if limiter.try_acquire(priority, None).admitted:
                with lock:
                    held[0] += 1
                    if held[0] > limits[priority]:
                        over.append((priority, held[0]))
                with lock:
                    held[0] -= 1
                limiter.release()

    threads = [threading.Thread(target=hammer, args=(p,)) for p in (HIGH, NORMAL, LOW) * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert over == []
    assert limiter.in_flight == 0


# Settings.


def test_shedding_is_off_by_default() -> None:
    parsed, problems = read_settings({})
    assert parsed is not None
    assert parsed.shedding is None
    assert problems == []
    parsed, _ = read_settings({"SHEDDING": None})
    assert parsed is not None
    assert parsed.shedding is None


def test_settings_are_read_with_defaults() -> None:
    parsed, problems = read_settings({"SHEDDING": {"MAX_CONCURRENCY": 8}})
    assert parsed is not None
    assert problems == []
    conf = parsed.shedding
    assert conf is not None
    assert (conf.max_concurrency, conf.high_priority_reserve, conf.normal_priority_reserve) == (8, 0.2, 0.2)
    assert (conf.min_time_to_serve, conf.retry_after) == (0.0, 1)
    assert conf.limiter.limit(LOW) == 6


@pytest.mark.parametrize(
    ("shedding", "message"),
    [
        ({}, "AIO_REQUEST['SHEDDING']['MAX_CONCURRENCY'] is required when SHEDDING is set"),
        ({"MAX_CONCURRENCY": 0}, "['MAX_CONCURRENCY'] must be a whole number >= 1, not 0"),
        ({"MAX_CONCURRENCY": 4.5}, "['MAX_CONCURRENCY'] must be a whole number >= 1, not 4.5"),
        ({"MAX_CONCURRENCY": 4, "HIGH_PRIORITY_RESERVE": 1}, "['HIGH_PRIORITY_RESERVE'] must be a share"),
        ({"MAX_CONCURRENCY": 4, "HIGH_PRIORITY_RESERVE": 0.6, "NORMAL_PRIORITY_RESERVE": 0.4}, "must be less than 1"),
        ({"MAX_CONCURRENCY": 4, "MIN_TIME_TO_SERVE": -1}, "['MIN_TIME_TO_SERVE'] must be a number of seconds"),
        ({"MAX_CONCURRENCY": 4, "RETRY_AFTER": 0.5}, "['RETRY_AFTER'] must be a whole number >= 0"),
        ({"MAX_CONCURRENCY": 4, "LIMIT": 3}, "['SHEDDING']['LIMIT'] is not a known key"),
        (8, "AIO_REQUEST['SHEDDING'] must be a dict, not int"),
    ],
)
def test_invalid_settings_are_reported(shedding: Any, message: str) -> None:
    parsed, problems = read_settings({"SHEDDING": shedding})
    assert parsed is None
    assert any(message in str(problem) for problem in problems), [str(p) for p in problems]


# The middleware, sync views (each request on its own thread).


def test_off_by_default_nothing_is_shed(settings: Settings) -> None:
    settings.AIO_REQUEST = {"SERVICE_NAME": "tests"}
    assert clients.settings.shedding is None
    finished: list[int] = []
    threads = [threading.Thread(target=lambda: finished.append(get(LOW).status_code), daemon=True) for _ in range(12)]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    gate.set()
    for thread in threads:
        thread.join(10)
    assert finished == [200] * 12


def test_at_the_limit_low_is_shed_before_normal_before_high(settings: Settings) -> None:
    settings.AIO_REQUEST = shedding(MAX_CONCURRENCY=5, HIGH_PRIORITY_RESERVE=0.2, NORMAL_PRIORITY_RESERVE=0.2)
    before = {p: shed(p.value, "capacity") for p in Priority}
    held = Held()
    for _ in range(3):
        held.start(LOW)
    response = get(LOW)  # the low limit (3) is reached
    assert response.status_code == 503
    assert response["Retry-After"] == "1"
    assert "X-Do-Not-Retry" not in response  # 7 s left: a retry after 1 s may succeed
    held.start(NORMAL)  # normal still fits (limit 4)
    assert get(NORMAL).status_code == 503
    held.start(HIGH)  # high takes its reserve (limit 5)
    assert get(HIGH).status_code == 503
    assert in_flight() == 5
    assert held.finish() == [200] * 5
    assert in_flight() == 0
    assert {p: shed(p.value, "capacity") - before[p] for p in Priority} == {HIGH: 1, NORMAL: 1, LOW: 1}
    assert get(LOW, url="/ok").status_code == 200  # capacity is back


def test_high_priority_uses_its_reserve(settings: Settings) -> None:
    settings.AIO_REQUEST = shedding(MAX_CONCURRENCY=4, HIGH_PRIORITY_RESERVE=0.5, NORMAL_PRIORITY_RESERVE=0)
    held = Held()
    held.start(NORMAL)
    held.start(NORMAL)
    assert get(NORMAL).status_code == 503
    assert get(LOW).status_code == 503
    held.start(HIGH)
    held.start(HIGH)
    assert get(HIGH).status_code == 503
    assert held.finish() == [200] * 4


def test_do_not_retry_when_the_deadline_is_shorter_than_retry_after(settings: Settings) -> None:
    settings.AIO_REQUEST = shedding(
        MAX_CONCURRENCY=1, HIGH_PRIORITY_RESERVE=0, NORMAL_PRIORITY_RESERVE=0, RETRY_AFTER=2
    )
    held = Held()
    held.start(HIGH)
    short = get(HIGH, timeout=1.5)
    assert (short.status_code, short["Retry-After"], short["X-Do-Not-Retry"]) == (503, "2", "1")
    long = get(HIGH, timeout=5)
    assert (long.status_code, long["Retry-After"]) == (503, "2")
    assert "X-Do-Not-Retry" not in long
    held.finish()


def test_short_deadlines_are_shed_first(settings: Settings) -> None:
    settings.AIO_REQUEST = shedding(MAX_CONCURRENCY=4, HIGH_PRIORITY_RESERVE=0.25, NORMAL_PRIORITY_RESERVE=0.25,
                                    MIN_TIME_TO_SERVE=1.0)  # fmt: skip
    before = shed("high", "deadline")
    assert get(HIGH, timeout=0.5, url="/ok").status_code == 200  # no pressure: served
    held = Held()
    held.start(LOW)
    held.start(LOW)  # the low limit (2): shedding has begun
    response = get(HIGH, timeout=0.5)
    assert (response.status_code, response["X-Do-Not-Retry"]) == (503, "1")
    assert shed("high", "deadline") - before == 1
    held.start(HIGH, timeout=5)  # the same priority with time to be served gets in
    assert held.finish() == [200] * 3


def test_a_failing_view_releases_its_slot(settings: Settings) -> None:
    settings.AIO_REQUEST = shedding(MAX_CONCURRENCY=1, HIGH_PRIORITY_RESERVE=0, NORMAL_PRIORITY_RESERVE=0)
    client = Client(raise_request_exception=False)
    assert client.get("/boom").status_code == 500
    assert in_flight() == 0
    assert get(NORMAL, url="/ok").status_code == 200


def test_shed_requests_are_measured_and_not_logged(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    settings.AIO_REQUEST = shedding(MAX_CONCURRENCY=1, HIGH_PRIORITY_RESERVE=0, NORMAL_PRIORITY_RESERVE=0)
    # Shed before the URL is resolved, as the 408s: no URL pattern is known yet.
    labels = {"request_client": "unknown", "request_method": "GET", "request_path": "<unmatched>",
              "response_status": "503"}  # fmt: skip
    before = REGISTRY.get_sample_value("aio_request_server_latency_count", labels) or 0.0
    held = Held()
    held.start(NORMAL)
    with caplog.at_level("WARNING", logger="django.request"):
        assert get(NORMAL).status_code == 503
    assert caplog.records == []  # not one error log line per shed request under overload
    held.finish()
    assert (REGISTRY.get_sample_value("aio_request_server_latency_count", labels) or 0.0) - before == 1


# The middleware on the async path (ASGI, async view).


def test_async_path_sheds_by_priority(settings: Settings) -> None:
    settings.AIO_REQUEST = shedding(MAX_CONCURRENCY=3, HIGH_PRIORITY_RESERVE=0.34, NORMAL_PRIORITY_RESERVE=0.34)
    asyncio.run(_async_path_sheds_by_priority())


async def _async_path_sheds_by_priority() -> None:
    agate["event"] = asyncio.Event()
    client = AsyncClient()
    before = {p: shed(p.value, "capacity") for p in Priority}

    async def held_until(count: int) -> None:
        while in_flight() < count:
            await asyncio.sleep(0.002)

    tasks = [asyncio.create_task(client.get("/ablock", headers=headers(LOW)))]
    await asyncio.wait_for(held_until(1), 5)
    assert (await client.get("/ablock", headers=headers(LOW))).status_code == 503
    tasks.append(asyncio.create_task(client.get("/ablock", headers=headers(NORMAL))))
    await asyncio.wait_for(held_until(2), 5)
    assert (await client.get("/ablock", headers=headers(NORMAL))).status_code == 503
    tasks.append(asyncio.create_task(client.get("/ablock", headers=headers(HIGH))))
    await asyncio.wait_for(held_until(3), 5)
    refused = await client.get("/ablock", headers=headers(HIGH, timeout=0.5))
    assert (refused.status_code, refused["Retry-After"], refused["X-Do-Not-Retry"]) == (503, "1", "1")
    agate["event"].set()
    assert [response.status_code for response in await asyncio.gather(*tasks)] == [200] * 3
    assert in_flight() == 0
    assert {p: shed(p.value, "capacity") - before[p] for p in Priority} == {HIGH: 1, NORMAL: 1, LOW: 1}
