"""conf/reader.py: the validating reader collects every problem in one pass, with path and what is allowed."""

import math
import time
import types
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from django_aio_request.conf.reader import (
    SECONDS,
    Problem,
    Reader,
    boolean,
    fields,
    integer,
    names,
    number,
    optional,
    priority,
)
from django_aio_request.core.priority import Priority
from tests.support.loopback import LoopbackServer, replies


def test_reading_goes_on_after_a_problem_so_every_problem_is_reported() -> None:
    reader = Reader()
    schema = {"TIMEOUT": (SECONDS, 20.0), "WORKERS": (integer(1), 4), "ON": (boolean, True)}

    got = fields(reader, "['X']", {"TIMEOUT": -1, "WORKERS": 0, "ON": "yes"}, schema)

    assert got == {"TIMEOUT": None, "WORKERS": None, "ON": None}
    assert [p.path for p in reader.problems] == ["['X']['TIMEOUT']", "['X']['WORKERS']", "['X']['ON']"]
    assert str(reader.problems[0]) == (
        "AIO_REQUEST['X']['TIMEOUT'] must be a number of seconds > 0, not -1 [django_aio_request.E003]"
    )
    assert [p.code for p in reader.problems] == ["E003", "E003", "E002"]  # bad numbers, a wrong type


def test_missing_keys_take_their_defaults() -> None:
    reader = Reader()
    assert fields(reader, "", {}, {"TIMEOUT": (SECONDS, 20.0)}) == {"TIMEOUT": 20.0}
    assert reader.problems == []


@pytest.mark.parametrize("value", [True, "1", math.nan, math.inf, -0.1, None])
def test_numbers_refuse_booleans_strings_and_non_finite_values(value: object) -> None:
    reader = Reader()
    assert number(0)(reader, "['N']", value) is None
    assert len(reader.problems) == 1


def test_number_bounds_are_named_in_the_message() -> None:
    reader = Reader()
    assert number(0, inclusive=False, below=1, what="a ratio")(reader, "['R']", 1.0) is None
    assert reader.problems[0].message == "must be a ratio > 0 and < 1, not 1.0"


def test_optional_accepts_none_as_no_limit() -> None:
    reader = Reader()
    assert optional(integer(0))(reader, "['MAX']", None) is None
    assert optional(integer(0))(reader, "['MAX']", 5) == 5
    assert reader.problems == []


def test_unknown_keys_are_reported_with_the_allowed_ones() -> None:
    reader = Reader()
    reader.mapping("['CLIENTS']['billing']", {"ENDPOINT": "http://b/", "TIMOUT": 1}, ("ENDPOINT", "TIMEOUT"))
    (problem,) = reader.problems
    assert problem == Problem(
        "['CLIENTS']['billing']['TIMOUT']",
        "is not a known key",
        "did you mean 'TIMEOUT'? allowed keys: ENDPOINT, TIMEOUT",
        code="E001",
    )


def test_priorities_and_names() -> None:
    reader = Reader()
    assert priority(reader, "['P']", "HIGH") is Priority.HIGH
    assert priority(reader, "['P']", "urgent") is None
    assert "allowed: high, normal, low" in (reader.problems[-1].hint or "")
    assert names(reader, "['K']", [" Shop ", "billing"]) == frozenset({"shop", "billing"})
    assert names(reader, "['K']", "shop") is None  # a string is not a list of names
    assert names(reader, "['K']", ["", "x"]) is None


