"""Building requests: URL templates, path and query parameters, headers and bodies."""

import gc
import json
import os
import re
import subprocess
import sys
import tracemalloc
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from hypothesis import given
from hypothesis import strategies as st

from django_aio_request import (
    DefaultCircuitBreaker,
    Request,
    RequestsTransport,
    Response,
    delete,
    get,
    patch,
    patch_json,
    post,
    post_json,
    put,
    put_json,
    request,
    request_json,
)
from django_aio_request.core import request as request_module
from tests.support.loopback import LoopbackServer, clients

ENDPOINT = "http://svc.test/api/"
_ANY_URL = re.compile(r"http://svc\.test/.*")


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        for method in (responses.GET, responses.POST, responses.PUT, responses.PATCH, responses.DELETE, "OPTIONS"):
            rsps.add_callback(method, _ANY_URL, callback=lambda _: (200, {}, b"ok"))
        yield rsps


def _sent(mocked: responses.RequestsMock) -> Any:
    assert len(mocked.calls) == 1
    return mocked.calls[0].request


# --- builders -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("builder", "method"),
    [(get, "GET"), (delete, "DELETE")],
)
def test_builders_without_body(builder: Any, method: str) -> None:
    req = builder("things/{id}", path_parameters={"id": 7}, headers={"X-A": "1"})
    assert req.method == method
    assert req.url == "things/{id}"  # the template stays a template (metrics label it)
    assert req.body is None
    assert req.headers == {"X-A": "1"}
    assert req.build_url(ENDPOINT) == "http://svc.test/api/things/7"


@pytest.mark.parametrize(
    ("builder", "method"),
    [(post, "POST"), (put, "PUT"), (patch, "PATCH")],
)
def test_builders_with_body(builder: Any, method: str) -> None:
    req = builder("things", b"\x00payload")
    assert req.method == method
    assert req.body == b"\x00payload"
    assert builder("things").body is None


def test_request_builder_upper_cases_the_method_and_takes_every_part() -> None:
    req = request(
        "options",
        "things/{id}",
        body=b"b",
        path_parameters={"id": "x"},
        query_parameters={"q": 1},
        headers={"X-A": "1"},
        allow_redirects=False,
        max_redirects=3,
    )
    assert req.method == "OPTIONS"
    assert req.body == b"b"
    assert req.headers == {"X-A": "1"}
    assert req.allow_redirects is False
    assert req.max_redirects == 3
    assert req.build_url(ENDPOINT) == "http://svc.test/api/things/x?q=1"


@pytest.mark.parametrize("method", ["GET", "propfind", "M-SEARCH", "X_Custom.1", "!#$%&'*+-.^_`|~"])
def test_a_method_of_token_characters_is_taken_and_upper_cased(method: str) -> None:
    assert request(method, "x").method == method.upper()


@pytest.mark.parametrize(
    ("method", "error", "message"),
    [
        ("GE T", ValueError, "the method must be a token"),
        ("GET\r\nX-Injected: 1", ValueError, "the method must be a token"),
        ("GET\n", ValueError, "the method must be a token"),
        ("G\tET", ValueError, "the method must be a token"),
        ("GÉT", ValueError, "the method must be a token"),
        ("ǵet", ValueError, "the method must be a token"),
        ("GET/1", ValueError, "the method must be a token"),
        ("", ValueError, "the method must be a token"),
        (b"GET", TypeError, "the method must be a str, not bytes"),
        (None, TypeError, "the method must be a str, not NoneType"),
    ],
)
def test_a_method_http_cannot_carry_raises_as_the_request_is_built(
    method: Any, error: type[Exception], message: str
) -> None:
    """It was sent as far as http.client and answered 489: retried, logged as a network failure (a
    line break into the log line) and counted against the endpoint, whose breaker opened on a
    healthy server; "" went out as the request line " /x HTTP/1.1"."""
    with pytest.raises(error, match=re.escape(message)):
        request(method, "x")
    with pytest.raises(error, match=re.escape(message)):
        Request(method=method, url="x")
    with pytest.raises(error, match=re.escape(message)):
        request_json(method, "x", {})


