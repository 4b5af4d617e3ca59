"""core/pipeline.py: the stages of one attempt (low-timeout guard, circuit breaker, transport) in order.

A recording transport stands in for the network here: these tests are about what each stage does
to the attempt and in which order, not about sockets (tests/transport/ has those).
"""

import threading
import time
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict

from django_aio_request import (
    Client,
    DefaultCircuitBreaker,
    DefaultResponseClassifier,
    Request,
    Response,
    Transport,
    get,
)
from django_aio_request.core.cancellation import Cancellation
from django_aio_request.core.deadline import Deadline
from django_aio_request.core.pipeline import (
    Attempt,
    CircuitBreakerModule,
    LowTimeoutModule,
    TransportModule,
    build_pipeline,
)
from django_aio_request.core.priority import Priority
from django_aio_request.core.timeout_header import stamp
from django_aio_request.server.middleware import parse_timeout
from tests.support.loopback import LoopbackServer, holding_the_only_connection

ENDPOINT = "http://billing.test/"


class RecordingTransport(Transport):
    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.sent: list[tuple[Request, float]] = []
        self.lock = threading.Lock()

    def send(
        self, endpoint: str, request: Request, timeout: float, cancellation: Cancellation | None = None
    ) -> Response:
        with self.lock:
            self.sent.append((request, timeout))
        return Response(status=self.status, body=b"ok")


def attempt(seconds: float = 5.0, *, priority: Priority = Priority.HIGH, number: int = 0) -> Attempt:
    return Attempt(ENDPOINT, get("invoices"), Deadline.from_timeout(seconds), priority, number, None)


def transport_stage(transport: Transport, **options: object) -> TransportModule:
    settings: dict[str, object] = {"emit_system_headers": True, "request_enricher": None, "service_name": "shop"}
    settings.update(options)
    return TransportModule(transport, **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["shop\r\nX-Injected: 1", "магазин", " shop"])
def test_a_service_name_http_cannot_carry_is_refused_when_the_transport_stage_is_made(name: str) -> None:
    """The stage adds the service name to every attempt without checking it again: it is checked
    once, here, however the stage was made (not only through setup())."""
    with pytest.raises(ValueError, match="header 'X-Service-Name'"):
        transport_stage(RecordingTransport(), service_name=name)


def test_the_transport_stage_sends_the_time_left_the_priority_and_the_service_name() -> None:
    transport = RecordingTransport()
    send = build_pipeline([transport_stage(transport)])

    assert send(attempt(2.0)).status == 200

    ((request, timeout),) = transport.sent
    assert 1.9 < float(request.headers["X-Request-Timeout"]) <= 2.0
    assert request.headers["X-Request-Priority"] == "high"
    assert request.headers["X-Service-Name"] == "shop"
    assert 1.9 < timeout <= 2.0


def test_without_system_headers_nothing_is_added_and_the_enricher_runs_last() -> None:
    transport = RecordingTransport()
    seen: list[Request] = []

    def enrich(request: Request) -> Request:
        seen.append(request)
        return request.with_headers({"Authorization": "Bearer t"})

    send = build_pipeline([transport_stage(transport, emit_system_headers=False, request_enricher=enrich)])
    send(attempt())

    ((request, _),) = transport.sent
    assert "X-Request-Timeout" not in request.headers
    assert "X-Request-Timeout" not in seen[0].headers
    assert request.headers["Authorization"] == "Bearer t"


def test_an_enricher_that_returns_no_request_is_named() -> None:
    """One that set a header in place and forgot ``return`` raised AttributeError: 'NoneType'
    object has no attribute 'headers', from deep in the pipeline."""

    def forgets_return(request: Request) -> Request:
        request.headers["Authorization"] = "Bearer t"
        return None  # type: ignore[return-value]

    send = build_pipeline([transport_stage(RecordingTransport(), request_enricher=forgets_return)])
    with pytest.raises(TypeError, match="returned NoneType, not a Request: it must return the request"):
        send(attempt())