BREAKER = {"BREAK_DURATION": 5, "SAMPLING_DURATION": 10}
HUGE_OR_TINY = [
    ({"TIMEOUT": 1e10}, "['TIMEOUT'] must be a number of seconds of at most 999999999, not 10000000000.0"),
    ({"MAX_TIMEOUT": 10**400}, "['MAX_TIMEOUT'] must be a number of seconds of at most 999999999"),
    ({"SHEDDING": {"QUEUE_TIMEOUT": 1e10}}, "['SHEDDING']['QUEUE_TIMEOUT'] must be a number of seconds of at most"),
    (
        {"SHEDDING": {"LATENCY_TOLERANCE": 1e308}},
        "['SHEDDING']['LATENCY_TOLERANCE'] must be a latency ratio of at most",
    ),
    ({"SHEDDING": {"MAX_CONCURRENCY": 10**400}}, "['SHEDDING']['MAX_CONCURRENCY'] must be a whole number of at most"),
    ({"SHEDDING": {"SWITCH_INTERVAL": 1e300}}, "['SHEDDING']['SWITCH_INTERVAL'] must be a number of seconds"),
    ({"SHEDDING": {"SWITCH_INTERVAL": 2.0}}, "['SWITCH_INTERVAL'] must be a number of seconds > 0 and <= 1.0"),
    ({"CLIENTS": {"b": {"ENDPOINT": "http://b/", "RETRY_BUDGET": {"RATIO": 10**400}}}}, "['RATIO'] must be a ratio"),
    ({"CLIENTS": {"b": {"ENDPOINT": "http://b/", "RETRY_BUDGET": {"MIN_PER_SECOND": 1e308}}}}, "['MIN_PER_SECOND']"),
    (
        {"CLIENTS": {"b": {"ENDPOINT": "http://b/", "RETRY_BUDGET": {"WINDOW_SECONDS": 1e-310}}}},
        "['WINDOW_SECONDS'] must be a number of seconds of at least 1e-06",
    ),
    ({"CLIENTS": {"b": {"ENDPOINT": "http://b/", "MAX_WORKERS": 10**12}}}, "['MAX_WORKERS'] must be a whole number"),
    ({"TIMEOUT": 1e9}, "['TIMEOUT'] must be a number of seconds of at most 999999999"),  # a header nobody reads
    (
        {"CLIENTS": {"b": {"ENDPOINT": "http://b/", "CIRCUIT_BREAKER": {**BREAKER, "WINDOWS_COUNT": 1001}}}},
        "['WINDOWS_COUNT'] must be a whole number of at most 1000",  # 1e9 windows: 2e9 keys a round
    ),
    ({"CLIENTS": {"b": {"ENDPOINT": "http://b/", "CIRCUIT_BREAKER": {**BREAKER, "BREAK_DURATION": 1e-320}}}}, "1e-06"),
]


@pytest.mark.parametrize(("setting", "message"), HUGE_OR_TINY)
def test_numbers_too_large_or_too_small_to_work_are_reported_with_their_key(
    setting: dict[str, object], message: str
) -> None:
    """Each passed manage.py check and broke at run time (OverflowError: a shedding slot never given
    back, a client that could not be built), or was reported only as "could not be read" (E099)."""
    from django_aio_request.conf.schema import read_settings

    parsed, problems = read_settings(setting)
    assert parsed is None
    assert [p.code for p in problems] == ["E003"], [str(p) for p in problems]
    assert message in str(problems[0])


def test_names_and_endpoints_longer_than_admin_s_tables_hold_are_errors() -> None:
    """A 401-character ENDPOINT passed the check, and on PostgreSQL every publishing round of the
    process failed (value too long): no report, no transition, for its other clients either."""
    from django_aio_request.conf.schema import read_settings

    long_endpoint = "http://billing:8080/" + "a" * 400
    parsed, problems = read_settings({"CLIENTS": {"billing": {"ENDPOINT": long_endpoint}}})
    assert parsed is None
    assert [(p.code, p.message) for p in problems] == [("E004", "is longer than 400 characters (420)")]
    parsed, problems = read_settings({"CLIENTS": {"b" * 101: {"ENDPOINT": "http://billing:8080/"}}})
    assert parsed is None
    assert "is a client name longer than 100 characters" in str(problems[0])
    assert read_settings({"CLIENTS": {"b" * 100: {"ENDPOINT": "http://billing:8080/" + "a" * 380}}})[0] is not None