def test_bytearray_body_is_kept_as_bytes() -> None:
    req = post("things", bytearray(b"abc"))  # accepted at run time, and typed so
    assert req.body == b"abc"
    assert type(req.body) is bytes


@pytest.mark.parametrize("body", ["text", {"a": 1}, [1, 2], 5])
def test_body_of_wrong_type_is_a_type_error(body: Any) -> None:
    with pytest.raises(TypeError, match=r"body must be bytes, not .*post_json"):
        post("things", body)


@pytest.mark.parametrize(
    ("builder", "method"),
    [(post_json, "POST"), (put_json, "PUT"), (patch_json, "PATCH")],
)
def test_json_builders(builder: Any, method: str) -> None:
    req = builder("things/{id}", {"name": "Zoë", "tags": [1, 2]}, path_parameters={"id": 3}, headers={"X-A": "1"})
    assert req.method == method
    assert req.headers == {"X-A": "1", "Content-Type": "application/json"}
    assert req.body == '{"name":"Zoë","tags":[1,2]}'.encode()
    assert json.loads(req.body) == {"name": "Zoë", "tags": [1, 2]}
    assert req.build_url(ENDPOINT) == "http://svc.test/api/things/3"


def test_request_json_with_any_method_and_null_body() -> None:
    req = request_json("delete", "things", None)
    assert req.method == "DELETE"
    assert req.body == b"null"
    assert req.headers == {"Content-Type": "application/json"}


def test_json_builder_keeps_the_callers_content_type_whatever_its_case() -> None:
    req = patch_json("things/1", {"a": None}, headers={"content-type": "application/merge-patch+json"})
    assert req.headers == {"content-type": "application/merge-patch+json"}


def test_json_builder_rejects_what_json_cannot_encode() -> None:
    with pytest.raises(TypeError):
        post_json("things", {"raw": b"bytes"})


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_json_builders_refuse_nan_and_infinity_and_send_nothing(server: LoopbackServer, number: float) -> None:
    """``{"amount": nan}`` went out as ``{"amount":NaN}``, which is not JSON (RFC 8259): a strict
    peer refuses it, and requests' own ``json=`` raises ``InvalidJSONError`` before sending."""
    server.route("/x", lambda h: h.reply(200))
    with clients(server.url) as make:
        client = make()
        for method, data in (("POST", {"amount": number}), ("PUT", [1, {"limit": number}])):
            with (
                pytest.raises(ValueError, match=r"data cannot be sent as JSON: .*NaN and infinity are not JSON"),
                client.request(request_json(method, "x", data)),
            ):
                pass
    assert server.received() == []
    looped: list[Any] = []
    looped.append(looped)
    with pytest.raises(ValueError, match=r"^Circular reference detected$"):  # json's own error, as it was
        post_json("x", looped)


# --- URL validation -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://other.test/things", "https://svc.test/api/things", "//other.test/things"])
def test_absolute_url_is_a_value_error_naming_it(url: str) -> None:
    with pytest.raises(ValueError, match="relative to the client's endpoint") as info:
        get(url)
    assert url in str(info.value)


@pytest.mark.parametrize("value", ["a\tb", "trailing ", "", '~!#%*:;,()[]{}<>@?="\\', "caf\xe9", "a\xa0b", "a\x85"])
def test_header_values_http_can_carry_pass(value: str) -> None:
    assert get("x", headers={"X-Fine": value}).headers == {"X-Fine": value}


