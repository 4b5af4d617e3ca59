"""core/client_setup.py: what ``setup()`` builds by default, and the endpoints it accepts.

Behaviour is checked through calls to a real loopback server: how many requests a failing GET and
a failing POST make, which budget each client gets.
"""

import re
from pathlib import Path

import pytest
from django.test import override_settings
from hypothesis import given, settings
from hypothesis import strategies as st

from django_aio_request import DefaultCircuitBreaker, RetryBudget, get, post
from django_aio_request.conf.current import InvalidSettings, current
from django_aio_request.conf.schema import read_settings
from django_aio_request.core.client_setup import setup, validate_endpoint, words_without_userinfo
from django_aio_request.strategies.parallel import ParallelStrategy
from tests.support.loopback import LoopbackServer, clients, replies
from tests.support.manage import manage

ROOT = Path(__file__).resolve().parents[2]
SECRET = "Zq7s3cretXk"


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
        ("http://bil ling:8080/", "white space"),
        ("http://billing\u200b:8080/", "invalid host"),  # a zero-width space, pasted in
        ("http://" + "a" * 64 + ".test/", "invalid host"),  # a label is at most 63 characters
        ("http://\uff41.test/", "invalid host"),  # a full-width letter
        ("http://a.\u3002b/", "invalid host"),
        # Before, these passed setup() and the settings check, and every call answered 489.
        ("http://xn--zz-/", "invalid host"),  # an xn-- label that is no punycode
        ("http://xn--abc-/", "invalid host"),  # punycode for "abc", which no IDNA encoder writes
        ("http://" + ".".join(["a" * 60] * 5) + "/", "invalid host"),  # a name over 253 characters
        ("http://a!b/", "invalid host"),
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


@pytest.mark.parametrize(
    ("endpoint", "character"),
    [
        ("http://127.0.0.1:{port}/api\n/v1/", r"'\n'"),
        ("http://127.0.0.1:{port}/a\tb/", r"'\t'"),
        ("http://127.0.0.1:{port}/a\r\nX: y/", r"'\r'"),
        ("http://127.0.0.1:{port}/a\x00/", r"'\x00'"),
        ("http://127.0.0.1:{port}/a\x7f/", r"'\x7f'"),
        ("http://127.0.0.1:{port}/a b/", "' '"),
        ("http://127.0.0.1:{port}/a\u00a0b/", r"'\xa0'"),
        ("http://127.0.0.1:{port}/v1/\n", r"'\n'"),
        (" http://127.0.0.1:{port}/", "' '"),
        ("\thttp://127.0.0.1:{port}/", r"'\t'"),
        ("http://127.0.0.1:{port}/\n", r"'\n'"),
        ("http://127.0.0.1:{port}/ ", "' '"),
    ],
)
def test_an_endpoint_with_a_control_character_or_white_space_is_refused(
    server: LoopbackServer, endpoint: str, character: str
) -> None:
    """urlsplit drops tabs and line breaks wherever they are, and control characters and spaces at
    either end: such an endpoint passed setup() and the settings check, and calls went to another
    path (``/api\n/v1/x`` was sent as ``/api/v1/x``)."""
    endpoint = endpoint.format(port=server.port)
    message = f"has a control character or white space ({character}) in it"
    with pytest.raises(ValueError, match=re.escape(message)):
        setup(endpoint=endpoint)
    _, problems = read_settings({"CLIENTS": {"billing": {"ENDPOINT": endpoint}}})
    assert [(p.path, p.code) for p in problems] == [("['CLIENTS']['billing']['ENDPOINT']", "E004")]
    assert message in problems[0].message
    assert server.received() == []


@pytest.mark.parametrize(
    "endpoint",
    ["http://127.0.0.1\\:{port}/api/", "http://127.0.0.1:{port}/a\\b/", "http://localhost\\.127.0.0.1:{port}/"],
)
def test_an_endpoint_with_a_backslash_is_refused(server: LoopbackServer, endpoint: str) -> None:
    """urllib3 ends the host at a backslash, urlsplit does not: ``http://127.0.0.1\\:18080/api/``
    passed setup() and the settings check as port 18080, and calls went to port 80."""
    endpoint = endpoint.format(port=server.port)
    with pytest.raises(ValueError, match="has a backslash in it"):
        setup(endpoint=endpoint)
    _, problems = read_settings({"CLIENTS": {"billing": {"ENDPOINT": endpoint}}})
    assert [(p.path, p.code) for p in problems] == [("['CLIENTS']['billing']['ENDPOINT']", "E004")]
    assert server.received() == []


