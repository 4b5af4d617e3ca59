"""Interoperability with the real aio-request library (asyncio, aiohttp), over loopback only.

A. Our client calls aiohttp services that run aio-request's own server middleware, and those call
   further on with aio-request clients: the deadline, priority and service name we send are the
   ones aio-request reads, and the remaining time shrinks at each hop.
B. aio-request clients call Django views behind our middleware (pytest-django's ``live_server``),
   and those call further on to an aiohttp service with our client.
C. The status codes each library makes up for its own failures (489, 488, 408, the breaker's 502)
   get the same verdict from both libraries' default response classifiers.

Time bounds: each hop does ``HOP`` seconds of work before calling on, so the time left must fall
by at least that much; ``SLACK`` covers our header's rounding to the millisecond (it may round up
by half a millisecond). Lower bounds leave 0.5 s for the loopback calls on a loaded machine.
"""

import asyncio
import dataclasses
import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any, LiteralString

import aio_request
import multidict
import pytest
from pytest_django.fixtures import Settings
from pytest_django.live_server_helper import LiveServer

import django_aio_request as dar
from tests.support.aiohttp_service import AioHttpService, aio_request_call
from tests.support.loopback import free_port
from tests.support.urls_interop import ONWARD_CLIENT

HOP = 0.1
SLACK = 0.002
OUR_TIMEOUT_HEADER = re.compile(r"\d+\.\d{3}")  # what our transport sends: seconds, to the millisecond
MIDDLEWARE = "django_aio_request.middleware.AioRequestMiddleware"


@pytest.fixture
def aiohttp_services() -> Iterator[Callable[..., AioHttpService]]:
    """``start(**kwargs)`` starts an :class:`AioHttpService`; all are stopped after the test."""
    started: list[AioHttpService] = []

    def start(**kwargs: Any) -> AioHttpService:
        service = AioHttpService(**kwargs)
        started.append(service)
        return service

    yield start
    for service in reversed(started):
        service.close()