@pytest.mark.parametrize(
    ("headers", "error", "message"),
    [
        ({"X-User": "Жанна"}, ValueError, "'X-User': the value has characters HTTP/1.1 cannot carry"),
        ({"X-Заказ": "1"}, ValueError, "the name has characters HTTP/1.1 cannot carry"),
        ({"X-Bad": "a\r\nInjected: 1"}, ValueError, "'X-Bad': the value holds a line break"),
        ({"X-Bad": "a\x00"}, ValueError, "line break or another control character"),
        # aiohttp and gunicorn answered 400 to these, requests raised InvalidHeader mid-call for the space
        ({"X-Bad": "a\x01b"}, ValueError, "another control character"),
        ({"X-Bad": "a\x7f"}, ValueError, "another control character"),
        ({"X-Bad": " leading"}, ValueError, "starts with white space"),
        # Latin-1 and white space to requests (\S): built, then InvalidHeader raised in the call
        ({"X-Bad": "\xa0token"}, ValueError, "starts with white space"),
        ({"X-Bad": "\x85token"}, ValueError, "starts with white space"),
        ({"X Bad": "1"}, ValueError, "the name must be a token"),
        ({"X-Bad:": "1"}, ValueError, "the name must be a token"),
        ({"": "1"}, ValueError, "the name must be a token"),
        ({"X-Count": 5}, TypeError, "'X-Count': the value must be a str, not int"),
        ({"X-Raw": b"bytes"}, TypeError, "must be a str, not bytes"),
    ],
)
def test_a_header_http_cannot_carry_raises_as_the_request_is_built(
    headers: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        get("x", headers=headers)
    with pytest.raises(error, match=re.escape(message)):
        get("x").with_headers(headers)  # what a REQUEST_ENRICHER adds, too
    assert get("x", headers={"X-Latin-1": "café"}).headers == {"X-Latin-1": "café"}  # Latin-1 is HTTP's
    dropped: dict[str, Any] = {"User-Agent": None}  # requests' way of dropping a session's default
    assert get("x", headers=dropped).headers == dropped


def test_a_call_with_such_a_header_raises_sends_nothing_and_leaves_the_breaker_alone(server: LoopbackServer) -> None:
    """It was a network error (489): retried, counted as the endpoint's failure, and the breaker
    opened on a healthy server."""
    server.route("/x", lambda h: h.reply(200))
    breaker: DefaultCircuitBreaker[str, Response] = DefaultCircuitBreaker(
        break_duration=5, sampling_duration=10, minimum_throughput=2, failure_threshold=0.5
    )
    with clients(server.url) as make:
        enriching = make(circuit_breaker=breaker, request_enricher=lambda r: r.with_headers({"X-User": "Жанна"}))
        for _ in range(3):
            with pytest.raises(ValueError, match="cannot carry"), enriching.request(get("x")):
                pass

        def in_place(request: Request) -> Request:
            request.headers["X-Tenant"] = "заказы"  # past with_headers(): checked after the enricher too
            return request

        mutating = make(circuit_breaker=breaker, request_enricher=in_place)
        for _ in range(3):
            with pytest.raises(ValueError, match="cannot carry"), mutating.request(get("x")):
                pass
        assert server.received() == []
        assert breaker.counts(server.url) == (0, 0)
        assert enriching.circuit_breaker is breaker


def test_negative_max_redirects_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="max_redirects"):
        get("things", max_redirects=-1)


@pytest.mark.parametrize("value", [2.5, 1.0, float("nan"), float("inf"), "3", True, None])
def test_a_max_redirects_that_is_no_int_is_refused_as_the_request_is_built(value: object) -> None:
    """2.5 or NaN was built, sent, and failed at the first redirect inside the call: a 489 retried
    and counted against a healthy endpoint's breaker, which opened (a review)."""
    with pytest.raises(TypeError, match=f"max_redirects must be an int, not {type(value).__name__}"):
        get("things", max_redirects=value)  # type: ignore[arg-type]


# --- path parameters ----------------------------------------------------------------------------------------


def test_path_parameters_fill_every_placeholder() -> None:
    req = get("users/{user}/things/{id}/{user}", path_parameters={"user": "ann", "id": 42})
    assert req.build_url(ENDPOINT) == "http://svc.test/api/users/ann/things/42/ann"


@pytest.mark.parametrize(
    ("value", "segment"),
    [
        ("a/b", "a%2Fb"),
        ("a?b=1", "a%3Fb%3D1"),
        ("a#b", "a%23b"),
        ("a b", "a%20b"),
        ("{id}", "%7Bid%7D"),
        ("ü", "%C3%BC"),
        ("%2F", "%252F"),
        ("...", "..."),
    ],
)
def test_path_parameter_values_are_quoted_so_they_stay_one_segment(value: str, segment: str) -> None:
    req = get("things/{id}/parts", path_parameters={"id": value})
    assert req.build_url(ENDPOINT) == f"http://svc.test/api/things/{segment}/parts"