@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:{port}/caf\udce9/", "http://bill\udce9ing:{port}/"])
def test_an_endpoint_with_a_lone_surrogate_is_refused(server: LoopbackServer, endpoint: str) -> None:
    """What ``os.environ`` makes of a byte that is not UTF-8: no call's URL can be encoded, and admin's
    tables cannot store the endpoint (every publishing round failed, a review)."""
    endpoint = endpoint.format(port=server.port)
    with pytest.raises(ValueError, match="has a lone surrogate"):
        setup(endpoint=endpoint)
    _, problems = read_settings({"CLIENTS": {"billing": {"ENDPOINT": endpoint}}})
    assert [(p.path, p.code) for p in problems] == [("['CLIENTS']['billing']['ENDPOINT']", "E004")]
    assert server.received() == []


def test_an_endpoint_with_port_0_is_refused() -> None:
    """No server listens on port 0: every call was a 489 (connection refused), counted by the breaker."""
    with pytest.raises(ValueError, match=re.escape("endpoint 'http://billing:0/' has port 0")):
        setup(endpoint="http://billing:0/")
    _, problems = read_settings({"CLIENTS": {"billing": {"ENDPOINT": "http://billing:0/"}}})
    assert [p.code for p in problems] == ["E004"]
    assert "has port 0" in problems[0].message
    assert validate_endpoint("http://billing:00080/") == "http://billing:00080/"


#: IDNA 2008 names, as written and as urllib3 and requests send them (faß.de, βόλος.com, ශ්‍රී.lk).
IDNA_2008_ENDPOINTS = [
    "http://xn--fa-hia.de/",
    "http://fa\u00df.de/",
    "http://xn--nxasmm1c.com/",
    "http://\u03b2\u03cc\u03bb\u03bf\u03c2.com/",
    "http://xn--10cl1a0b660p.lk:8080/",
    "http://\u0dc1\u0dca\u200d\u0dbb\u0dd3.lk:8080/",
]


@pytest.mark.parametrize("endpoint", IDNA_2008_ENDPOINTS)
def test_an_endpoint_of_an_idna_2008_name_is_accepted(endpoint: str) -> None:
    """setup() and the settings check refused the names written in ASCII, as Python's IDNA 2003
    codec reads xn--fa-hia as "fass" ("not valid punycode"), and passed them written in Unicode,
    after which every call raised (tests/transport/test_hostile_answers.py)."""
    assert validate_endpoint(endpoint) == endpoint
    _, problems = read_settings({"CLIENTS": {"billing": {"ENDPOINT": endpoint}}})
    assert not problems
    setup(endpoint=endpoint, metrics=False).close()


def test_the_refusal_names_the_host_as_sent_when_it_differs() -> None:
    sent_as = r"invalid host 'fa\u00df\.xn--zz-' \(sent as 'xn--fa-hia\.xn--zz-'\): an xn--"
    with pytest.raises(ValueError, match=sent_as):
        validate_endpoint("http://fa\u00df.xn--zz-/")


def test_the_refusal_of_credentials_does_not_repeat_them() -> None:
    with pytest.raises(ValueError, match="credentials") as error:
        validate_endpoint("http://user:secret@billing/")
    assert "secret" not in str(error.value)
    with pytest.raises(ValueError, match="query") as error:
        validate_endpoint("http://billing/?api_key=secret")
    assert "secret" not in str(error.value)