@pytest.mark.parametrize("name", ["bad\x00name", "\x00", "bad\ud800name"], ids=["nul", "only-nul", "surrogate"])
def test_client_names_a_database_cannot_store_are_errors(name: str) -> None:
    """A NUL passed the check, and on PostgreSQL every publishing round of the process failed at its
    first query ("text fields cannot contain NUL"): its other clients left admin, their overrides unobeyed."""
    from django_aio_request.conf.schema import read_settings

    parsed, problems = read_settings(
        {"CLIENTS": {"billing": {"ENDPOINT": "http://billing:8080/"}, name: {"ENDPOINT": "http://x:1/"}}}
    )
    assert parsed is None
    [problem] = problems
    assert problem.message == "is a client name with a NUL character or a lone surrogate, which a database cannot store"
    for fine in ("new\nline", "tab\there", "zürich-订单", "a/b_%?#&"):  # stored and shown fine (a review)
        assert read_settings({"CLIENTS": {fine: {"ENDPOINT": "http://x:1/"}}})[0] is not None, fine


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("заказы", "has characters HTTP/1.1 cannot carry"),
        ("orders\r\nX-Admin: 1", "holds a line break"),
        ("orders\x01", "another control character"),  # check passed; aiohttp and gunicorn answered 400
        (" orders", "starts with white space"),  # check passed; every call raised InvalidHeader
        ("o" * 65, "longer than 64 characters"),  # this project's servers count it as "other"
        ("café", "must be printable ASCII"),  # a header carries it; this app's servers count it as "other"
        ("bill\tx", "must be printable ASCII"),  # as KNOWN_SERVICES refuses it
    ],
)
def test_a_service_name_no_header_can_carry_is_an_error(name: str, message: str) -> None:
    """It passed the check, and every call of every client then failed as a network error (489)."""
    from django_aio_request.conf.schema import read_settings

    parsed, problems = read_settings({"SERVICE_NAME": name})
    assert parsed is None
    assert [p.path for p in problems] == ["['SERVICE_NAME']"]
    assert message in str(problems[0])


def _client_with(key: str, value: object) -> dict[str, object]:
    return {"CLIENTS": {"billing": {"ENDPOINT": "http://billing:8080/", key: value}}}