def test_bytes_and_booleans_in_the_path_go_as_in_the_query(server: LoopbackServer) -> None:
    """``b"ab12"`` was sent as the segment ``b%27ab12%27`` and ``True`` as ``True`` (a 200 from another
    resource): the str() of the object, where the query sends ``ab12`` and ``true``."""
    server.route("/items/*", lambda h: h.reply(200))
    with clients(server.url) as make:
        client = make()
        for value in (b"ab12", bytearray(b"a/\xff"), True, False):
            with client.request(get("items/{id}", path_parameters={"id": value}, query_parameters={"q": value})):
                pass
    assert [r.path for r in server.received()] == [
        "/items/ab12?q=ab12",
        "/items/a%2F%FF?q=a%2F%FF",
        "/items/true?q=true",
        "/items/false?q=false",
    ]
    for value in (b"", b".", b".."):
        with pytest.raises(ValueError, match="would change the path"):
            get("items/{id}", path_parameters={"id": value}).build_url(ENDPOINT)


@pytest.mark.parametrize("value", ["..", ".", ""])
def test_dot_segment_path_parameter_is_refused(value: str) -> None:
    # "users/{id}/delete" with id ".." would otherwise become "delete" after RFC 3986 resolution; with
    # id "" it was sent as "users/delete" (and "users//delete" is that to servers that merge slashes).
    req = get("users/{id}/delete", path_parameters={"id": value})
    with pytest.raises(ValueError, match="would change the path"):
        req.build_url(ENDPOINT)


def test_a_path_parameter_of_none_is_refused() -> None:
    """It was sent as the segment ``None`` (``users/None/delete``), a request to another resource."""
    req = get("users/{id}/delete", path_parameters={"id": None})
    with pytest.raises(ValueError, match="path parameter 'id' is None"):
        req.build_url(ENDPOINT)


def test_dot_segment_path_parameter_never_reaches_the_network(
    transport: RequestsTransport, mocked: responses.RequestsMock
) -> None:
    with pytest.raises(ValueError, match="would change the path"):
        transport.send(ENDPOINT, get("users/{id}/delete", path_parameters={"id": ".."}), 1.0)
    assert len(mocked.calls) == 0


# --- query parameters ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"a": 1, "b": "x y"}, "a=1&b=x+y"),
        ({"ids": [1, 2, 3]}, "ids=1&ids=2&ids=3"),
        ({"ids": (1, 2)}, "ids=1&ids=2"),
        ({"a": None, "b": 2}, "b=2"),
        ({"ids": [1, None, 3]}, "ids=1&ids=3"),
        ({"on": True, "off": False}, "on=true&off=false"),
        ([("a", 1), ("b", 2), ("a", 3)], "a=1&b=2&a=3"),
        ({"q": "a&b=c"}, "q=a%26b%3Dc"),
        ({"q": "ü"}, "q=%C3%BC"),
        ({"q": b"x", "r": b"\xff&", "s": bytearray(b"a b")}, "q=x&r=%FF%26&s=a+b"),  # bytes as requests sends them
    ],
)
def test_query_parameters(query: Any, expected: str) -> None:
    assert get("things", query_parameters=query).build_url(ENDPOINT) == f"http://svc.test/api/things?{expected}"


def test_bytes_in_the_query_go_as_requests_sends_them() -> None:
    """``{"q": b"x"}`` was sent as ``q=b%27x%27`` (the text of the bytes object), where requests sends ``q=x``."""
    query = {"q": b"x", "r": [b"\xc3\xbc", "\u00fc"]}
    prepared = requests.Request("GET", "http://svc.test/api/things", params=query).prepare()
    assert get("things", query_parameters=query).build_url(ENDPOINT) == prepared.url