@pytest.mark.parametrize(
    ("words", "url", "said"),
    [
        (
            "connecting to adm1n:2024. Name",
            "redis://adm1n:2024#W1nter@127.0.0.1:6379/10",
            "connecting to ***:***. Name",
        ),
        ("connecting to moresecret:6379", "redis://:PassWord@MoreSecret/tail@h/0", "connecting to ***:6379"),
        ("as 'Sup3r\\\\Secret'", "redis://:Sup3r\\Secret/tail@h/0", "as '***'"),
        ("to /Zr8Tail@/tmp/no.sock", "unix://adm1n:Xk9f/Zr8Tail@/tmp/no.sock", "to /***@/tmp/no.sock"),
        # a "?" in the password: redis-py reads what follows as options, split at "=" and "&"
        (
            "unexpected keyword argument 'Qz7wPass'",
            "redis://:1234?Qz7wPass=zP9x@h/0",
            "unexpected keyword argument '***'",
        ),
        ("connecting to ***:815", "redis://admin:0815/xyzw@h/0", "connecting to ***:***"),  # the port's zeros dropped
        ("refused", "redis://u:longpassword@h/0", None),  # "u": too short to be told from other words
        ("refused at h:6379", "redis://h:6379/0", "refused at h:6379"),  # no credentials: as they are
        # a password given as an option, holding an "&": redis-py read its tail as an option it does not take
        (
            "unexpected keyword argument '3horsebattery'",
            "redis://h:6379/0?socket_timeout=1&password=Tr0ub4dor&3horsebattery=staple",
            "unexpected keyword argument '***'",
        ),
        (
            "unexpected keyword argument '3horsebattery'",
            "redis://h:6379/0?pass%77ord=Tr0ub4dor&3horsebattery=staple",  # the option's name percent-encoded
            "unexpected keyword argument '***'",
        ),
        (
            "unexpected keyword argument '3horsebattery'",
            "redis://h:6379/0?pass\tword=Tr0ub4dor&3horsebattery=staple",  # urlsplit deletes the tab: the password
            "unexpected keyword argument '***'",
        ),
    ],
)
def test_an_error_s_words_are_given_without_any_part_of_the_credentials(words: str, url: str, said: str | None) -> None:
    """The breaker cache's outage log (docs/security.md): each part of a LOCATION's credentials, as
    written, as repr() escapes it, in any case (a host read out of it is lowercased), put as ***."""
    assert words_without_userinfo(words, [url]) == said


#: Endpoints that carry a secret and are wrong in another way as well: the other fault was reported
#: first, with the endpoint repeated whole, secret included (a reviewer's list, 2026-12-02).
MALFORMED_WITH_A_SECRET = [
    "http://user:s3cret@/",
    "http://user:s3cret@:8080/",
    "user:s3cret@billing:8080",  # the scheme forgotten
    "//user:s3cret@billing/",
    "http:/user:s3cret@billing/",
    "http//user:s3cret@billing/",
    "ftp://user:s3cret@billing/",
    "ftp://billing/?api_key=s3cret",
    "http://billing:99999/?api_key=s3cret",
    "http://user:s3cret@[::1/",
    "http://user:s3cret@[x]/",
    "http://user:pa/s3cret@billing:8080/",  # a "/" in the password: parsers read "pa/..." as port and path
    "http://user:pa#s3cret@billing/",  # a "#" in the password: parsers read a fragment
    "ftp://billing/?next=a@s3cret",  # an "@" in the query
    " http://user:s3cret@billing/",
    "http://user:s3cret\uff20billing/",  # a full-width at sign: urlsplit refuses it under NFKC, shown whole
    "http://user:s3cret\ufe6bbilling/",  # a small-form at sign
    "ftp://billing/\uff1fapi_key=s3cret",  # a full-width question mark
    "http://user:s3cret%40billing:8080/",  # the "@" percent-encoded: read as a bad port, repeated whole (a review)
    "http://user%3As3cret%40billing/",
]


@pytest.mark.parametrize("endpoint", MALFORMED_WITH_A_SECRET)
def test_a_refusal_never_repeats_credentials_query_or_fragment_whatever_else_is_wrong(endpoint: str) -> None:
    with pytest.raises(ValueError, match="endpoint") as error:
        validate_endpoint(endpoint)
    assert "s3cret" not in str(error.value)
    _, problems = read_settings({"CLIENTS": {"billing": {"ENDPOINT": endpoint}}})
    messages = [f"{problem.message} {problem.hint}" for problem in problems]
    assert messages
    assert not [message for message in messages if "s3cret" in message]
    with (
        override_settings(AIO_REQUEST={"CLIENTS": {"billing": {"ENDPOINT": endpoint}}}),
        pytest.raises(InvalidSettings, match="E004") as invalid,
    ):
        current.settings  # noqa: B018  (what the first use of a client, and a server's startup, raise)
    assert "s3cret" not in str(invalid.value)


