"""Hostile input, fuzzed with hypothesis: the propagation headers through AioRequestMiddleware never give
a 500 nor a deadline above MAX_TIMEOUT, and no AIO_REQUEST value makes the settings reader raise: it
reports problems (shown by ``manage.py check``), and settings it accepts build every client."""

import math
import string
from typing import Any

import pytest
from django.core import checks
from django.test import Client, override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_aio_request import Priority
from django_aio_request.checks import check_settings
from django_aio_request.conf.building import build_client
from django_aio_request.conf.reader import CODES
from django_aio_request.conf.schema import (
    CIRCUIT_BREAKER_SCHEMA,
    CLIENT_KEYS,
    DELAYS_NAMES,
    STRATEGY_NAMES,
    TOP_LEVEL_KEYS,
    read_settings,
)

pytestmark = pytest.mark.urls("tests.support.urls_server")

MIDDLEWARE = ["django_aio_request.middleware.AioRequestMiddleware"]
DEFAULT_TIMEOUT = 7.0
MAX_TIMEOUT = 30.0
SERVER = {"SERVICE_NAME": "tests", "TIMEOUT": DEFAULT_TIMEOUT, "MAX_TIMEOUT": MAX_TIMEOUT}
PRIORITIES = {str(p) for p in Priority}

#: Bounded so that the whole file runs in a few seconds (about 2 s per test here).
FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


def _numbers() -> st.SearchStrategy[str]:
    """Text that looks like a number of seconds, valid or nearly so."""
    floats = st.floats(allow_nan=True, allow_infinity=True).map(repr)
    return st.one_of(
        floats,
        floats.map(str.upper),
        st.integers(min_value=-(10**30), max_value=10**30).map(str),
        st.decimals(allow_nan=True).map(str),
        st.from_regex(r"\A[ \t]*[-+]?[0-9_\u0660-\u0669]{0,40}(\.[0-9]{0,40})?([eE][-+]?[0-9]{1,4})?[ \t]*\Z"),
        st.sampled_from(
            ["inf", "-inf", "nan", "1e309", "0x10", "1_000", "\u0663", "5.2e-05", "0", "0.0", "", " ", "\x00"]
        ),
    )


HEADER_TEXT = st.text(max_size=200)
TIMEOUTS = st.one_of(_numbers(), HEADER_TEXT)
PRIORITY_VALUES = st.one_of(
    st.sampled_from(sorted(PRIORITIES)), st.sampled_from(sorted(PRIORITIES)).map(str.upper), HEADER_TEXT
)
SERVICE_NAMES = st.one_of(HEADER_TEXT, st.text(string.printable, min_size=1000, max_size=5000))


def _meta(timeout: str | None, priority: str | None, service: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    if timeout is not None:
        meta["HTTP_X_REQUEST_TIMEOUT"] = timeout
    if priority is not None:
        meta["HTTP_X_REQUEST_PRIORITY"] = priority
    if service is not None:
        meta["HTTP_X_SERVICE_NAME"] = service
    return meta


@FUZZ
@given(timeout=st.none() | TIMEOUTS, priority=st.none() | PRIORITY_VALUES, service=st.none() | SERVICE_NAMES)
def test_no_header_value_gives_a_500_or_a_deadline_beyond_max_timeout(
    timeout: str | None, priority: str | None, service: str | None
) -> None:
    with override_settings(MIDDLEWARE=MIDDLEWARE, AIO_REQUEST=SERVER):
        response = Client(raise_request_exception=False).get("/ctx", **_meta(timeout, priority, service))
    assert response.status_code in (200, 408), response.status_code
    if response.status_code == 408:  # no time left (0, or below the low-timeout threshold): refused at once
        assert response["X-Do-Not-Retry"] == "1"
        return
    seen = response.json()
    assert 0 < seen["timeout"] <= MAX_TIMEOUT
    assert math.isfinite(seen["timeout"])
    assert seen["priority"] in PRIORITIES
    if seen["source"] == "default":
        assert seen["timeout"] <= DEFAULT_TIMEOUT


@pytest.mark.parametrize(
    ("timeout", "expected"),
    [
        ("5", 5.0),
        ("0.25", 0.25),
        ("5.2e-05", None),  # below the low-timeout threshold: 408
        ("1e9", DEFAULT_TIMEOUT),  # not a plain decimal: ignored, the default applies
        ("999999999", MAX_TIMEOUT),  # capped
        ("inf", DEFAULT_TIMEOUT),
        ("nan", DEFAULT_TIMEOUT),
        ("-1", DEFAULT_TIMEOUT),
        ("\u0663", DEFAULT_TIMEOUT),  # a non-ASCII digit float() would take
        ("1_0", DEFAULT_TIMEOUT),
        ("0", None),
    ],
)
def test_header_table(timeout: str, expected: float | None) -> None:
    """The table the fuzz above explores around: each value's documented effect."""
    with override_settings(MIDDLEWARE=MIDDLEWARE, AIO_REQUEST=SERVER):
        response = Client().get("/ctx", HTTP_X_REQUEST_TIMEOUT=timeout)
    if expected is None:
        assert response.status_code == 408
    else:
        assert response.status_code == 200
        assert expected - 0.5 < response.json()["timeout"] <= expected


# --- settings -------------------------------------------------------------------------------------------------

JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)
#: Values that are nearly right for many keys: numbers at and past their bounds, names, paths.
NEAR = st.one_of(
    st.sampled_from(
        [
            *(0, 1, -1, 0.5, 1.0, 2, 10, 1e300, float("inf"), float("nan"), True, False, None, "", "local", "x"),
            *("high", "normal", "low", "http://127.0.0.1:1/", "https://h/", "ftp://h/", "http://", "not a url"),
            *("django_aio_request.DefaultResponseClassifier", "os.path", "no.such.module", "json.loads"),
        ]
    ),
    JSONISH,
)