@pytest.mark.parametrize("query", [None, {}, [], {"a": None}])
def test_empty_query_adds_no_question_mark(query: Any) -> None:
    assert get("things", query_parameters=query).build_url(ENDPOINT) == "http://svc.test/api/things"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("a=1", "query_parameters must be a mapping or (name, value) pairs, not str: 'a=1'"),
        (b"a=1", "query_parameters must be a mapping or (name, value) pairs, not bytes: b'a=1'"),
        (5, "query_parameters must be a mapping or (name, value) pairs, not int: 5"),
        ([("a",)], "query_parameters: each pair must be a (name, value) tuple or list, not ('a',)"),
        (["ab"], "query_parameters: each pair must be a (name, value) tuple or list, not 'ab'"),
    ],
)
def test_query_parameters_that_are_no_mapping_nor_pairs_raise_a_type_error_as_the_request_is_built(
    query: Any, message: str
) -> None:
    """``"a=1"`` raised ``ValueError: not enough values to unpack`` from inside the call, and
    ``["ab"]`` was sent as ``a=b``."""
    with pytest.raises(TypeError, match=re.escape(message)):
        get("things", query_parameters=query)


def test_path_parameters_that_are_no_mapping_raise_a_type_error_as_the_request_is_built() -> None:
    with pytest.raises(TypeError, match=re.escape("path_parameters must be a mapping, not list: [('id', 1)]")):
        get("things/{id}", path_parameters=[("id", 1)])  # type: ignore[arg-type]


def test_pairs_from_a_generator_are_sent_by_every_attempt() -> None:
    """A generator was used up by the first attempt: a retry went without the query."""
    req = get("things", query_parameters=(pair for pair in [("a", 1), ("b", 2)]))
    assert req.build_url(ENDPOINT) == req.build_url(ENDPOINT) == "http://svc.test/api/things?a=1&b=2"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"path_parameters": {"id": "a\udc80"}}, "path parameter 'id' has a lone surrogate ('\\udc80')"),
        ({"query_parameters": {"q": "\ud800"}}, "query parameter 'q' has a lone surrogate ('\\ud800')"),
        ({"query_parameters": {"q": ["ok", "\udfff"]}}, "query parameter 'q' has a lone surrogate ('\\udfff')"),
        ({"query_parameters": [("q", "x\udc80")]}, "query parameter 'q' has a lone surrogate"),
        ({"query_parameters": {"\udc80": "x"}}, "query parameter name '\\udc80' has a lone surrogate"),
    ],
)
def test_a_lone_surrogate_in_a_parameter_raises_a_value_error_naming_it_and_sends_nothing(
    server: LoopbackServer, kwargs: dict[str, Any], message: str
) -> None:
    """It raised UnicodeEncodeError from inside the call (an unpaired surrogate, as
    ``os.fsdecode`` or ``surrogateescape`` makes of bytes that are not UTF-8)."""
    server.route("/*", lambda h: h.reply(200))
    with clients(server.url) as make:
        client = make()
        with (
            pytest.raises(ValueError, match=re.escape(message)),
            client.request(get("things/{id}" if "path_parameters" in kwargs else "things", **kwargs)),
        ):
            pass
    assert server.received() == []
    assert get("things/{id}", path_parameters={"id": "\U0001f600"}).build_url(ENDPOINT).endswith("/%F0%9F%98%80")


def test_query_parameters_extend_a_query_in_the_template() -> None:
    req = get("things?fixed=1", query_parameters={"page": 2})
    assert req.build_url(ENDPOINT) == "http://svc.test/api/things?fixed=1&page=2"


# --- joining with the endpoint (RFC 3986) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "url", "expected"),
    [
        ("http://svc.test/api/", "things/1", "http://svc.test/api/things/1"),
        ("http://svc.test/api/v2/", "things", "http://svc.test/api/v2/things"),
        ("http://svc.test", "things", "http://svc.test/things"),
        ("http://svc.test/", "things", "http://svc.test/things"),
        # Without the trailing slash the endpoint's last segment is replaced, as RFC 3986 says.
        ("http://svc.test/api", "things", "http://svc.test/things"),
        # A template starting with "/" is absolute-path: it replaces the endpoint's path.
        ("http://svc.test/api/", "/things", "http://svc.test/things"),
        ("http://svc.test:8080/api/", "", "http://svc.test:8080/api/"),
    ],
)
def test_endpoint_join(endpoint: str, url: str, expected: str) -> None:
    assert get(url).build_url(endpoint) == expected


