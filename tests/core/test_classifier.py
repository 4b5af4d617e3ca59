"""DefaultResponseClassifier: which responses end a call and which let another attempt be tried."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from django_aio_request import DefaultResponseClassifier, EmptyResponse, Response, ResponseVerdict
from django_aio_request.core.classifier import ResponseClassifier

ACCEPT = ResponseVerdict.ACCEPT
REJECT = ResponseVerdict.REJECT


@pytest.mark.parametrize("status", [500, 501, 502, 503, 504, 599, 408, 429, 489])
def test_server_errors_timeouts_throttling_and_network_errors_are_rejected(status: int) -> None:
    assert DefaultResponseClassifier().classify(Response(status=status)) is REJECT


@pytest.mark.parametrize("status", [200, 201, 204, 301, 304, 400, 401, 403, 404, 409, 422, 488])
def test_the_rest_is_accepted(status: int) -> None:
    assert DefaultResponseClassifier().classify(Response(status=status)) is ACCEPT


def test_too_many_redirects_is_accepted_a_retry_would_redirect_again() -> None:
    response = EmptyResponse(status=488, headers={"Location": "/loop"})
    assert DefaultResponseClassifier().classify(response) is ACCEPT


@pytest.mark.parametrize("status", [500, 503, 429, 408])
@pytest.mark.parametrize("header", ["X-Do-Not-Retry", "x-do-not-retry"])
def test_x_do_not_retry_accepts_whatever_the_status(status: int, header: str) -> None:
    response = Response(status=status, headers={header: "1"})
    assert DefaultResponseClassifier().classify(response) is ACCEPT


def test_x_do_not_retry_with_empty_value_still_accepts() -> None:
    assert DefaultResponseClassifier().classify(Response(status=503, headers={"X-Do-Not-Retry": ""})) is ACCEPT


@pytest.mark.parametrize(
    ("status", "headers", "override", "expected"),
    [
        (404, {}, REJECT, REJECT),
        (200, {}, REJECT, REJECT),
        (503, {}, ACCEPT, ACCEPT),
        (489, {}, ACCEPT, ACCEPT),
        (429, {}, ACCEPT, ACCEPT),
        # the override wins even over X-Do-Not-Retry
        (503, {"X-Do-Not-Retry": "1"}, REJECT, REJECT),
        (409, {"X-Do-Not-Retry": "1"}, REJECT, REJECT),
    ],
)
def test_verdict_for_status_overrides_everything(
    status: int, headers: dict[str, str], override: ResponseVerdict, expected: ResponseVerdict
) -> None:
    classifier = DefaultResponseClassifier(verdict_for_status={status: override})
    assert classifier.classify(Response(status=status, headers=headers)) is expected


def test_verdict_for_status_touches_only_the_statuses_it_names() -> None:
    classifier = DefaultResponseClassifier(verdict_for_status={404: REJECT})
    assert classifier.classify(Response(status=404)) is REJECT
    assert classifier.classify(Response(status=410)) is ACCEPT
    assert classifier.classify(Response(status=503)) is REJECT


def test_verdict_for_status_is_copied() -> None:
    overrides = {404: REJECT}
    classifier = DefaultResponseClassifier(verdict_for_status=overrides)
    overrides[404] = ACCEPT
    overrides[500] = ACCEPT
    assert classifier.classify(Response(status=404)) is REJECT
    assert classifier.classify(Response(status=500)) is REJECT


def test_network_errors_code_can_be_changed() -> None:
    classifier = DefaultResponseClassifier(network_errors_code=490)
    assert classifier.classify(Response(status=490)) is REJECT
    assert classifier.classify(Response(status=489)) is ACCEPT


def test_response_classifier_is_abstract() -> None:
    with pytest.raises(TypeError):
        ResponseClassifier()  # type: ignore[abstract]


@given(
    status=st.integers(min_value=100, max_value=999),
    header=st.sampled_from([None, "X-Do-Not-Retry", "x-do-not-retry", "X-DO-NOT-RETRY"]),
    other=st.dictionaries(st.sampled_from(["X-Other", "Retry-After", "Content-Type"]), st.text("abc1", max_size=3)),
)
def test_the_verdict_is_the_rule_as_written_for_any_status_and_headers(
    status: int, header: str | None, other: dict[str, str]
) -> None:
    """classify() looks for X-Do-Not-Retry only where it changes the verdict; the verdict is still
    the rule: X-Do-Not-Retry accepts, else 5xx, 408, 429 and network errors are rejected."""
    headers = dict(other)
    if header is not None:
        headers[header] = "1"
    rejected = 500 <= status < 600 or status in (489, 408, 429)
    expected = ACCEPT if header is not None or not rejected else REJECT
    assert DefaultResponseClassifier().classify(Response(status=status, headers=headers)) is expected