def test_the_time_left_is_stamped_after_a_slow_enricher() -> None:
    transport = RecordingTransport()

    def slow(request: Request) -> Request:  # a token fetched from an identity provider
        time.sleep(0.3)
        return request.with_headers({"Authorization": "Bearer t"})

    send = build_pipeline([transport_stage(transport, request_enricher=slow)])
    send(attempt(1.0))
    [(request, timeout)] = transport.sent
    assert float(request.headers["X-Request-Timeout"]) <= 0.71  # was 1.000: 0.3 s it no longer had
    assert abs(float(request.headers["X-Request-Timeout"]) - timeout) < 0.01


def _set_in_place(name: str, value: str) -> Callable[[Request], Request]:
    def enrich(request: Request) -> Request:
        time.sleep(0.05)  # the time left falls: a re-stamp would change the timeout
        request.headers[name] = value
        return request

    return enrich


def _set_by_copy(name: str, value: str) -> Callable[[Request], Request]:
    def enrich(request: Request) -> Request:
        time.sleep(0.05)
        return request.with_headers({name: value})

    return enrich


@pytest.mark.parametrize("set_header", [_set_in_place, _set_by_copy])
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Request-Timeout", "5.000"),
        ("x-request-timeout", "5.000"),
        ("X-REQUEST-TIMEOUT", "5.000"),
        ("x-request-priority", "low"),
        ("x-service-name", "from-enricher"),
    ],
)
def test_a_header_the_enricher_sets_itself_goes_out_in_any_letter_case(
    set_header: Callable[[str, str], Callable[[Request], Request]], name: str, value: str
) -> None:
    # Set in place in lower case, beside the stamped X-Request-Timeout, the enricher's own timeout was
    # overwritten by the re-stamp: the downstream got 1.000 (the time left), not the enricher's 5.000.
    transport = RecordingTransport()
    send = build_pipeline([transport_stage(transport, request_enricher=set_header(name, value))])

    send(attempt(1.0))

    [(request, _timeout)] = transport.sent
    sent = CaseInsensitiveDict(request.headers)  # what requests sends: of two spellings, the last
    assert sent[name] == value


# Above the largest: 999_999_999.0 itself is a few microseconds less by the time it is stamped.
@pytest.mark.parametrize("seconds", [999_999_999.5, 999_999_999.9999, 1e9, 1e12])
def test_the_longest_timeout_sent_is_the_largest_our_middleware_reads(seconds: float) -> None:
    transport = RecordingTransport()
    send = build_pipeline([transport_stage(transport)])

    send(attempt(seconds))

    [(request, _timeout)] = transport.sent
    assert request.headers["X-Request-Timeout"] == "999999999.000"  # was "1000000000.000" for 1e9
    assert parse_timeout(request.headers["X-Request-Timeout"]) == 999_999_999