@pytest.mark.parametrize(
    ("endpoint", "url", "expected"),
    [
        ("http://svc.test/v1//api/", "x", "http://svc.test/v1//api/x"),  # urljoin sent /v1/api/x
        ("http://svc.test/api/", "a//b", "http://svc.test/api/a//b"),
        ("http://svc.test/api/", "a//b/../c", "http://svc.test/api/a//c"),
        ("http://svc.test/api/", "/a//b?q=1", "http://svc.test/a//b?q=1"),
    ],
)
def test_empty_path_segments_are_kept_as_rfc_3986_says(endpoint: str, url: str, expected: str) -> None:
    assert get(url).build_url(endpoint) == expected


_SEGMENT = st.text(alphabet="abc.%-_~", min_size=1, max_size=4)


@given(
    base=st.lists(_SEGMENT, max_size=4),
    slash=st.booleans(),
    reference=st.lists(_SEGMENT | st.sampled_from([".", ".."]), max_size=5),
    rooted=st.booleans(),
    query=st.none() | st.text(alphabet="ab=&", min_size=1, max_size=5),  # urljoin drops a bare "?"
)
def test_the_join_is_urllib_s_where_no_segment_is_empty(
    base: list[str], slash: bool, reference: list[str], rooted: bool, query: str | None
) -> None:
    """Without empty segments, Python's urljoin is right (RFC 3986): the join must agree with it."""
    endpoint = "http://svc.test/" + "/".join(base) + ("/" if slash and base else "")
    url = ("/" if rooted else "") + "/".join(reference) + ("" if query is None else "?" + query)
    assert get(url).build_url(endpoint) == urllib.parse.urljoin(endpoint, url)


def test_a_join_longer_than_the_bound_is_done_on_every_call_and_not_kept() -> None:
    """A join of at most MAX_CACHED_JOIN characters is kept (a pure function, a hot path); a longer
    one is not: a 64 KB path parameter kept 128 KB (key and join) for each of the last 1,024 URLs."""
    bound = request_module.MAX_CACHED_JOIN
    request_module._join.cache_clear()
    request_module._base.cache_clear()
    short = get("docs/{key}", path_parameters={"key": "k"})
    assert short.build_url(ENDPOINT) == "http://svc.test/api/docs/k"
    assert request_module._join.cache_info().currsize == 1
    fits = get("docs/{key}", path_parameters={"key": "k" * (bound - len(ENDPOINT) - len("docs/"))})
    assert len(ENDPOINT) + len("docs/") + len(fits.path_parameters["key"]) == bound  # type: ignore[index]
    fits.build_url(ENDPOINT)
    assert request_module._join.cache_info().currsize == 2
    value = "k" * bound
    long = get("docs/{key}", path_parameters={"key": value}, query_parameters={"q": 1})
    for _ in range(2):
        assert long.build_url(ENDPOINT) == f"http://svc.test/api/docs/{value}?q=1"
    assert request_module._join.cache_info().currsize == 2
    far = "http://svc.test/" + "e" * bound + "/"  # an endpoint longer than the bound: not kept either
    assert get("x").build_url(far) == far + "x"
    assert request_module._join.cache_info().currsize == 2
    assert request_module._base.cache_info().currsize == 1


def _held_by_this_module(calls: Callable[[], None], where: str | None = None) -> int:
    """Bytes still held, once ``calls`` are done, by what was allocated in core/request.py (or
    ``where``, a file or folder) or by what it called (urllib's own cache of urlsplit)."""
    gc.collect()
    tracemalloc.start(10)
    try:
        before = tracemalloc.take_snapshot()
        calls()
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    only = [tracemalloc.Filter(True, where or request_module.__file__, all_frames=True)]
    return sum(stat.size_diff for stat in after.filter_traces(only).compare_to(before.filter_traces(only), "filename"))