#: Settings with several independent problems, and every message (after "AIO_REQUEST") each must give
#: in the one run. Before, a bad DELAYS hid ATTEMPTS_COUNT and DEADLINE_PROVIDER (never read), a bad
#: ATTEMPTS_COUNT hid DEADLINE_PROVIDER, a bad percentile number hid SATURATION_RATIO and MIN > MAX,
#: an unknown NAME hid everything under it, and a bad client name hid the client's entry.
STRATEGY = "['CLIENTS']['billing']['SAFE_METHOD_STRATEGY']"
COMBINED = [
    (
        _client_with(
            "SAFE_METHOD_STRATEGY",
            {
                "NAME": "sequential",
                "ATTEMPTS_COUNT": 0,
                "DEADLINE_PROVIDER": {"NAME": "spilt"},
                "DELAYS": {"NAME": "constant", "DELAY": -1},
            },
        ),
        [
            f"{STRATEGY}['DELAYS']['DELAY'] must be a delay in seconds >= 0, not -1",
            f"{STRATEGY}['ATTEMPTS_COUNT'] must be a whole number >= 1, not 0",
            f"{STRATEGY}['DEADLINE_PROVIDER']['NAME'] is 'spilt', not a known name",
        ],
    ),
    (
        _client_with(
            "SAFE_METHOD_STRATEGY",
            {
                "NAME": "parallel",
                # the short window is no conflict with a ratio that is invalid, not on
                "DELAYS": {
                    "NAME": "percentile",
                    "MIN_DELAY_SECONDS": -1,
                    "SATURATION_RATIO": 0.5,
                    "WINDOW_SECONDS": 10,
                },
            },
        ),
        [
            f"{STRATEGY}['DELAYS']['MIN_DELAY_SECONDS'] must be a number >= 0, not -1",
            f"{STRATEGY}['DELAYS']['SATURATION_RATIO'] must be 0 (off) or above 1",
        ],
    ),
    (
        _client_with(
            "SAFE_METHOD_STRATEGY",
            {
                "NAME": "parallel",
                "DELAYS": {"NAME": "percentile", "MIN_DELAY_SECONDS": 2, "MAX_DELAY_SECONDS": 1, "PERCENTILE": 95},
            },
        ),
        [
            f"{STRATEGY}['DELAYS']['PERCENTILE'] must be a fraction > 0 and < 1, not 95",
            f"{STRATEGY}['DELAYS']['MIN_DELAY_SECONDS'] must not exceed MAX_DELAY_SECONDS",
        ],
    ),
    (
        # A window little longer than the two recent seconds: the baseline as recent as they are.
        _client_with(
            "SAFE_METHOD_STRATEGY",
            {"NAME": "parallel", "DELAYS": {"NAME": "percentile", "WINDOW_SECONDS": 3, "SATURATION_RATIO": 2}},
        ),
        [
            f"{STRATEGY}['DELAYS']['WINDOW_SECONDS'] must be at least 20 with SATURATION_RATIO on: the baseline"
            " saturation is judged against is the least 75th percentile of the window",
        ],
    ),
    (
        _client_with(
            "SAFE_METHOD_STRATEGY",
            {"NAME": "sequentail", "ATTEMPTS_COUNT": 0, "DELAYS": {"NAME": "constant", "DELAY": -1}, "ATTEMPTS": 2},
        ),
        [
            f"{STRATEGY}['NAME'] is 'sequentail', not a known name",
            f"{STRATEGY}['ATTEMPTS'] is not a known key",  # a key no strategy has
            f"{STRATEGY}['DELAYS']['DELAY'] must be a delay in seconds >= 0, not -1",
            f"{STRATEGY}['ATTEMPTS_COUNT'] must be a whole number >= 1, not 0",
        ],
    ),
    (
        _client_with(
            "SAFE_METHOD_STRATEGY",
            {"NAME": "parallel", "DELAYS": {"NAME": "expo", "DELAY": -1, "JITTER": 2}, "ATTEMPTS_COUNT": 101},
        ),
        [
            f"{STRATEGY}['DELAYS']['NAME'] is 'expo', not a known name",
            f"{STRATEGY}['DELAYS']['DELAY'] must be a delay in seconds >= 0, not -1",
            f"{STRATEGY}['DELAYS']['JITTER'] must be a fraction >= 0 and <= 1, not 2",
            f"{STRATEGY}['ATTEMPTS_COUNT'] must be a whole number of at most 100, not 101",
        ],
    ),
    (
        _client_with(
            "SAFE_METHOD_STRATEGY",
            {"NAME": "parallel", "STRAGGLERS_ONLY": "yes", "ATTEMPTS_COUNT": 0},
        ),
        [
            f"{STRATEGY}['ATTEMPTS_COUNT'] must be a whole number >= 1, not 0",
            f"{STRATEGY}['STRAGGLERS_ONLY'] must be True or False, not 'yes'",
        ],
    ),
    (
        _client_with("SAFE_METHOD_STRATEGY", {"NAME": "sequential", "STRAGGLERS_ONLY": False}),
        [f"{STRATEGY}['STRAGGLERS_ONLY'] is not a known key"],  # hedging's, not a sequential strategy's
    ),
    (
        _client_with(
            "SAFE_METHOD_STRATEGY",
            {"NAME": "retry_until_deadline_expired", "DELAYS": {"NAME": "constant", "DELAY": -1}},
        ),
        [
            f"{STRATEGY}['DELAYS']['DELAY'] must be a delay in seconds >= 0, not -1",
            f"{STRATEGY}['STRATEGY'] is required: the strategy to repeat",
        ],
    ),
    (
        _client_with(
            "SAFE_METHOD_STRATEGY",
            {
                "NAME": "retry_until_deadline_expired",
                "DELAYS": {"NAME": "linear_backoff", "JITTER": -1},
                "STRATEGY": {"NAME": "sequential", "ATTEMPTS_COUNT": 0, "DEADLINE_PROVIDER": {"NAME": "x"}},
            },
        ),
        [
            f"{STRATEGY}['DELAYS']['JITTER'] must be a fraction >= 0 and <= 1, not -1",
            f"{STRATEGY}['STRATEGY']['ATTEMPTS_COUNT'] must be a whole number >= 1, not 0",
            f"{STRATEGY}['STRATEGY']['DEADLINE_PROVIDER']['NAME'] is 'x', not a known name",
        ],
    ),
    (
        _client_with(
            "SAFE_METHOD_STRATEGY",
            {"NAME": "sequential", "DEADLINE_PROVIDER": {"NAME": "splt", "ATTEMPTS_COUNT_TO_SPLIT": 1}},
        ),
        [
            f"{STRATEGY}['DEADLINE_PROVIDER']['NAME'] is 'splt', not a known name",
            f"{STRATEGY}['DEADLINE_PROVIDER']['ATTEMPTS_COUNT_TO_SPLIT'] must be a whole number >= 2, not 1",
        ],
    ),
    (
        {"CLIENTS": {"b" * 101: {"ENDPOINT": "orders:8080", "TIMEOUT": -1}}},
        [
            f"['CLIENTS'][{'b' * 40!r}...] is a client name longer than 100 characters",
            f"['CLIENTS'][{'b' * 40!r}...]['ENDPOINT'] endpoint must be an absolute",
            f"['CLIENTS'][{'b' * 40!r}...]['TIMEOUT'] must be a number of seconds > 0, not -1",
        ],
    ),
    (
        {"CLIENTS": {"": {"ENDPOINT": "http://b/", "TIMOUT": 1}}},
        ["['CLIENTS'][''] is not a valid client name", "['CLIENTS']['']['TIMOUT'] is not a known key"],
    ),
]


