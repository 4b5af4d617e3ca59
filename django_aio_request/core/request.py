"""Requests relative to a client's endpoint, and the builders that make them."""

import functools
import json
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any, TypedDict, Unpack

from django_aio_request.core import headers as h

MAX_REDIRECTS = 10
_PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")

PathParameters = Mapping[str, Any]
QueryParameters = Mapping[str, Any] | Iterable[tuple[str, Any] | list[Any]]  # pairs: tuples or 2-lists
Headers = Mapping[str, str]


class Request:
    """One logical request: the method, a URL template relative to the endpoint, and its parts.

    ``url`` stays a template (``"things/{id}"``); ``path_parameters`` fill it when the request is
    sent, so the template can label metrics and key latency statistics with a bounded set of values.
    """

    __slots__ = (
        "allow_redirects",
        "body",
        "enricher_headers",
        "headers",
        "max_redirects",
        "method",
        "path_parameters",
        "query_parameters",
        "url",
    )

    def __init__(
        self,
        *,
        method: str,
        url: str,
        path_parameters: PathParameters | None = None,
        query_parameters: QueryParameters | None = None,
        headers: Headers | None = None,
        body: bytes | bytearray | None = None,
        allow_redirects: bool = True,
        max_redirects: int = MAX_REDIRECTS,
    ) -> None:
        parsed = split_url(url)
        if parsed.scheme or parsed.netloc:
            raise ValueError(f"request URL must be relative to the client's endpoint, not absolute: {url!r}")
        if "#" in url:
            # Never sent, and query parameters appended after it would go into it, unsent too.
            raise ValueError(f"request URL cannot have a fragment (#...): {url!r}")
        if body is not None and not isinstance(body, bytes | bytearray):
            raise TypeError(f"body must be bytes, not {type(body).__name__}; use post_json() for objects")
        if isinstance(max_redirects, bool) or not isinstance(max_redirects, int):
            # 2.5 or NaN passed the check below, and the first redirect failed inside the call: a 489
            # counted against a healthy endpoint's breaker, retried (a review).
            raise TypeError(f"max_redirects must be an int, not {type(max_redirects).__name__} {max_redirects!r}")
        if max_redirects < 0:
            raise ValueError(f"max_redirects must be >= 0, not {max_redirects}")
        check_method(method)
        self.method = method.upper()
        self.url = url
        self.path_parameters = _checked_path_parameters(path_parameters)
        self.query_parameters = _checked_query_parameters(query_parameters)
        self.headers: dict[str, str] = dict(headers) if headers else {}
        check_headers(self.headers)
        self.body = bytes(body) if body is not None else None
        self.allow_redirects = allow_redirects
        self.max_redirects = max_redirects
        #: The names (lowercase) of the headers the client's request enricher added or changed, set
        #: by the client after the enricher ran. They were made for the client's endpoint (credentials
        #: go there), so a transport does not carry them on a redirect to another origin.
        self.enricher_headers: frozenset[str] = frozenset()

    def with_headers(self, extra: Headers) -> "Request":
        """A copy whose headers are updated with ``extra`` (case-insensitively replacing)."""
        check_headers(extra)
        return self._with_checked_headers(extra)

    def _with_checked_headers(self, extra: Mapping[str, str]) -> "Request":
        """:meth:`with_headers` for headers already known to pass :func:`check_headers`: the pipeline's
        own (the wire format's, whose values it makes, and the service name, checked once where its
        transport stage is made), added to every attempt. Checked again on each, they took 3-4 µs
        of the 25 µs the client's own layers cost a call in a loop (docs/benchmarks.md)."""
        if self.headers:
            lowered = {name.lower() for name in extra}
            merged = {k: v for k, v in self.headers.items() if k.lower() not in lowered}
            merged.update(extra)
        else:
            merged = dict(extra)
        # Every attribute is already valid: __init__'s checks skipped, each slot copied as it is
        # (tests/core/test_request.py checks that none is left out).
        copy = object.__new__(Request)
        copy.allow_redirects = self.allow_redirects
        copy.body = self.body
        copy.enricher_headers = self.enricher_headers
        copy.headers = merged
        copy.max_redirects = self.max_redirects
        copy.method = self.method
        copy.path_parameters = self.path_parameters
        copy.query_parameters = self.query_parameters
        copy.url = self.url
        return copy

    def build_url(self, endpoint: str) -> str:
        """The absolute URL: the endpoint joined (RFC 3986) with the filled template and the query."""
        path = self.url
        for name, value in (self.path_parameters or {}).items():
            if value is None:  # sent as the segment "None": a missing value, not a name
                raise ValueError(f"path parameter {name!r} is None: give it a value")
            quoted = urllib.parse.quote(_query_value(value), safe="")  # bytes and bools as in the query
            if quoted in (".", "..", ""):
                # A dot segment would move the request to another path (RFC 3986 removes it on join,
                # and requests decodes %2E back to a dot), so it can only be refused. So would an empty
                # one: "users//orders" is "users/orders" to servers that merge slashes (nginx's default).
                raise ValueError(f"path parameter {name!r} cannot be {value!r}: it would change the path")
            path = path.replace("{" + name + "}", quoted)
        if "{" in path and (missing := _PLACEHOLDER.search(path)):
            raise ValueError(f"request URL {self.url!r} has a placeholder {missing.group(0)} with no path parameter")
        url = _join(endpoint, path) if len(endpoint) + len(path) <= MAX_CACHED_JOIN else _joined(endpoint, path)
        query = encode_query(self.query_parameters)
        if query:
            url += ("&" if "?" in url else "?") + query
        return url

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.url}>"