@pytest.mark.parametrize(
    ("endpoint", "shown"),
    [
        ("http://user:s3cret@/", "'http://***@/'"),
        ("user:s3cret@billing:8080", "'***@billing:8080' (it does not start with http:// or https://)"),
        ("http:/user:s3cret@billing/", "'http:/***@billing/' (it does not start with http:// or https://)"),
        ("ftp://billing/?api_key=s3cret", "'ftp://billing/?***'"),
        ("ftp://billing/", "'ftp://billing/' (its scheme is 'ftp')"),
        ("http:///path", "'http:///path' (no host after ://)"),
        ("http://billing:99999/?api_key=s3cret", "'http://billing:99999/?***'"),
        ("http://user:pa/s3cret@billing:8080/", "'http://***@billing:8080/' has an invalid port"),
        ("http://user:pa#s3cret@billing/", "'http://***'"),
        ("http://billing:80a/", "'http://billing:80a/' has an invalid port: Port could not be cast"),
        # a "%40" read as an "@" is shown as written: a path's "a%40b.com" named a host b.com (a review)
        ("http://billing:80x/users/a%40b.com/", "'http://***%40b.com/' has an invalid port"),
        ("http://user:s3cret%40billing:8080/", "'http://***%40billing:8080/' has an invalid port"),
        (
            "http://user:s3cret\uff20billing/",
            "'http://***@billing/' is not a URL: its host has characters that read as",
        ),
    ],
)
def test_a_refusal_shows_scheme_host_port_and_path_and_what_is_wrong(endpoint: str, shown: str) -> None:
    with pytest.raises(ValueError, match="endpoint") as error:
        validate_endpoint(endpoint)
    assert shown in str(error.value)


_TEXT = st.text(st.characters(codec="utf-8", exclude_characters=SECRET), max_size=8)
_PREFIXES = ["", "http://", "https://", "HTTP://", "ftp://", "//", "/", "http:/", "http:", "http//", " http://", "s://"]
_HOSTS = ["", "billing", "bil ling", "billing..test", "[::1", "[x]", "127.0.0.1", "a" * 64 + ".test"]
_PORTS = ["", ":", ":8080", ":99999", ":80a", ":-1"]
# Each delimiter, and the characters NFKC normalisation turns into it (urlsplit normalises a host so):
# "user:pw\uff20host" was refused as a bad [IPv6] host, shown whole, password and all.
_AT = st.sampled_from(["@", "\uff20", "\ufe6b", "%40"])  # full-width, small-form, percent-encoded
_QUESTION = st.sampled_from(["?", "\uff1f", "\ufe16", "\ufe56", "\u2047", "\u2048", "\u2049"])
_HASH = st.sampled_from(["#", "\uff03", "\ufe5f"])


@st.composite
def _endpoints_with_a_secret(draw: st.DrawFn) -> str:
    """scheme, userinfo, host, port, path, query, fragment, each of them right or wrong, with the
    secret in the userinfo (user or password, among any characters, "/", "?", "#" and "@" included),
    the query or the fragment, or several of them; each "@", "?" and "#" may be a character that
    NFKC normalises into it (full-width U+FF20, small-form U+FE6B...)."""
    places = draw(st.sets(st.sampled_from(["user", "password", "query", "fragment"]), min_size=1))

    def part(place: str) -> str:
        if place not in places:
            return draw(_TEXT)
        return draw(_TEXT) + SECRET + draw(_TEXT)

    userinfo = ""
    if bool({"user", "password"} & places) or draw(st.booleans()):
        user = part("user").replace("/", "")  # a "user//..." with no scheme before it would be one
        password = part("password").lstrip("/")
        at = draw(_AT)
        userinfo = f"{user}:{password}{at}" if draw(st.booleans()) or "user" in places else f"{password}{at}"
    path = draw(st.sampled_from(["", "/", "/api/", "/@v2/", "/a b/"])) + draw(_TEXT).replace("?", "").replace("#", "")
    query = draw(_QUESTION) + part("query") if "query" in places or draw(st.booleans()) else ""
    fragment = draw(_HASH) + part("fragment") if "fragment" in places or draw(st.booleans()) else ""
    host, port, prefix = draw(st.sampled_from(_HOSTS)), draw(st.sampled_from(_PORTS)), draw(st.sampled_from(_PREFIXES))
    return f"{prefix}{userinfo}{host}{port}{path}{query}{fragment}"


@settings(max_examples=600, deadline=None)
@given(_endpoints_with_a_secret())
def test_no_refusal_of_an_endpoint_repeats_its_userinfo_query_or_fragment(endpoint: str) -> None:
    refusal = ""
    try:
        validate_endpoint(endpoint)
    except ValueError as error:
        refusal = str(error)
        assert refusal.startswith("endpoint ")
    assert SECRET not in refusal
    _, problems = read_settings({"CLIENTS": {"billing": {"ENDPOINT": endpoint}}})
    assert not [problem for problem in problems if SECRET in f"{problem.path} {problem.message} {problem.hint}"]