@given(seconds=st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_the_time_left_is_stamped_rounded_down_never_up(seconds: float) -> None:
    """The header may only say less than is left: ``:.3f`` rounded to the nearest, up to 0.5 ms more
    (1.2349 s left went out as "1.235")."""
    stamped = float(stamp(seconds))
    assert stamped <= seconds
    assert seconds - stamped < 0.001 + 1e-9 * seconds
    if seconds >= 1e-6:
        assert stamped > 0  # "0.000" is a deadline passed: a server refuses it as expired
        assert parse_timeout(stamp(seconds)) == stamped  # and the middleware reads what was sent


def test_a_time_left_is_stamped_to_the_millisecond_below() -> None:
    """Below 10 ms, whole microseconds: "0.000" made a server with LOW_TIMEOUT_THRESHOLD 0 refuse a
    call with 0.6-1 ms left as expired, where "0.001" had been served; "0.005" for 5.9 ms left made
    aio-request's server, which refuses 5 ms and below, answer 408
    (tests/end_to_end/test_interop_aio_request.py)."""
    stamped = [stamp(s) for s in (1.2349, 0.0129999, 0.01, 4.987, 0.0, 0.0009, 0.00089012, 0.0059, 0.0099999)]
    assert stamped == ["1.234", "0.012", "0.010", "4.987", "0.000", "0.000900", "0.000890", "0.005900", "0.009999"]


def test_the_enricher_sees_the_system_headers_and_may_override_them() -> None:
    transport = RecordingTransport()
    send = build_pipeline(
        [transport_stage(transport, request_enricher=lambda r: r.with_headers({"X-Request-Priority": "low"}))]
    )
    send(attempt())
    assert transport.sent[0][0].headers["X-Request-Priority"] == "low"


@pytest.mark.parametrize("seconds", [0.0, 0.004])
def test_the_low_timeout_stage_answers_408_without_sending(seconds: float) -> None:
    transport = RecordingTransport()
    send = build_pipeline([LowTimeoutModule(0.005), transport_stage(transport)])

    response = send(attempt(seconds))

    assert response.status == 408
    assert response.headers["X-Do-Not-Retry"] == "1"
    assert transport.sent == []


def test_an_open_circuit_answers_502_and_the_transport_is_not_reached() -> None:
    transport = RecordingTransport(status=500)
    breaker: DefaultCircuitBreaker[str, Response] = DefaultCircuitBreaker(
        break_duration=60, sampling_duration=60, minimum_throughput=2, failure_threshold=0.5
    )
    send = build_pipeline(
        [
            LowTimeoutModule(0.005),
            CircuitBreakerModule(breaker, DefaultResponseClassifier()),
            transport_stage(transport),
        ]
    )

    assert [send(attempt()).status for _ in range(2)] == [500, 500]
    refused = send(attempt())

    assert refused.status == 502
    assert refused.headers["X-Circuit-Breaker"] == "1"
    assert len(transport.sent) == 2  # the third never reached the transport
    assert breaker.counts(ENDPOINT) == (2, 0)


def test_a_low_timeout_refusal_is_not_counted_by_the_breaker() -> None:
    breaker: DefaultCircuitBreaker[str, Response] = DefaultCircuitBreaker(
        break_duration=60, sampling_duration=60, minimum_throughput=1, failure_threshold=0.5
    )
    send = build_pipeline(
        [
            LowTimeoutModule(0.005),
            CircuitBreakerModule(breaker, DefaultResponseClassifier()),
            transport_stage(RecordingTransport()),
        ]
    )
    assert send(attempt(0.0)).status == 408
    assert breaker.counts(ENDPOINT) == (0, 0)  # the guard comes first: the endpoint was never tried


def test_an_error_raised_below_the_breaker_is_raised_on_and_says_nothing_about_the_endpoint() -> None:
    """A programming error (an enricher that fails, a header HTTP cannot carry) is not the endpoint's
    failure: three of them opened the circuit on a healthy server. A probe that raises lets the next
    call probe, as one abandoned by its strategy does."""
    transport = RecordingTransport(status=500)
    breaker: DefaultCircuitBreaker[str, Response] = DefaultCircuitBreaker(
        break_duration=0.05, sampling_duration=60, minimum_throughput=2, failure_threshold=0.5
    )
    failing = [True]

    def enricher(request: Request) -> Request:
        if failing[0]:
            raise RuntimeError("the enricher's own bug")
        return request

    send = build_pipeline(
        [
            CircuitBreakerModule(breaker, DefaultResponseClassifier()),
            transport_stage(transport, request_enricher=enricher),
        ]
    )
    for _ in range(3):
        with pytest.raises(RuntimeError, match="the enricher's own bug"):
            send(attempt())
    assert breaker.counts(ENDPOINT) == (0, 0)
    failing[0] = False
    assert [send(attempt()).status for _ in range(3)] == [500, 500, 502]  # the endpoint's own failures open it
    time.sleep(0.06)  # the break is over: the next call is the probe
    failing[0] = True
    with pytest.raises(RuntimeError):
        send(attempt())  # the probe raised
    failing[0] = False
    transport.status = 200
    assert send(attempt()).status == 200  # probes again at once, and closes the circuit
    assert breaker.state[ENDPOINT].value == "closed"


def test_a_pipeline_without_a_sending_stage_is_a_programming_error() -> None:
    send = build_pipeline([LowTimeoutModule(0.005)])
    with pytest.raises(RuntimeError, match="must end with a module that sends"):
        send(attempt())


def test_an_attempt_left_too_little_time_on_a_kept_alive_connection_is_counted_as_no_connection(
    server: LoopbackServer, make_client: Callable[..., Client]
) -> None:
    """docs/metrics.md: ``no_connection`` counts too an attempt that had its kept-alive connection with
    less time left than the client sends with (the time went before it: here a slow enricher; under
    a loaded server, waiting for a thread or the CPU). Nothing is sent (a review saw the count under
    uvicorn and took it for a wait for a connection)."""
    from prometheus_client import REGISTRY

    from django_aio_request import metrics as all_metrics
    from django_aio_request import single_attempt_strategy
    from django_aio_request.core.response import UnsentResponse

    server.route("/ok", lambda h: h.reply(200, b"ok"))
    slow = [False]

    def enricher(request: Request) -> Request:
        if slow[0]:
            time.sleep(0.045)  # of a 0.05 s deadline: 5 ms left, under the 10 ms threshold
        return request

    client = make_client(
        safe_method_strategy=single_attempt_strategy(), low_timeout_threshold=0.01, request_enricher=enricher
    )
    with client.request(get("ok")) as response:  # the connection, kept alive
        assert response.status == 200
    slow[0] = True
    with client.request(get("ok"), deadline=Deadline.from_timeout(0.05)) as response:
        assert (response.status, type(response)) == (408, UnsentResponse)
    assert len(server.received("/ok")) == 1
    all_metrics.flush()
    labels = {"request_endpoint": server.url, "request_method": "GET", "reason": "no_connection"}
    assert REGISTRY.get_sample_value("aio_request_deadline_rejected_total", labels) == 1


def test_an_attempt_that_never_had_a_connection_is_no_failure_and_no_transport_latency(
    server: LoopbackServer, make_client: Callable[..., Client]
) -> None:
    """A burst past MAX_CONNECTIONS: attempts that waited for a connection until their deadline
    opened the circuit of a healthy endpoint (7,060 502s after 57 such 408s) and were recorded as
    transport latencies of attempts never sent. They are counted as no_connection refusals instead."""
    from prometheus_client import REGISTRY

    from django_aio_request import RequestsTransport, single_attempt_strategy
    from django_aio_request import metrics as all_metrics
    from django_aio_request.core.response import UnsentResponse

    server.route("/ok", lambda h: h.reply(200, b"ok"))
    breaker: DefaultCircuitBreaker[str, Response] = DefaultCircuitBreaker(
        break_duration=60, sampling_duration=60, minimum_throughput=3, failure_threshold=0.5
    )
    client = make_client(
        transport=RequestsTransport(max_connections=1),
        circuit_breaker=breaker,
        safe_method_strategy=single_attempt_strategy(),
    )

    unsent = []
    with holding_the_only_connection(server, client):
        for _ in range(5):
            with client.request(get("ok"), deadline=Deadline.from_timeout(0.05)) as response:
                unsent.append((response.status, type(response)))
    assert unsent == [(408, UnsentResponse)] * 5
    assert not server.received("/ok")
    with client.request(get("ok")) as response:
        assert response.status == 200  # the circuit stayed closed
    assert breaker.counts(server.url) == (0, 2)  # the held call and this one: no failure
    all_metrics.flush()
    labels = {"request_endpoint": server.url, "request_method": "GET"}
    assert REGISTRY.get_sample_value("aio_request_deadline_rejected_total", {**labels, "reason": "no_connection"}) == 5
    assert (
        REGISTRY.get_sample_value(
            "aio_request_transport_latency_count", {**labels, "request_path": "ok", "response_status": "408"}
        )
        is None
    )