def test_calls_with_distinct_long_paths_keep_nothing_of_them(server: LoopbackServer) -> None:
    """usage.md: the join is kept for the last 1,024 URLs of up to 1,024 characters, about 2 MiB at
    most. 1,100 calls with distinct 64 KB path parameters kept 135 MiB."""
    server.route("/docs/*", lambda h: h.reply(200))
    with clients(server.url) as make:
        client = make()

        def calls() -> None:
            for number in range(150):
                with client.request(get("docs/{key}", path_parameters={"key": f"{number:04d}" + "k" * 16_000})) as r:
                    assert r.status == 200

        # Anything the package allocated or called: the transport split the URL it sends with Python's
        # urlsplit, whose cache kept the last 128 whatever their length (16 MiB after 64 KB paths).
        urllib.parse.urlsplit.cache_clear()  # type: ignore[attr-defined]
        held = _held_by_this_module(calls, str(Path(request_module.__file__).parent.parent) + "/*")
    assert [len(received.path) for received in server.received()][-1] == len("/docs/0149") + 16_000  # sent whole
    assert held < 256 * 1024, f"{held / 2**20:.1f} MiB still held"


def test_requests_with_distinct_long_templates_keep_nothing_of_them() -> None:
    """A template the caller builds (f"docs/{key}", not a path parameter) is split to refuse an
    absolute URL: Python's urlsplit keeps its last 128 URLs whatever their length (64 KB each kept
    128 KB), so a long one is split without that cache."""

    def built() -> None:
        for number in range(150):
            url = f"docs/{number:04d}" + "k" * 16_000
            assert get(url).build_url(ENDPOINT) == "http://svc.test/api/" + url

    held = _held_by_this_module(built)
    assert held < 256 * 1024, f"{held / 2**20:.1f} MiB still held"
    with pytest.raises(ValueError, match="relative to the client's endpoint"):
        get("http://other.test/" + "k" * 16_000)  # still refused however long


@pytest.mark.parametrize("url", ["things#top", "things/{id}#", "#"])
def test_a_fragment_in_the_request_url_is_refused(url: str) -> None:
    """Never sent, and query parameters were appended after it: inside the fragment, unsent too."""
    with pytest.raises(ValueError, match="fragment"):
        get(url, query_parameters={"a": 1})


# --- with_headers -------------------------------------------------------------------------------------------


def test_with_headers_replaces_case_insensitively_and_keeps_the_original() -> None:
    original = post("things/{id}", b"x", path_parameters={"id": 1}, headers={"x-priority": "low", "X-A": "1"})
    copy = original.with_headers({"X-Priority": "high"})
    assert copy.headers == {"X-A": "1", "X-Priority": "high"}
    assert original.headers == {"x-priority": "low", "X-A": "1"}
    assert (copy.method, copy.body, copy.build_url(ENDPOINT)) == ("POST", b"x", "http://svc.test/api/things/1")


@pytest.mark.parametrize("method", ["with_headers", "_with_checked_headers"])
def test_a_copy_with_headers_keeps_every_other_part_of_the_request(method: str) -> None:
    """The copy sets each slot by name: a slot added to Request and left out there would be missing
    on every attempt the pipeline sends (it adds the wire format's headers through the copy)."""
    original = Request(
        method="PATCH",
        url="things/{id}",
        path_parameters={"id": 7},
        query_parameters=[("tag", "a")],
        headers={"X-A": "1"},
        body=b"payload",
        allow_redirects=False,
        max_redirects=3,
    )
    original.enricher_headers = frozenset({"x-a"})
    copy = getattr(original, method)({"X-B": "2"})
    for name in Request.__slots__:
        if name != "headers":
            assert getattr(copy, name) is getattr(original, name), name
    assert copy.headers == {"X-A": "1", "X-B": "2"}
    assert original.headers == {"X-A": "1"}
    assert get("plain")._with_checked_headers({"X-B": "2"}).headers == {"X-B": "2"}


def test_headers_given_are_copied() -> None:
    headers = {"X-A": "1"}
    req = get("things", headers=headers)
    headers["X-A"] = "2"
    assert req.headers == {"X-A": "1"}


def test_repr_shows_method_and_template() -> None:
    assert repr(get("things/{id}", path_parameters={"id": 1})) == "<Request GET things/{id}>"