def test_manage_py_check_does_not_print_the_secret_of_a_malformed_endpoint(tmp_path: Path) -> None:
    """As an operator runs it: manage.py check in a subprocess, with an endpoint that carries a password
    and has no host."""
    (tmp_path / "leaky_settings.py").write_text(
        "from settings.test import *  # noqa: F403\n"
        "AIO_REQUEST = {'CLIENTS': {'billing': {'ENDPOINT': 'http://user:s3cret@:8080/'},"
        " 'orders': {'ENDPOINT': 'ftp://orders/?api_key=s3cret'}}}\n"
    )
    result = manage("check", "--tag", "django_aio_request", settings="leaky_settings", path=tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("django_aio_request.E004") == 2, result.stderr
    assert "'http://***@:8080/'" in result.stderr
    assert "'ftp://orders/?***'" in result.stderr
    assert "s3cret" not in result.stdout + result.stderr


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


def test_a_threshold_below_the_timeout_sends(server: LoopbackServer) -> None:
    server.route("/x", lambda h: h.reply(200))
    with clients(server.url) as make:
        with make(timeout=1, low_timeout_threshold=0.9).request(get("x")) as response:
            assert response.status == 200
        with pytest.raises(ValueError, match="the client would send none"):
            make(timeout=1, low_timeout_threshold=1)
    assert len(server.received("/x")) == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": 0}, "timeout must be a positive number"),
        ({"timeout": -1}, "timeout must be a positive number"),
        ({"timeout": float("nan")}, "timeout must be a positive number"),
        ({"timeout": True}, "timeout must be a positive number"),
        ({"timeout": float("inf")}, "timeout must be a positive number"),
        ({"low_timeout_threshold": -1}, "low_timeout_threshold must be a number of seconds >= 0"),
        ({"low_timeout_threshold": float("nan")}, "low_timeout_threshold must be a number of seconds >= 0"),
        ({"low_timeout_threshold": float("inf")}, "low_timeout_threshold must be a number of seconds >= 0"),
        ({"low_timeout_threshold": "0.1"}, "low_timeout_threshold must be a number of seconds >= 0"),
        ({"low_timeout_threshold": True}, "low_timeout_threshold must be a number of seconds >= 0"),
        # The client would send nothing: every call with no deadline of its own was a 408.
        ({"timeout": 1, "low_timeout_threshold": 5}, r"low_timeout_threshold \(5\) must be less than timeout \(1\)"),
        ({"timeout": 1, "low_timeout_threshold": 1}, r"low_timeout_threshold \(1\) must be less than timeout \(1\)"),
        ({"timeout": 0.004}, r"low_timeout_threshold \(0.005\) must be less than timeout \(0.004\)"),
        ({"retry_budget": 5}, "retry_budget must be a RetryBudget or None"),
        ({"max_workers": 0}, "max_workers must be an int >= 1, not 0"),
        # A pool of 1.5 or True threads was built, where the settings reader refuses both.
        ({"max_workers": 1.5}, "max_workers must be an int >= 1, not 1.5"),
        ({"max_workers": True}, "max_workers must be an int >= 1, not True"),
        # Sent on every call as X-Service-Name: every call raised.
        ({"service_name": "a\nb"}, "X-Service-Name"),
        ({"service_name": 5}, "service_name must be a non-empty string, not 5"),
        ({"service_name": " "}, "service_name must be a non-empty string"),
        # Servers answered 431 to a 100,000-character name; the settings refuse more than 64 too.
        ({"service_name": "s" * 65}, r"service_name is longer than 64 characters \(65\)"),
    ],
)
def test_invalid_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        setup(endpoint="http://billing/", **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        (
            "safe_method_strategy",
            {"NAME": "parallel"},
            r"safe_method_strategy must be a request strategy .*AIO_REQUEST",
        ),
        ("unsafe_method_strategy", "single_attempt", "unsafe_method_strategy must be a request strategy"),
        ("circuit_breaker", {"BREAK_DURATION": 5}, r"circuit_breaker must be a circuit breaker .*AIO_REQUEST"),
        ("response_classifier", object(), "response_classifier must be a response classifier"),
        ("transport", "requests", "transport must be a transport"),
        ("request_enricher", {"Authorization": "x"}, "request_enricher must be a callable"),
        ("circuit_breaker", DefaultCircuitBreaker, "an instance, not the class DefaultCircuitBreaker"),
        ("safe_method_strategy", ParallelStrategy, "an instance, not the class ParallelStrategy"),
    ],
)
def test_a_part_of_the_wrong_kind_is_refused_as_the_client_is_built(keyword: str, value: object, message: str) -> None:
    """A settings dict or a name given to setup(): taken, and the first call raised
    ``AttributeError: 'dict' object has no attribute 'request'`` (a review)."""
    with pytest.raises(TypeError, match=message):
        setup(endpoint="http://billing:8080/", **{keyword: value})  # type: ignore[arg-type]