def _checked_path_parameters(parameters: PathParameters | None) -> PathParameters | None:
    """``parameters`` if it is a mapping whose text values UTF-8 can encode, else TypeError or
    ValueError naming what is wrong, as the request is built (both raised inside the call)."""
    if parameters is None:
        return None
    if not isinstance(parameters, Mapping):
        raise TypeError(f"path_parameters must be a mapping, not {type(parameters).__name__}: {parameters!r}")
    for name, value in parameters.items():
        _check_encodable(value, f"path parameter {name!r}")
    return parameters


def _checked_query_parameters(parameters: QueryParameters | None) -> QueryParameters | None:
    """``parameters`` as a mapping, or its (name, value) pairs as a tuple (a generator's were sent
    by the first attempt only: retries went without them); TypeError for anything else (``"a=1"``
    raised ``not enough values to unpack`` inside the call, ``["ab"]`` was sent as ``a=b``) and
    ValueError for a name or value UTF-8 cannot encode (a lone surrogate), as the request is built."""
    if parameters is None:
        return None
    if isinstance(parameters, str | bytes | bytearray) or not isinstance(parameters, Iterable):
        kind = type(parameters).__name__
        raise TypeError(f"query_parameters must be a mapping or (name, value) pairs, not {kind}: {parameters!r}")
    if isinstance(parameters, Mapping):
        items: Iterable[tuple[str, Any] | list[Any]] = parameters.items()
    else:
        parameters = tuple(parameters)
        for pair in parameters:
            if not isinstance(pair, tuple | list) or len(pair) != 2:
                raise TypeError(f"query_parameters: each pair must be a (name, value) tuple or list, not {pair!r}")
        items = parameters
    for name, value in items:
        _check_encodable(name, f"query parameter name {name!r}")
        for each in value if isinstance(value, list | tuple | set | frozenset) else (value,):
            _check_encodable(each, f"query parameter {name!r}")
    return parameters


def _check_encodable(value: Any, what: str) -> None:
    """ValueError if ``value`` is text UTF-8 cannot encode: a lone surrogate, as ``os.fsdecode`` or
    the ``surrogateescape`` error handler make of bytes that are not UTF-8."""
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"{what} has a lone surrogate ({value[error.start]!r}), which UTF-8 cannot encode: pass the"
                " original bytes, or text decoded from them"
            ) from None


def check_method(method: str) -> None:
    """A method HTTP/1.1 can carry (RFC 9110 9.1): a non-empty token of ASCII letters, digits and
    ``!#$%&'*+-.^_`|~``.

    Anything else is a programming error, raised here before anything is sent. ``"GE T"``, a line
    break or ``"GÉT"`` failed only in ``http.client``, as a network error (489): retried, logged as
    the endpoint's failure (the line break went into the log line) and counted against the circuit
    breaker, which opened on a healthy server; ``""`` went out as the request line ``" /x HTTP/1.1"``.
    """
    if not isinstance(method, str):
        raise TypeError(f"the method must be a str, not {type(method).__name__}")
    if _TOKEN.fullmatch(method) is None:
        raise ValueError(f"the method must be a token (ASCII letters, digits and !#$%&'*+-.^_`|~), not {method!r}")