# --- what goes on the wire (through the transport, network mocked by `responses`) --------------------------


def test_sent_url_headers_and_body(transport: RequestsTransport, mocked: responses.RequestsMock) -> None:
    req = post(
        "things/{id}",
        b"raw-body",
        path_parameters={"id": "a/b"},
        query_parameters={"tag": ["x", "y"], "skip": None, "all": True},
        headers={"X-Custom": "value", "Content-Type": "application/octet-stream"},
    )
    response = transport.send(ENDPOINT, req, 1.0)
    assert response.status == 200
    sent = _sent(mocked)
    assert sent.method == "POST"
    assert sent.url == "http://svc.test/api/things/a%2Fb?tag=x&tag=y&all=true"
    assert sent.headers["X-Custom"] == "value"
    assert sent.headers["Content-Type"] == "application/octet-stream"
    assert sent.body == b"raw-body"


def test_sent_json_body(transport: RequestsTransport, mocked: responses.RequestsMock) -> None:
    transport.send(ENDPOINT, put_json("things/1", {"n": 1, "s": "é"}), 1.0)
    sent = _sent(mocked)
    assert sent.method == "PUT"
    assert sent.headers["Content-Type"] == "application/json"
    assert json.loads(sent.body) == {"n": 1, "s": "é"}


def test_sent_json_with_callers_content_type_has_only_that_one(
    transport: RequestsTransport, mocked: responses.RequestsMock
) -> None:
    transport.send(ENDPOINT, patch_json("things/1", {}, headers={"content-type": "application/merge-patch+json"}), 1.0)
    sent = _sent(mocked)
    assert [v for k, v in sent.headers.items() if k.lower() == "content-type"] == ["application/merge-patch+json"]


def test_request_object_built_directly_is_sent_as_built(
    transport: RequestsTransport, mocked: responses.RequestsMock
) -> None:
    req = Request(method="delete", url="things/{id}", path_parameters={"id": 9}, query_parameters=[("force", True)])
    transport.send(ENDPOINT, req, 1.0)
    sent = _sent(mocked)
    assert sent.method == "DELETE"
    assert sent.url == "http://svc.test/api/things/9?force=true"
    assert not sent.body


USER_CODE = """
from typing import Any
from django_aio_request import RequestOptions, get, post, post_json

get("x", path_paramters={"id": 1})
post_json("x", {"a": 1}, query_parameters=5)
post("x", b"", headers="text")
get("x", path_parameters={"id": 1}, query_parameters={"q": "1"}, headers={"A": "b"}, allow_redirects=False)
post_json("x", [1], headers={"X": "1"}, max_redirects=3)
options: RequestOptions = {"headers": {"A": "b"}, "query_parameters": [["a", "1"]]}
get("x", **options)
loose: dict[str, Any] = {"headers": {"A": "b"}}
post("x", bytearray(b"1"), **loose)
"""


def test_a_type_checker_refuses_a_builder_s_misspelt_or_mistyped_keyword(tmp_path: Path) -> None:
    """The builders took ``**kwargs: Any``: ``mypy --strict`` passed three mistakes of these four,
    each of which raises at run time (a review)."""
    (tmp_path / "user.py").write_text(USER_CODE)
    env = {**os.environ, "MYPYPATH": str(Path(__file__).resolve().parents[2])}
    command = [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--follow-imports=silent"]
    command += ["--cache-dir", str(tmp_path / "cache"), "user.py"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert [line.split(":")[1] for line in errors] == ["5", "6", "7"], done.stdout
    assert 'Unexpected keyword argument "path_paramters" for "get"' in errors[0]


@given(value=st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=8))
def test_every_header_value_the_request_takes_is_one_requests_sends(value: str) -> None:
    """What passes ``check_headers`` must not raise later, in the call: requests checks each value
    again as it prepares the request (a value starting with U+00A0 raised its InvalidHeader there)."""
    try:
        get("x", headers={"X-Value": value})
    except ValueError:
        return
    requests.Request("GET", "http://127.0.0.1/", headers={"X-Value": value}).prepare()