@pytest.mark.parametrize(("setting", "messages"), COMBINED)
def test_independent_problems_are_all_reported_in_one_run(setting: dict[str, object], messages: list[str]) -> None:
    """docs/checks.md: "reports every problem at once, one message per problem". Each of these took
    two or three runs of manage.py check, the user fixing the one reported to meet the next."""
    from django_aio_request.conf.schema import read_settings

    parsed, problems = read_settings(setting)
    assert parsed is None
    errors = [str(p).removeprefix("AIO_REQUEST") for p in problems if not p.warning]
    assert len(errors) == len(messages), errors
    for message in messages:
        assert [e for e in errors if e.startswith(message)], (message, errors)


def test_valid_strategies_read_as_before() -> None:
    from django_aio_request.conf.schema import DelaysSpec, StrategySpec, read_settings

    constant = {"NAME": "constant", "DELAY": 0.1}
    strategies = {
        "single": {"NAME": "single"},
        "parallel": {"NAME": "parallel", "ATTEMPTS_COUNT": 2, "DELAYS": constant},
        "sequential": {"NAME": "sequential", "DEADLINE_PROVIDER": {"NAME": "split", "ATTEMPTS_COUNT_TO_SPLIT": 2}},
        "passed": {"NAME": "sequential", "ATTEMPTS_COUNT": 5, "DEADLINE_PROVIDER": {"NAME": "pass_through"}},
        "retry": {"NAME": "retry_until_deadline_expired", "STRATEGY": {"NAME": "single"}, "DELAYS": constant},
    }
    parsed, problems = read_settings(
        {"CLIENTS": {name: {"ENDPOINT": "http://b/", "SAFE_METHOD_STRATEGY": s} for name, s in strategies.items()}}
    )
    assert parsed is not None, [str(p) for p in problems]
    delays = DelaysSpec("constant", {"DELAY": 0.1})
    assert {name: spec.safe_method_strategy for name, spec in parsed.clients.items()} == {
        "single": StrategySpec("single"),
        "parallel": StrategySpec("parallel", attempts_count=2, delays=delays),
        "sequential": StrategySpec("sequential", split_deadline=True, attempts_count_to_split=2),
        "passed": StrategySpec("sequential", attempts_count=5),
        "retry": StrategySpec("retry_until_deadline_expired", delays=delays, inner=StrategySpec("single")),
    }


def test_attempts_count_to_split_with_pass_through_is_a_misplaced_key() -> None:
    """It was accepted and ignored (never even read: "x" passed): the deadline was not split."""
    from django_aio_request.conf.schema import read_settings

    provider = {"NAME": "pass_through", "ATTEMPTS_COUNT_TO_SPLIT": "x"}
    parsed, problems = read_settings(
        _client_with("SAFE_METHOD_STRATEGY", {"NAME": "sequential", "DEADLINE_PROVIDER": provider})
    )
    assert parsed is None
    assert [(p.code, p.path, p.hint) for p in problems] == [
        ("E001", f"{STRATEGY}['DEADLINE_PROVIDER']['ATTEMPTS_COUNT_TO_SPLIT']", "allowed keys: NAME")
    ]