@pytest.fixture
def our_clients() -> Iterator[Callable[..., dar.Client]]:
    """``make(endpoint, **kwargs)``: ``django_aio_request.setup()``; every client made is closed after the test."""
    made: list[dar.Client] = []

    def make(endpoint: str, **kwargs: Any) -> dar.Client:
        kwargs.setdefault("safe_method_strategy", dar.single_attempt_strategy())
        client = dar.setup(endpoint=endpoint, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def call_json(client: dar.Client, request: dar.Request) -> Any:
    with client.request(request) as response:
        assert response.status == 200, response.text()
        return response.json()


# --- A. our client -> aiohttp services behind aio-request's middleware ---------------------------------


class TestOurClientToAioHttp:
    @pytest.mark.parametrize("left", [0.0051, 0.0059, 0.0099])
    def test_just_over_aio_request_s_threshold_left_is_served_by_its_middleware(self, left: float) -> None:
        """aio-request's middleware refuses a deadline at or below its threshold (5 ms): 408, no
        X-Do-Not-Retry, which this client's breaker counts as the endpoint's failure. What this client
        stamps for a little more than that left must not read as that little: 5.9 ms, rounded down to
        the millisecond, went as "0.005", and calls to a healthy aiohttp service opened the circuit (a
        review). The middleware itself, as aiohttp calls it, microseconds after the value is read."""
        from aiohttp import web
        from aiohttp.test_utils import make_mocked_request

        from django_aio_request.core.timeout_header import stamp

        middleware = aio_request.aiohttp_middleware_factory()

        async def handler(request: web.Request) -> web.Response:
            return web.Response(status=200)

        async def status_for(value: str) -> int:
            request = make_mocked_request("GET", "/context", headers={"X-Request-Timeout": value})
            return (await middleware(request, handler)).status

        assert asyncio.run(status_for(stamp(left))) == 200
        assert asyncio.run(status_for(stamp(0.0049))) == 408  # below it: refused by both sides

    def test_the_handler_sees_the_callers_deadline_priority_and_service_name(
        self, aiohttp_services: Callable[..., AioHttpService], our_clients: Callable[..., dar.Client]
    ) -> None:
        service = aiohttp_services()
        client = our_clients(service.url, service_name="django-caller")

        with dar.set_context(deadline=dar.Deadline.from_timeout(2), priority=dar.Priority.HIGH):
            seen = call_json(client, dar.get("context"))

        assert 1.5 < seen["timeout"] <= 2.0
        assert seen["priority"] == "high"
        headers = seen["headers"]
        assert headers["X-Service-Name"] == "django-caller"
        assert headers["X-Request-Priority"] == "high"
        assert OUR_TIMEOUT_HEADER.fullmatch(headers["X-Request-Timeout"])
        # aio-request's middleware starts the deadline on arrival from the header's seconds.
        assert seen["timeout"] <= float(headers["X-Request-Timeout"]) <= 2.0

    def test_the_clients_own_timeout_and_priority_travel_without_a_context(
        self, aiohttp_services: Callable[..., AioHttpService], our_clients: Callable[..., dar.Client]
    ) -> None:
        service = aiohttp_services()  # aio-request's middleware would give 20 s to a request without the header
        client = our_clients(service.url, timeout=3.0, priority=dar.Priority.LOW)

        seen = call_json(client, dar.get("context"))

        assert 2.5 < seen["timeout"] <= 3.0
        assert seen["priority"] == "low"
        assert seen["headers"]["X-Service-Name"] is None  # no service_name given: not sent

    def test_the_time_left_shrinks_at_each_hop(
        self, aiohttp_services: Callable[..., AioHttpService], our_clients: Callable[..., dar.Client]
    ) -> None:
        # Django (our client) -> middle (aiohttp, aio-request middleware) -> aio-request client -> last
        last = aiohttp_services()
        middle = aiohttp_services(downstream=last.url)
        client = our_clients(middle.url, service_name="django-caller")

        with dar.set_context(deadline=dar.Deadline.from_timeout(2), priority=dar.Priority.HIGH) as context:
            time.sleep(HOP)  # the caller's own work
            answer = call_json(client, dar.get("chain", query_parameters={"sleep": HOP}))
            left_after = context.deadline.timeout  # type: ignore[union-attr]

        assert answer["downstream_status"] == 200
        at_middle, at_last = answer["seen"], answer["downstream"]
        assert 1.5 - HOP < at_middle["timeout"] <= 2.0 - HOP + SLACK
        assert at_middle["timeout"] - 0.5 < at_last["timeout"] <= at_middle["timeout"] - HOP + SLACK
        assert left_after < at_last["timeout"]  # the answer came back through both hops
        # aio-request's client sends the time left as Python prints a float, to the microsecond and beyond.
        assert (
            at_last["timeout"] <= float(at_last["headers"]["X-Request-Timeout"]) <= at_middle["timeout"] - HOP + SLACK
        )

        assert at_middle["priority"] == "high"
        assert at_middle["headers"]["X-Service-Name"] == "django-caller"
        # aio-request's client sends its own priority (normal by default), only moved towards normal by the
        # context's, and no X-Service-Name: the high priority stops at the first aiohttp hop. Ours would pass it
        # on (see test_aio_request_to_django_to_aiohttp).
        assert at_last["priority"] == "normal"
        assert at_last["headers"]["X-Request-Priority"] == "normal"
        assert at_last["headers"]["X-Service-Name"] is None
        assert [s.path for s in middle.seen()] == ["/chain"]
        assert [s.path for s in last.seen()] == ["/context"]


# --- C. the status codes each library makes up get the same verdict from both classifiers ---------------


def ours_from_aio_request(response: aio_request.Response) -> dar.Response:
    """An aio-request response as our classifier sees it."""
    return dar.EmptyResponse(status=response.status, headers=dict(response.headers))


def aio_request_from_ours(response: dar.Response) -> aio_request.EmptyResponse:
    """One of our responses as aio-request's classifier sees it."""
    return aio_request.EmptyResponse(
        status=response.status, headers=multidict.CIMultiDictProxy(multidict.CIMultiDict(response.headers))
    )


def verdicts_of_aio_request_response(response: aio_request.Response) -> tuple[str, str]:
    """(aio-request's verdict, ours) on the same response."""
    theirs = aio_request.DefaultResponseClassifier().classify(response)
    ours = dar.DefaultResponseClassifier().classify(ours_from_aio_request(response))
    return theirs.name, ours.name


def verdicts_of_our_response(response: dar.Response) -> tuple[str, str]:
    """(aio-request's verdict, ours) on the same response."""
    theirs = aio_request.DefaultResponseClassifier().classify(aio_request_from_ours(response))
    ours = dar.DefaultResponseClassifier().classify(response)
    return theirs.name, ours.name


@dataclasses.dataclass(frozen=True)
class Failure:
    """A failure each library reports with a status code of its own making, and the verdict both give it."""

    status: int
    verdict: str
    path: LiteralString = "context"
    query: dict[str, Any] = dataclasses.field(default_factory=dict)
    dead_port: bool = False  # call a port nothing listens on
    deadline: float | None = None

    def endpoint(self, service: Callable[[], AioHttpService]) -> str:
        return f"http://127.0.0.1:{free_port()}/" if self.dead_port else service().url


FAILURES = {
    "network error": Failure(489, "REJECT", dead_port=True),
    "timeout": Failure(408, "REJECT", "slow", {"sleep": 1}, deadline=0.2),
    "too many redirects": Failure(488, "ACCEPT", "redirect"),
}


class TestStatusCodesMeanTheSame:
    @pytest.mark.parametrize("case", FAILURES, ids=str)
    def test_aio_request_failures_get_our_verdict(
        self, case: str, aiohttp_services: Callable[..., AioHttpService]
    ) -> None:
        failure = FAILURES[case]

        reply = aio_request_call(
            failure.endpoint(aiohttp_services),
            aio_request.get(failure.path, query_parameters=failure.query),
            deadline=failure.deadline,
            safe_method_strategy=aio_request.single_attempt_strategy(),
        )

        assert reply.status == failure.status
        assert verdicts_of_aio_request_response(reply.as_aio_request_response()) == (failure.verdict,) * 2

    @pytest.mark.parametrize("case", FAILURES, ids=str)
    def test_our_failures_get_aio_requests_verdict(
        self, case: str, aiohttp_services: Callable[..., AioHttpService], our_clients: Callable[..., dar.Client]
    ) -> None:
        failure = FAILURES[case]
        client = our_clients(failure.endpoint(aiohttp_services))
        deadline = dar.Deadline.from_timeout(failure.deadline) if failure.deadline is not None else None

        with client.request(dar.get(failure.path, query_parameters=failure.query), deadline=deadline) as response:
            pass

        assert response.status == failure.status
        assert verdicts_of_our_response(response) == (failure.verdict,) * 2

    def test_our_too_little_time_left_response_is_accepted_by_aio_request(
        self, our_clients: Callable[..., dar.Client]
    ) -> None:
        client = our_clients(f"http://127.0.0.1:{free_port()}/")

        with client.request(dar.get("context"), deadline=dar.Deadline.from_timeout(0)) as response:
            pass

        assert (response.status, response.headers.get("X-Do-Not-Retry")) == (408, "1")
        assert verdicts_of_our_response(response) == ("ACCEPT", "ACCEPT")

    def test_our_open_circuit_response_is_accepted_by_aio_request(self, our_clients: Callable[..., dar.Client]) -> None:
        breaker: dar.DefaultCircuitBreaker[str, dar.Response] = dar.DefaultCircuitBreaker(
            break_duration=5, sampling_duration=10, minimum_throughput=2, failure_threshold=0.5
        )
        client = our_clients(f"http://127.0.0.1:{free_port()}/", circuit_breaker=breaker)

        statuses = []
        for _ in range(3):
            with client.request(dar.get("context")) as response:
                statuses.append(response.status)

        assert statuses == [489, 489, 502]
        assert response.headers.get("X-Circuit-Breaker") == "1"
        assert response.headers.get("X-Do-Not-Retry") == "1"
        assert verdicts_of_our_response(response) == ("ACCEPT", "ACCEPT")

    def test_aio_requests_open_circuit_response_is_accepted_by_ours(self) -> None:
        breaker: aio_request.DefaultCircuitBreaker[Any, aio_request.ClosableResponse] = (
            aio_request.DefaultCircuitBreaker(
                break_duration=5, sampling_duration=10, minimum_throughput=2, failure_threshold=0.5
            )
        )
        endpoint = f"http://127.0.0.1:{free_port()}/"

        replies = [
            aio_request_call(
                endpoint,
                aio_request.get("context"),
                circuit_breaker=breaker,
                safe_method_strategy=aio_request.single_attempt_strategy(),
            )
            for _ in range(3)
        ]

        assert [reply.status for reply in replies] == [489, 489, 502]
        assert replies[-1].headers.get("X-Circuit-Breaker") == "1"
        assert replies[-1].headers.get("X-Do-Not-Retry") == "1"
        assert verdicts_of_aio_request_response(replies[-1].as_aio_request_response()) == ("ACCEPT", "ACCEPT")

    @pytest.mark.parametrize("do_not_retry", [False, True])
    def test_both_default_classifiers_agree_on_every_status(self, do_not_retry: bool) -> None:
        headers = {"X-Do-Not-Retry": "1"} if do_not_retry else {}
        disagreements = {}
        for status in [*range(100, 600), 999]:
            verdicts = verdicts_of_our_response(dar.EmptyResponse(status=status, headers=headers))
            if verdicts[0] != verdicts[1]:
                disagreements[status] = verdicts
        assert disagreements == {}


# --- B. aio-request client -> Django views behind our middleware (-> our client -> aiohttp) ------------


@dataclasses.dataclass(frozen=True)
class DjangoService:
    url: str  # the live server, as http://127.0.0.1:PORT/
    onward: AioHttpService  # what the onward view calls with our client


@pytest.fixture
def django_service(
    live_server: LiveServer,
    settings: Settings,
    aiohttp_services: Callable[..., AioHttpService],
) -> DjangoService:
    assert MIDDLEWARE in settings.MIDDLEWARE, f"settings.MIDDLEWARE must contain {MIDDLEWARE!r}"
    onward = aiohttp_services()
    settings.AIO_REQUEST = {
        "SERVICE_NAME": "django-view",
        "CLIENTS": {
            ONWARD_CLIENT: {"ENDPOINT": onward.url, "TIMEOUT": 5.0, "SAFE_METHOD_STRATEGY": {"NAME": "single"}}
        },
    }
    # 127.0.0.1, not live_server.url's "localhost": aiohttp would try ::1 first, where nothing listens.
    return DjangoService(url=f"http://127.0.0.1:{live_server.thread.port}/", onward=onward)


def json_body(body: bytes) -> Any:
    return json.loads(body)


@pytest.mark.urls("tests.support.urls_interop")
class TestAioRequestClientToDjango:
    def test_the_view_sees_the_deadline_and_priority_aio_request_sends(self, django_service: DjangoService) -> None:
        reply = aio_request_call(
            django_service.url,
            aio_request.get("context/"),
            deadline=2.0,
            priority=aio_request.Priority.HIGH,
            safe_method_strategy=aio_request.single_attempt_strategy(),
        )

        assert reply.status == 200, reply.body
        assert reply.sent_headers is not None
        sent = reply.sent_headers["X-Request-Timeout"]
        seen = json_body(reply.body)
        assert seen["headers"]["X-Request-Timeout"] == sent  # e.g. "1.9998843210004671": parsed, not rejected
        assert 1.5 < seen["timeout"] <= float(sent) <= 2.0
        assert seen["priority"] == "high"

    def test_the_aio_request_clients_own_timeout_and_priority_reach_the_view(
        self, django_service: DjangoService
    ) -> None:
        reply = aio_request_call(
            django_service.url,
            aio_request.get("context/"),
            timeout=3.0,
            priority=aio_request.Priority.LOW,
            safe_method_strategy=aio_request.single_attempt_strategy(),
        )

        assert reply.status == 200, reply.body
        seen = json_body(reply.body)
        assert 2.5 < seen["timeout"] <= 3.0
        assert seen["priority"] == "low"

    def test_a_request_with_no_time_left_is_refused_by_both_servers(
        self, django_service: DjangoService, aiohttp_services: Callable[..., AioHttpService]
    ) -> None:
        aiohttp_service = aiohttp_services()

        def send(endpoint: str, request: aio_request.Request) -> aio_request.Response:
            reply = aio_request_call(
                endpoint,
                request,
                emit_system_headers=False,  # the header below is sent as it is
                safe_method_strategy=aio_request.single_attempt_strategy(),
            )
            assert reply.body == b""  # refused before the view or handler ran
            return reply.as_aio_request_response()

        too_little = {"X-Request-Timeout": "0.001"}  # below both servers' 5 ms threshold
        from_django = send(django_service.url, aio_request.get("context/", headers=too_little))
        from_aiohttp = send(aiohttp_service.url, aio_request.get("context", headers=too_little))

        assert from_django.status == from_aiohttp.status == 408
        assert aiohttp_service.seen() == []
        # Ours marks it X-Do-Not-Retry (no attempt could succeed in the time left), so an aio-request caller
        # accepts it; aio-request's server sends a bare 408, which its callers (and ours) retry.
        assert from_django.headers.get("X-Do-Not-Retry") == "1"
        assert "X-Do-Not-Retry" not in from_aiohttp.headers
        assert verdicts_of_aio_request_response(from_django) == ("ACCEPT", "ACCEPT")
        assert verdicts_of_aio_request_response(from_aiohttp) == ("REJECT", "REJECT")

    @pytest.mark.parametrize("seconds", [120.0, 999_999_999.9999, 1e9, 1e12])
    def test_our_clients_longest_deadline_reaches_our_view_as_its_max_timeout(
        self, django_service: DjangoService, our_clients: Callable[..., dar.Client], seconds: float
    ) -> None:
        # Sent as "1000000000.000", a deadline of 1e9 s was malformed to our own middleware (at most 9
        # integer digits): ignored, the view got the default TIMEOUT (20 s) instead of MAX_TIMEOUT (60 s).
        client = our_clients(django_service.url)

        with client.request(dar.get("context/"), deadline=dar.Deadline.from_timeout(seconds)) as response:
            seen = response.json()

        assert 59.0 < seen["timeout"] <= 60.0  # MAX_TIMEOUT, whatever the deadline beyond it
        sent = seen["headers"]["X-Request-Timeout"]
        assert OUR_TIMEOUT_HEADER.fullmatch(sent)
        most = min(seconds, 999_999_999)  # the largest our middleware reads
        assert most - 1 < float(sent) <= most

    def test_aio_request_to_django_to_aiohttp(self, django_service: DjangoService) -> None:
        # aio-request client -> Django view (our middleware, our client) -> aiohttp (aio-request's middleware)
        reply = aio_request_call(
            django_service.url,
            aio_request.get("onward/", query_parameters={"sleep": HOP}),
            deadline=2.0,
            priority=aio_request.Priority.HIGH,
            safe_method_strategy=aio_request.single_attempt_strategy(),
        )

        assert reply.status == 200, reply.body
        assert reply.sent_headers is not None
        answer = json_body(reply.body)
        assert answer["downstream_status"] == 200
        at_django, at_aiohttp = answer["seen"], answer["downstream"]
        assert 1.5 < at_django["timeout"] <= float(reply.sent_headers["X-Request-Timeout"]) <= 2.0
        assert at_django["timeout"] - 0.5 < at_aiohttp["timeout"] <= at_django["timeout"] - HOP + SLACK
        assert OUR_TIMEOUT_HEADER.fullmatch(at_aiohttp["headers"]["X-Request-Timeout"])
        # Our client passes the context's priority on, and names the Django service.
        assert at_django["priority"] == at_aiohttp["priority"] == "high"
        assert at_aiohttp["headers"]["X-Service-Name"] == "django-view"
        assert [s.path for s in django_service.onward.seen()] == ["/context"]
