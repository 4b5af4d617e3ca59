"""A strategy that learns per method and URL template learns from one endpoint (strategies/base.py)."""

import dataclasses
from collections.abc import Callable

import pytest

from django_aio_request import (
    PercentileDelaysProvider,
    Request,
    Response,
    get,
    linear_backoff_delays,
    method_based_strategy,
    parallel_strategy,
    retry_until_deadline_expired,
    sequential_strategy,
    setup,
)
from django_aio_request.strategies import RequestStrategy
from django_aio_request.strategies.delays import RequestAttemptDelaysProvider
from tests.support.loopback import LoopbackServer


def test_a_learning_strategy_given_to_the_clients_of_two_endpoints_is_refused(server: LoopbackServer) -> None:
    """One ``parallel_strategy(PercentileDelaysProvider())`` for a service answering in 2 ms and one
    answering in 100 ms: the record is per method and URL template, so the slow one's ``items``
    took the fast one's delay, and every call of it was hedged (twice its requests: a review)."""
    other = LoopbackServer()
    try:
        shared = parallel_strategy(attempts_count=2, delays_provider=PercentileDelaysProvider())
        fast = setup(endpoint=server.url, safe_method_strategy=shared)
        with pytest.raises(ValueError, match=r"learns them from 'http://127\.0\.0\.1:\d+/' already") as refused:
            setup(endpoint=other.url, safe_method_strategy=shared)
        assert other.url in str(refused.value)
        assert "Give each client its own strategy and delays provider" in str(refused.value)
        setup(endpoint=server.url, safe_method_strategy=shared).close()  # another client of the same endpoint may

        # Given to one call of another endpoint's client: refused before anything is sent.
        server.route("/items", lambda h: h.reply(200, b"ok"))
        other.route("/items", lambda h: h.reply(200, b"ok"))
        slow = setup(endpoint=other.url)
        with (
            pytest.raises(ValueError, match="learns latencies per method and URL template"),
            slow.request(get("items"), strategy=shared),
        ):
            pass
        assert other.received("/items") == []
        with fast.request(get("items"), strategy=shared) as response:  # its own endpoint: fine
            assert response.status == 200
        fast.close()
        slow.close()
    finally:
        other.close()


@pytest.mark.parametrize(
    "make",
    [
        lambda p: sequential_strategy(attempts_count=2, delays_provider=p),
        lambda p: parallel_strategy(attempts_count=2, delays_provider=p, stragglers_only=False),
        lambda p: retry_until_deadline_expired(sequential_strategy(attempts_count=1), delays_provider=p),
        lambda p: method_based_strategy(safe=parallel_strategy(delays_provider=p, stragglers_only=False)),
    ],
    ids=["sequential", "parallel", "retry_until_deadline", "method_based"],
)
def test_a_learning_delays_provider_is_refused_for_a_second_endpoint_in_any_strategy(
    make: Callable[[PercentileDelaysProvider], RequestStrategy], server: LoopbackServer
) -> None:
    learner = PercentileDelaysProvider()
    setup(endpoint=server.url, safe_method_strategy=make(learner)).close()
    with pytest.raises(ValueError, match="PercentileDelaysProvider"):
        setup(endpoint="http://127.0.0.1:9/", safe_method_strategy=make(learner))


def test_what_learns_nothing_may_be_shared_by_any_clients(server: LoopbackServer) -> None:
    """Backoff delays and hedges without the stragglers rule keep nothing per endpoint."""
    shared = parallel_strategy(attempts_count=2, delays_provider=linear_backoff_delays(), stragglers_only=False)
    plain = sequential_strategy(attempts_count=3)
    for endpoint in (server.url, "http://127.0.0.1:9/", "http://billing.test/"):
        setup(endpoint=endpoint, safe_method_strategy=shared, unsafe_method_strategy=plain).close()


@dataclasses.dataclass(frozen=True)
class _EqualDelays(RequestAttemptDelaysProvider):
    """A learner of the project's whose instances compare equal by value."""

    factor: float = 1.0

    def __call__(self, request: Request, attempt: int) -> float:
        return 0.05 * attempt * self.factor

    def observe(self, request: Request, response: Response) -> None:
        pass


def test_learners_are_told_apart_by_identity_and_services_by_what_they_are() -> None:
    """Two learners of equal value were one (claims matched them by ==), and the second client was
    refused; an endpoint written with a trailing slash, in capitals or with its default port was
    another service (a review)."""
    first, second = _EqualDelays(), _EqualDelays()
    assert first == second
    setup(endpoint="http://billing.test/", safe_method_strategy=sequential_strategy(delays_provider=first)).close()
    setup(endpoint="http://orders.test/", safe_method_strategy=sequential_strategy(delays_provider=second)).close()
    shared = parallel_strategy(delays_provider=PercentileDelaysProvider())
    for endpoint in ("http://billing.test/api", "http://billing.test/api/", "HTTP://Billing.TEST:80/api/"):
        setup(endpoint=endpoint, safe_method_strategy=shared).close()
    for other in ("http://billing.test:8080/api/", "https://billing.test/api/", "http://billing.test/v2/"):
        with pytest.raises(ValueError, match="learns latencies per method and URL template"):
            setup(endpoint=other, safe_method_strategy=shared)
