"""core/client_setup.py: what ``setup()`` builds by default, and the endpoints it accepts.

Behaviour is checked through calls to a real loopback server: how many requests a failing GET and
a failing POST make, which budget each client gets.
"""

import pytest

from django_aio_request import RetryBudget, get, post
from django_aio_request.core.client_setup import setup, validate_endpoint
from tests.support.loopback import LoopbackServer, clients, replies


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("127.0.0.1:8000", "absolute http:// or https:// URL"),
        ("ftp://billing/", "absolute http:// or https:// URL"),
        ("/billing/", "absolute http:// or https:// URL"),
        ("http:///path", "absolute http:// or https:// URL"),
        ("http://user:secret@billing/", "must not carry credentials"),
        ("http://billing:99999/", "invalid port"),
        (b"http://billing/", "must be a string URL"),
        # Before, these passed and the first call raised LocationParseError (a status was promised).
        ("http://billing..test:8080/", "invalid host"),
        ("http://bil ling:8080/", "invalid host"),
        ("http://billing\u200b:8080/", "invalid host"),  # a zero-width space, pasted in
        ("http://" + "a" * 64 + ".test/", "invalid host"),  # a label is at most 63 characters
        ("http://\uff41.test/", "invalid host"),  # a full-width letter
        ("http://a.\u3002b/", "invalid host"),
        # Before, accepted: the query was never sent and showed in metrics and logs.
        ("http://billing/?api_key=secret", "must not have a query"),
        ("http://billing/api#v2", "must not have a query"),
    ],
)
def test_endpoints_that_are_refused(endpoint: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_endpoint(endpoint)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        setup(endpoint=endpoint)  # type: ignore[arg-type]


def test_the_refusal_of_credentials_does_not_repeat_them() -> None:
    with pytest.raises(ValueError, match="credentials") as error:
        validate_endpoint("http://user:secret@billing/")
    assert "secret" not in str(error.value)
    with pytest.raises(ValueError, match="query") as error:
        validate_endpoint("http://billing/?api_key=secret")
    assert "secret" not in str(error.value)


@pytest.mark.parametrize("endpoint", ["http://b\u00fccher.test/", "http://under_score.test/", "http://billing.test./"])
def test_an_odd_host_that_is_accepted_gives_its_first_call_a_status(endpoint: str) -> None:
    """Unicode (sent as punycode), underscores, a trailing dot: names nothing resolves here, so the
    call ends in 489 (or 408 at its short deadline), and does not raise."""
    client = setup(endpoint=endpoint, timeout=0.5, metrics=False)
    try:
        with client.request(get("x")) as response:
            assert response.status in (408, 489)
    finally:
        client.close()


def test_by_default_a_get_is_tried_three_times_and_a_post_once(server: LoopbackServer) -> None:
    server.route("/get", replies(503))
    server.route("/post", replies(503))
    with clients(server.url) as make:
        client = make(retry_budget=None)
        with client.request(get("get")) as response:
            assert response.status == 503
        with client.request(post("post", body=b"x")) as response:
            assert response.status == 503
    assert len(server.received("/get")) == 3
    assert len(server.received("/post")) == 1


def test_each_client_gets_a_budget_of_its_own_unless_one_is_given(server: LoopbackServer) -> None:
    shared = RetryBudget()
    with clients(server.url) as make:
        first, second = make(), make()
        assert isinstance(first.retry_budget, RetryBudget)
        assert first.retry_budget is not second.retry_budget
        assert make(retry_budget=shared).retry_budget is shared
        assert make(retry_budget=None).retry_budget is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": 0}, "timeout must be a positive number"),
        ({"timeout": -1}, "timeout must be a positive number"),
        ({"timeout": float("nan")}, "timeout must be a positive number"),
        ({"timeout": True}, "timeout must be a positive number"),
        ({"timeout": float("inf")}, "timeout must be a positive number"),
        ({"low_timeout_threshold": -1}, "low_timeout_threshold must be >= 0"),
        ({"retry_budget": 5}, "retry_budget must be a RetryBudget or None"),
        ({"max_workers": 0}, "max_workers must be >= 1"),
    ],
)
def test_invalid_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        setup(endpoint="http://billing/", **options)  # type: ignore[arg-type]