def _named(names: tuple[str, ...], keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"NAME": st.sampled_from(names) | st.text(max_size=8)},
        optional=dict.fromkeys(keys, NEAR),
    )


DELAYS = _named(DELAYS_NAMES, ["DELAY", "MIN_DELAY_SECONDS", "MAX_DELAY_SECONDS", "DELAY_MULTIPLIER", "JITTER"])
STRATEGY = st.fixed_dictionaries(
    {"NAME": st.sampled_from(STRATEGY_NAMES) | st.text(max_size=8)},
    optional={"ATTEMPTS_COUNT": NEAR, "DELAYS": DELAYS | NEAR, "STRATEGY": NEAR},
)
CLIENT = st.fixed_dictionaries(
    {},
    optional={
        **dict.fromkeys(CLIENT_KEYS, NEAR),
        "ENDPOINT": st.sampled_from(["http://127.0.0.1:1/", "http://h:80/api/", "h", ""]) | NEAR,
        "SAFE_METHOD_STRATEGY": STRATEGY | NEAR,
        "UNSAFE_METHOD_STRATEGY": STRATEGY | NEAR,
        "CIRCUIT_BREAKER": st.fixed_dictionaries({}, optional=dict.fromkeys(CIRCUIT_BREAKER_SCHEMA, NEAR)) | NEAR,
    },
)
# Nearly valid settings: valid values with, now and then, one of the values above in their place, so
# that settings the reader accepts are generated too (and must then build every client).
SECONDS_VALUES = st.floats(min_value=0.001, max_value=100)
VALID_DELAYS = st.one_of(
    st.fixed_dictionaries({"NAME": st.just("constant")}, optional={"DELAY": st.floats(0, 1)}),
    st.fixed_dictionaries(
        {"NAME": st.just("linear_backoff")},
        optional={"MIN_DELAY_SECONDS": st.floats(0, 1), "DELAY_MULTIPLIER": st.floats(0, 1), "JITTER": st.floats(0, 1)},
    ),
    st.fixed_dictionaries({"NAME": st.just("percentile")}, optional={"PERCENTILE": st.floats(0.01, 0.99)}),
)
VALID_STRATEGY: st.SearchStrategy[dict[str, Any]] = st.deferred(
    lambda: st.one_of(
        st.just({"NAME": "single"}),
        st.fixed_dictionaries(
            {"NAME": st.sampled_from(["sequential", "parallel"])},
            optional={"ATTEMPTS_COUNT": st.integers(1, 5), "DELAYS": VALID_DELAYS},
        ),
        st.fixed_dictionaries(
            {"NAME": st.just("retry_until_deadline_expired"), "STRATEGY": VALID_STRATEGY},
            optional={"DELAYS": VALID_DELAYS},
        ),
    )
)
VALID_CLIENT = st.fixed_dictionaries(
    {"ENDPOINT": st.sampled_from(["http://127.0.0.1:1/", "https://billing.internal:8443/api/"])},
    optional={
        "TIMEOUT": SECONDS_VALUES | NEAR,
        "PRIORITY": st.sampled_from(["high", "normal", "low"]) | NEAR,
        "MAX_CONNECTIONS": st.integers(1, 100) | NEAR,
        "CONNECT_RETRIES": st.integers(0, 3),
        "MAX_WORKERS": st.integers(1, 4),
        "LOW_TIMEOUT_THRESHOLD": st.floats(0, 0.1),
        "SAFE_METHOD_STRATEGY": VALID_STRATEGY,
        "UNSAFE_METHOD_STRATEGY": VALID_STRATEGY | NEAR,
        "CIRCUIT_BREAKER": st.none()
        | st.fixed_dictionaries(
            {},
            optional={
                "BREAK_DURATION": SECONDS_VALUES,
                "MINIMUM_THROUGHPUT": st.integers(1, 100),
                "FAILURE_THRESHOLD": st.floats(0.01, 0.99) | NEAR,
            },
        ),
    },
)
SETTINGS_VALUES = st.one_of(
    JSONISH,
    st.fixed_dictionaries(
        {"CLIENTS": st.dictionaries(st.sampled_from(["billing", "orders"]), VALID_CLIENT, min_size=1, max_size=2)},
        optional={
            "SERVICE_NAME": st.text(max_size=10),
            "TIMEOUT": SECONDS_VALUES,
            "MAX_TIMEOUT": SECONDS_VALUES | NEAR,
            "PRIORITY": st.sampled_from(["high", "normal", "low"]),
        },
    ),
    st.fixed_dictionaries(
        {},
        optional={
            **dict.fromkeys(TOP_LEVEL_KEYS, NEAR),
            "CLIENTS": st.dictionaries(st.text(max_size=6) | st.sampled_from(["billing"]), CLIENT, max_size=2) | NEAR,
        },
    ),
)


@FUZZ
@given(value=SETTINGS_VALUES)
def test_no_settings_value_raises_only_problems_are_reported(value: Any) -> None:
    read, problems = read_settings(value)
    errors = [problem for problem in problems if not problem.warning]
    for problem in problems:
        assert problem.path is not None
        assert problem.message
    if errors:
        assert read is None
        with override_settings(AIO_REQUEST=value):
            messages = check_settings()
        error_ids = {f"django_aio_request.{problem.code}" for problem in errors}
        assert error_ids <= {f"django_aio_request.{code}" for code in CODES if code.startswith("E")}
        assert error_ids == {message.id for message in messages if message.level >= checks.ERROR}
        return
    assert read is not None
    # accepted settings never fail later, at the first request: every client builds
    for spec in read.clients.values():
        build_client(spec, read.service_name).close()