@pytest.mark.parametrize("value", [10_001, 10**7, 999_999_999, 10**12])
def test_max_connections_above_ten_thousand_is_an_error_saying_why(value: int) -> None:
    """10**7 passed the check, and the first call filled a pool of 10**7 slots: 7.3 s and 69 MB,
    a 408 past its TIMEOUT of 1 s (999,999,999 was allowed: minutes and gigabytes)."""
    from django_aio_request.conf.schema import read_settings

    parsed, problems = read_settings(_client_with("MAX_CONNECTIONS", value))
    assert parsed is None
    assert [(p.code, p.path) for p in problems] == [("E003", "['CLIENTS']['billing']['MAX_CONNECTIONS']")]
    assert problems[0].message == f"must be a whole number of at most 10000, not {value!r}"
    assert "connection pool is made with this many slots at the first call" in (problems[0].hint or "")
    parsed, problems = read_settings(_client_with("MAX_CONNECTIONS", 10_000))
    assert parsed is not None, [str(p) for p in problems]


def test_a_client_at_the_most_connections_builds_and_calls_at_once(server: LoopbackServer) -> None:
    """The bound is cheap to reach: built from settings at MOST_CONNECTIONS, a client and its first
    call (which makes the pool) take milliseconds (about 10 here; 10**7 took 7.3 s)."""
    from django_aio_request import get
    from django_aio_request.conf.building import build_client
    from django_aio_request.conf.schema import read_settings
    from django_aio_request.transport.requests_transport import MOST_CONNECTIONS

    server.route("/x", replies(200))
    parsed, problems = read_settings(
        {"CLIENTS": {"billing": {"ENDPOINT": server.url, "TIMEOUT": 5, "MAX_CONNECTIONS": MOST_CONNECTIONS}}}
    )
    assert parsed is not None, [str(p) for p in problems]
    started = time.perf_counter()
    client = build_client(parsed.clients["billing"], None)
    try:
        with client.request(get("x")) as response:
            assert response.status == 200
        took = time.perf_counter() - started
    finally:
        client.close()
    assert took < 0.5, took


@pytest.mark.parametrize("days", [36_501, 740_000, 1_000_000, 999_999_999, 1e10, 10**400])
def test_history_days_above_a_century_is_an_error(days: float) -> None:
    """1,000,000 (keep it forever) passed the check, and every publishing round then failed with
    OverflowError: now minus that many days is before year 1; the admin never saw the process."""
    from django_aio_request.conf.schema import read_settings

    parsed, problems = read_settings({"CIRCUIT_BREAKER_HISTORY_DAYS": days})
    assert parsed is None
    assert [(p.code, p.path) for p in problems] == [("E003", "['CIRCUIT_BREAKER_HISTORY_DAYS']")]
    assert problems[0].message == f"must be a number of days of at most 36500 (a century), not {days!r}"


@pytest.mark.django_db
def test_history_days_at_a_century_prunes() -> None:
    import datetime

    from django.test import override_settings

    from django_aio_request.breaker_publisher import Publisher
    from django_aio_request.conf.schema import MOST_HISTORY_DAYS, read_settings
    from django_aio_request.models import BreakerTransition

    setting = {"CLIENTS": {}, "CIRCUIT_BREAKER_HISTORY_DAYS": MOST_HISTORY_DAYS}
    assert read_settings(setting)[0] is not None
    now = datetime.datetime.now(tz=datetime.UTC)
    common = {"client": "billing", "endpoint": "http://b/", "host": "h", "pid": 1, "from_state": "closed"}
    for days in (1, MOST_HISTORY_DAYS + 1):
        BreakerTransition.objects.create(at=now - datetime.timedelta(days=days), to_state=str(days), **common)
    with override_settings(AIO_REQUEST=setting):
        Publisher().prune()
    assert list(BreakerTransition.objects.values_list("to_state", flat=True)) == ["1"]