def check_headers(headers: Headers) -> None:
    """Header names and values HTTP/1.1 can carry (RFC 9110 5.1, 5.5): a name of token characters,
    a value of Latin-1 text without control characters (a tab inside is fine) and not starting with
    white space.

    Anything else is a programming error, raised here before anything is sent (a value of None is
    requests' way of dropping a session's default header, and passes). A value such as
    ``"заказы"`` failed only as ``http.client`` encoded it, as a network error (489): retried, counted
    against the circuit breaker, which then opened on a healthy server. One with a control character
    went out, and aiohttp and gunicorn answered 400, which no strategy retries; one starting with a
    space raised requests' InvalidHeader in the middle of the call.
    """
    for name, value in headers.items():
        if value is None:  # as in requests: drops a default of the session
            continue
        for part, what in ((name, "name"), (value, "value")):
            if not isinstance(part, str):
                raise TypeError(f"header {name!r}: the {what} must be a str, not {type(part).__name__}")
            if not part.isascii():
                try:
                    part.encode("latin-1")
                except UnicodeEncodeError:
                    raise ValueError(
                        f"header {name!r}: the {what} has characters HTTP/1.1 cannot carry (not Latin-1);"
                        " encode it (e.g. percent-encoding or base64)"
                    ) from None
        if _TOKEN.fullmatch(name) is None:
            raise ValueError(f"header {name!r}: the name must be a token (letters, digits and !#$%&'*+-.^_`|~)")
        if _CONTROL.search(value) is not None:
            raise ValueError(f"header {name!r}: the value holds a line break or another control character")
        if value[:1].isspace():
            # Unicode's white space, as requests' check (``\S``) sees it: a value starting with U+00A0
            # or U+0085 (Latin-1, fine for HTTP/1.1) passed here and raised InvalidHeader in the call.
            raise ValueError(f"header {name!r}: the value starts with white space")


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


#: A join whose endpoint and path are together longer than this is done on every call, not kept:
#: the caches below hold at most 1,024 joins and 256 endpoints of at most this size (2 MiB or so),
#: whatever the application sends (a path parameter of 64 KB kept 64 KB twice, key and join, for
#: each of the last 1,024 URLs). The bound of transport/direct_send.py's cache (MAX_CACHED_URL).
MAX_CACHED_JOIN = 1024


def _joined(endpoint: str, reference: str) -> str:
    """``reference`` (a relative URL: a path and a query) resolved against ``endpoint`` as RFC 3986
    (5.2) does. Python 3.11's ``urljoin`` drops empty path segments: an endpoint ``.../v1//api/``
    sent to ``/v1/api/...``, another resource."""
    path, mark, query = reference.partition("?")
    origin, directory, base_path = _base(endpoint) if len(endpoint) <= MAX_CACHED_JOIN else _split(endpoint)
    if not path:
        target = base_path
    elif path.startswith("/"):
        target = _remove_dot_segments(path)
    else:
        target = _remove_dot_segments(directory + path)
    return f"{origin}{target}{mark}{query}"


#: The same, cached for joins of at most MAX_CACHED_JOIN characters (build_url): a pure function.
_join = functools.lru_cache(maxsize=1024)(_joined)


def split_url(url: str) -> urllib.parse.SplitResult:
    """``urllib.parse.urlsplit(url)``, without Python's own cache (128 URLs of any length, from
    3.11 on) for a URL longer than MAX_CACHED_JOIN: a template built by the caller (``f"docs/{key}"``)
    of 64 KB kept 128 KB in it."""
    if len(url) <= MAX_CACHED_JOIN:
        return urllib.parse.urlsplit(url)
    uncached: Any = getattr(urllib.parse.urlsplit, "__wrapped__", urllib.parse.urlsplit)
    split: urllib.parse.SplitResult = uncached(url)
    return split


def _split(endpoint: str) -> tuple[str, str, str]:
    """The origin (``scheme://host:port``), directory (up to its last ``/``) and path of an endpoint
    (which has no query or fragment: ``client_setup.validate_endpoint``)."""
    parts = split_url(endpoint)
    path = parts.path or "/"
    return f"{parts.scheme}://{parts.netloc}", path[: path.rfind("/") + 1], path