@pytest.mark.parametrize("value", [101, 1_000, 999_999_999])
def test_connect_retries_above_a_hundred_is_an_error(value: int) -> None:
    """999,999,999 (retry until the deadline) passed the check, and the ~480th retry of an attempt
    failed with RecursionError: urllib3 retries by calling itself again."""
    from django_aio_request.conf.schema import read_settings

    parsed, problems = read_settings(_client_with("CONNECT_RETRIES", value))
    assert parsed is None
    assert [(p.code, p.path) for p in problems] == [("E003", "['CLIENTS']['billing']['CONNECT_RETRIES']")]
    assert problems[0].message == f"must be a whole number of at most 100, not {value}"
    assert "RecursionError" in (problems[0].hint or "")


def test_connect_retries_at_the_bound_retry_without_recursion_error(caplog: pytest.LogCaptureFixture) -> None:
    """At MOST_CONNECT_RETRIES every retry is made, from a stack 300 frames deep (a view's is less),
    and the refused attempt ends as a network error, not a RecursionError."""
    import urllib3.connectionpool

    from django_aio_request import get
    from django_aio_request.conf.building import build_client
    from django_aio_request.conf.schema import read_settings
    from django_aio_request.transport.requests_transport import MOST_CONNECT_RETRIES
    from tests.support.loopback import free_port

    client_setting = {
        "ENDPOINT": f"http://127.0.0.1:{free_port()}/",  # nothing listens: every connection is refused
        "CONNECT_RETRIES": MOST_CONNECT_RETRIES,
        "SAFE_METHOD_STRATEGY": {"NAME": "single"},
    }
    parsed, problems = read_settings({"CLIENTS": {"billing": client_setting}})
    assert parsed is not None, [str(p) for p in problems]
    client = build_client(parsed.clients["billing"], None)
    opened = 0
    urlopen = urllib3.connectionpool.HTTPConnectionPool.urlopen

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal opened
        opened += 1
        return urlopen(self, *args, **kwargs)

    def deep(frames: int) -> int:
        if frames:
            return deep(frames - 1)
        with client.request(get("x")) as response:
            return response.status

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(urllib3.connectionpool.HTTPConnectionPool, "urlopen", counted)
            assert deep(300) == 489
    finally:
        client.close()
    assert opened == MOST_CONNECT_RETRIES + 1
    assert "RecursionError" not in caplog.text


def test_the_service_name_limit_is_the_servers_label_limit() -> None:
    from django_aio_request.conf import schema
    from django_aio_request.metrics import server

    assert schema.MAX_SERVICE_NAME_LENGTH == server.MAX_SERVICE_NAME_LENGTH
    assert schema.read_settings({"SERVICE_NAME": "o" * 64})[0] is not None


HUGE = 10**5000  # more digits than Python prints: repr() raises ValueError


@pytest.mark.parametrize(
    ("aio_request", "path", "shown"),
    [
        (_client_with("TIMEOUT", HUGE), "['CLIENTS']['billing']['TIMEOUT']", "an integer of 5001 digits"),
        (_client_with("MAX_WORKERS", -HUGE), "['CLIENTS']['billing']['MAX_WORKERS']", "an integer of 5001 digits"),
        (_client_with("RETRY_BUDGET", [HUGE]), "['CLIENTS']['billing']['RETRY_BUDGET']", "a list that cannot be"),
        ({"DATABASE_STATEMENT_TIMEOUT": HUGE - 1}, "['DATABASE_STATEMENT_TIMEOUT']", "an integer of 5000 digits"),
        ({"CLIENTS": {HUGE: {"ENDPOINT": "http://billing:8080/"}}}, "['CLIENTS'][an integer of", "client name"),
        ({HUGE: 1}, "[an integer of 5001 digits]", "is not a known key"),
    ],
)
def test_a_number_too_long_to_print_is_reported_with_the_others_not_e099(
    aio_request: Any, path: str, shown: str
) -> None:
    """A whole number of more than 4,300 digits made the reader raise ValueError as it wrote the
    message: check reported E099 ("a bug") and hid every other problem, and the first use of a
    client raised that ValueError. It is now described ("an integer of 5001 digits") in its problem."""
    from django_aio_request.conf.schema import read_settings

    settings, problems = read_settings({**aio_request, "PRIORITY": "urgent"})
    assert settings is None
    assert any(str(problem).startswith(f"AIO_REQUEST{path}") and shown in str(problem) for problem in problems), [
        str(problem) for problem in problems
    ]
    assert "['PRIORITY'] is 'urgent', not a priority" in "\n".join(map(str, problems))  # not hidden


class _EntriesMadeWhenAsked(Mapping[str, Any]):
    """CLIENTS built as they are read (from the environment, say): each entry a new mapping, freed
    once read, so the next one may be given the same ``id()``."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def __getitem__(self, name: str) -> Any:
        if name not in self.names:
            raise KeyError(name)
        return types.MappingProxyType({"ENDPOINT": f"http://{name}:8080/"})

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def test_client_entries_made_as_they_are_read_keep_their_own_endpoints() -> None:
    """A review: 48 of 50 such clients took another client's ENDPOINT, ``manage.py check`` passed,
    and ``clients["users"]`` sent its calls to billing's server (the copy of an entry already freed
    was handed out again for the next one, which Python had given its ``id()``)."""
    from django_aio_request.conf.schema import read_settings

    names = [f"service{number}" for number in range(50)]
    parsed, problems = read_settings({"CLIENTS": _EntriesMadeWhenAsked(names)})
    assert problems == []
    assert parsed is not None
    assert {name: spec.endpoint for name, spec in parsed.clients.items()} == {
        name: f"http://{name}:8080/" for name in names
    }


@pytest.mark.parametrize(
    ("key", "meant"), [("endpoint", "ENDPOINT"), ("Timeout", "TIMEOUT"), ("timeout", "TIMEOUT"), ("timout", "TIMEOUT")]
)
def test_a_key_in_another_case_or_misspelt_in_it_gets_the_hint_of_the_known_one(key: str, meant: str) -> None:
    """The keys are upper case: a newcomer writes them in lower case, and difflib (which counts case)
    found no key close enough to suggest (a review: no hint for 4 of 4)."""
    from django_aio_request.conf.schema import read_settings

    _, problems = read_settings({"CLIENTS": {"billing": {"ENDPOINT": "http://billing:8080/", key: 5}}})
    [problem] = [p for p in problems if p.code == "E001"]
    assert problem.hint is not None
    assert problem.hint.startswith(f"did you mean {meant!r}?")
    _, problems = read_settings(
        {"CLIENTS": {"b": {"ENDPOINT": "http://b:1/", "SAFE_METHOD_STRATEGY": {"name": "single"}}}}
    )
    assert any(p.hint is not None and p.hint.startswith("did you mean 'NAME'?") for p in problems)


@pytest.mark.parametrize("strategy", [{}, {"name": "single"}, {"ATTEMPTS_COUNT": 2}])
def test_a_strategy_without_a_name_is_a_missing_key(strategy: dict[str, object]) -> None:
    """It was told as E005, "['NAME'] is None, not a known name" (a review)."""
    from django_aio_request.conf.schema import read_settings

    _, problems = read_settings(
        {"CLIENTS": {"billing": {"ENDPOINT": "http://billing:8080/", "SAFE_METHOD_STRATEGY": strategy}}}
    )
    missing = [p for p in problems if p.path.endswith("['SAFE_METHOD_STRATEGY']['NAME']")]
    assert [(p.code, p.message) for p in missing] == [("E010", "is missing")]
    assert missing[0].hint is not None
    assert missing[0].hint.startswith("allowed: single, sequential, parallel")


def test_clients_that_are_no_dict_get_the_dict_to_write_as_the_hint() -> None:
    from django_aio_request.conf.schema import read_settings

    _, problems = read_settings({"CLIENTS": [{"ENDPOINT": "http://billing:8080/"}]})
    [problem] = problems
    assert (problem.code, problem.message) == ("E002", "must be a dict, not list")
    assert problem.hint == "a dict of the clients by name, e.g. {'billing': {'ENDPOINT': 'http://billing:8080/'}}"