#: The same, cached for endpoints of at most MAX_CACHED_JOIN characters (_joined).
_base = functools.lru_cache(maxsize=256)(_split)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4, keeping empty segments."""
    if "." not in path:
        return path
    segments = path.split("/")
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if len(kept) > 1:
                kept.pop()
        elif segment != ".":
            kept.append(segment)
    if segments[-1] in (".", ".."):
        kept.append("")  # "a/b/.." is the directory "a/"
    joined = "/".join(kept)
    return joined if joined.startswith("/") else "/" + joined


def encode_query(parameters: QueryParameters | None) -> str:
    """Encode query parameters: lists become repeated keys, None values are dropped."""
    if not parameters:
        return ""
    items = parameters.items() if isinstance(parameters, Mapping) else parameters
    pairs: list[tuple[str, str | bytes]] = []
    for name, value in items:
        values = value if isinstance(value, list | tuple | set | frozenset) else [value]
        pairs.extend((name, _query_value(v)) for v in values if v is not None)
    return urllib.parse.urlencode(pairs)


def _query_value(value: Any) -> str | bytes:
    """A value as it goes into the query or a path segment: bytes as they are (percent-encoded, as
    requests does; str() would send ``b'x'``), True and False as ``true`` and ``false``, anything
    else as its text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    return str(value)


def request(
    method: str,
    url: str,
    *,
    body: bytes | bytearray | None = None,
    path_parameters: PathParameters | None = None,
    query_parameters: QueryParameters | None = None,
    headers: Headers | None = None,
    allow_redirects: bool = True,
    max_redirects: int = MAX_REDIRECTS,
) -> Request:
    return Request(
        method=method,
        url=url,
        body=body,
        path_parameters=path_parameters,
        query_parameters=query_parameters,
        headers=headers,
        allow_redirects=allow_redirects,
        max_redirects=max_redirects,
    )


class RequestOptions(TypedDict, total=False):
    """The keyword arguments of :func:`request` the builders below pass on: typed, so that a type
    checker refuses a misspelt one (``path_paramters=``), as a call does at run time. Before, the
    builders took ``**kwargs: Any`` and ``mypy --strict`` passed three mistakes of four (a review).
    Options kept in a dict and passed as ``get(url, **options)`` type-check as this (or ``dict[str, Any]``)."""

    path_parameters: PathParameters | None
    query_parameters: QueryParameters | None
    headers: Headers | None
    allow_redirects: bool
    max_redirects: int


class _WithBody(RequestOptions, total=False):
    body: bytes | bytearray | None


class _JsonOptions(TypedDict, total=False):
    path_parameters: PathParameters | None
    query_parameters: QueryParameters | None
    allow_redirects: bool
    max_redirects: int


def get(url: str, **kwargs: Unpack[_WithBody]) -> Request:
    return request("GET", url, **kwargs)


def delete(url: str, **kwargs: Unpack[_WithBody]) -> Request:
    return request("DELETE", url, **kwargs)


def post(url: str, body: bytes | bytearray | None = None, **kwargs: Unpack[RequestOptions]) -> Request:
    return request("POST", url, body=body, **kwargs)


def put(url: str, body: bytes | bytearray | None = None, **kwargs: Unpack[RequestOptions]) -> Request:
    return request("PUT", url, body=body, **kwargs)


def patch(url: str, body: bytes | bytearray | None = None, **kwargs: Unpack[RequestOptions]) -> Request:
    return request("PATCH", url, body=body, **kwargs)


def request_json(
    method: str, url: str, data: Any, *, headers: Headers | None = None, **kwargs: Unpack[_JsonOptions]
) -> Request:
    """A request whose body is ``data`` as JSON, with ``Content-Type: application/json``.

    A float NaN or infinity in ``data`` raises ValueError: Python writes them ``NaN`` and
    ``Infinity``, which are not JSON (RFC 8259), and requests' own ``json=`` refuses them too.
    """
    try:
        body = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except ValueError as error:
        if "not JSON compliant" not in str(error):  # a circular reference, say: json's own words
            raise
        raise ValueError(
            f"data cannot be sent as JSON: it holds a float NaN or infinity ({error}); NaN and infinity are"
            " not JSON (RFC 8259): send null, a string or a number instead"
        ) from None
    merged = dict(headers or {})
    if not any(name.lower() == h.CONTENT_TYPE.lower() for name in merged):  # the caller's own type wins
        merged[h.CONTENT_TYPE] = "application/json"
    return request(method, url, body=body, headers=merged, **kwargs)


class _JsonWithHeaders(_JsonOptions, total=False):
    headers: Headers | None


def post_json(url: str, data: Any, **kwargs: Unpack[_JsonWithHeaders]) -> Request:
    return request_json("POST", url, data, **kwargs)


def put_json(url: str, data: Any, **kwargs: Unpack[_JsonWithHeaders]) -> Request:
    return request_json("PUT", url, data, **kwargs)


def patch_json(url: str, data: Any, **kwargs: Unpack[_JsonWithHeaders]) -> Request:
    return request_json("PATCH", url, data, **kwargs)
