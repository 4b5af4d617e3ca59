import enum
import functools
import re
import unicodedata
import urllib.parse
from collections.abc import Iterable

import requests
import urllib3

from django_aio_request.breaker.circuit_breaker import CircuitBreaker
from django_aio_request.core.attempt_threads import AttemptThreadPool
from django_aio_request.core.classifier import DefaultResponseClassifier, ResponseClassifier
from django_aio_request.core.client import Client, HedgePriority, validate_hedge_priority
from django_aio_request.core.deadline import LONGEST_DEADLINE
from django_aio_request.core.headers import MAX_SERVICE_NAME_LENGTH, X_SERVICE_NAME
from django_aio_request.core.pipeline import (
    CircuitBreakerModule,
    LowTimeoutModule,
    RequestEnricher,
    RequestModule,
    TransportModule,
    build_pipeline,
)
from django_aio_request.core.priority import Priority
from django_aio_request.core.request import check_headers
from django_aio_request.core.response import Response
from django_aio_request.core.retry_budget import RetryBudget
from django_aio_request.metrics.breaker import watch_breaker
from django_aio_request.metrics.client import ClientMetrics
from django_aio_request.metrics.prometheus import ENABLED as METRICS_ENABLED
from django_aio_request.strategies import MethodBasedStrategy, RequestStrategy, method_based_strategy
from django_aio_request.transport.base import Transport
from django_aio_request.transport.requests_transport import RequestsTransport, host_name_problem

DEFAULT_MAX_WORKERS = 32


class _Default(enum.Enum):
    DEFAULT = "default"


#: ``setup(retry_budget=DEFAULT_RETRY_BUDGET)``: a new ``RetryBudget()`` (20% + 10/s over 10 s) per client.
DEFAULT_RETRY_BUDGET = _Default.DEFAULT


#: What of an endpoint's beginning is shown in a refusal: ``scheme://`` (or ``//``), or ``http:`` /
#: ``https:`` with any slashes (``http:/host``), never a ``word:`` alone (``user:password@host``).
_SHOWN_PREFIX = re.compile(r"\s*(?:(?:[A-Za-z][A-Za-z0-9+.-]*:)?//|[Hh][Tt][Tt][Pp][Ss]?:)/*")


@functools.lru_cache(maxsize=256)
def _read_as(char: str) -> str:
    """``@``, ``?`` or ``#`` for a character that NFKC normalisation turns into one (full-width
    U+FF20, small-form U+FE6B, U+FF1F, U+2047 "??", U+FF03...), which urlsplit reads that way;
    else ``char``."""
    normalised = unicodedata.normalize("NFKC", char)
    return next((delimiter for delimiter in "@?#" if delimiter in normalised), char)


def shown_endpoint(endpoint: str) -> str:
    """``endpoint`` as a refusal may show it: scheme, host, port and path, never what may be
    credentials, a query or a fragment, however malformed the rest is.

    It does not parse (a parser reads a malformed URL in ways its writer did not mean: a password
    with a ``/`` or ``#`` in it ends the host there): everything up to the last ``@`` after the
    scheme is dropped (``***@``), and everything from the first ``?`` or ``#`` (``?***``). When a
    ``?`` or ``#`` comes before the last ``@`` (a password with one, or a query with an ``@``),
    nothing after the scheme is shown. An ``@`` in a path is dropped with what precedes it. A
    character that NFKC normalisation turns into ``@``, ``?`` or ``#`` (full-width or small-form:
    U+FF20, U+FE6B, U+FF1F, U+FF03...) counts as one: urlsplit normalises a host so, and a reader
    may take it for one; so does ``%40``, a percent-encoded ``@``.
    """
    prefix = _SHOWN_PREFIX.match(endpoint)
    head = prefix.group() if prefix else ""
    rest = endpoint[len(head) :]
    read = rest if rest.isascii() else "".join(char if char.isascii() else _read_as(char) for char in rest)
    # An "@" written percent-encoded ("user:password%40host") is read as one: its writer meant it
    # so, and a parser's refusal (a bad port) quoted the password (a review). Same length, same indexes.
    read = read.replace("%40", "%4@")
    at = read.rfind("@")
    cut = min((index for index in (read.find("?"), read.find("#")) if index >= 0), default=-1)
    if at >= 0 and 0 <= cut < at:
        return f"{head}***"
    # A "%40" read as an "@" is shown as written: read as one, a path's "a%40b.com" named a host b.com.
    shown = head if at < 0 else f"{head}***%40" if rest[at - 2 : at + 1] == "%40" else f"{head}***@"
    if cut >= 0:
        return f"{shown}{rest[at + 1 : cut]}{rest[cut]}***"
    return f"{shown}{rest[at + 1 :]}"


def error_text(error: BaseException) -> str:
    """``str(error)`` for a message, or what can be said when the error's own ``__str__`` raises
    (an exception class of the user's with a bug in it: the message must still be written)."""
    try:
        return str(error)
    except Exception as failed:
        return f"<its message could not be shown: {type(failed).__name__}>"


def hides_userinfo(url: str) -> bool:
    """Whether :func:`shown_endpoint` leaves out of ``url`` what comes before an ``@``: credentials,
    which a URL parser's error may quote (a password with a ``/`` read as the port), not only a query
    or a fragment, which those errors do not quote."""
    hidden = shown_endpoint(url)
    return "***@" in hidden or "***%40" in hidden or (hidden.endswith("***") and not hidden.endswith(("?***", "#***")))


def holds_credentials(url: str) -> bool:
    """Whether ``url`` holds credentials: before an ``@`` (:func:`hides_userinfo`), or as an option
    of its query, ``?password=`` or ``?username=``, which redis-py reads as the credentials too (its
    words then quoted a password with an ``&`` in it as an option it does not take: a review)."""
    return hides_userinfo(url) or _query_credentials(url) != ""


# A password or user name given as a URL option; its name may be percent-encoded ("pass%77ord"),
# which a query parser decodes. Found in the decoded text, the value taken from there to the end.
_QUERY_CREDENTIAL = re.compile(r"[?&;]\s*(?:password|username)=", re.IGNORECASE)
_DELETED_BY_URLSPLIT = str.maketrans("", "", "\t\r\n")


def _query_credentials(url: str) -> str:
    """Everything from the first ``password=`` or ``username=`` option of ``url``'s query to its end
    (a password may hold ``&``, ``;`` or ``,``, which end the option where a parser splits), or ""."""
    # As redis-py's parser reads it: urlsplit deletes tabs and line breaks anywhere in a URL first
    # ("pass\tword=" is the password to it; a review), then the query's names are percent-decoded.
    decoded = urllib.parse.unquote(url.translate(_DELETED_BY_URLSPLIT))
    found = _QUERY_CREDENTIAL.search(decoded)
    return decoded[found.end() :] if found else ""


def _userinfo(url: str) -> str:
    """What may be credentials in ``url``: what :func:`shown_endpoint` leaves out before its last
    ``@`` (or ``%40``), then what follows a ``password=`` or ``username=`` option; or ""."""
    from_query = _query_credentials(url)
    if not hides_userinfo(url):
        return from_query
    prefix = _SHOWN_PREFIX.match(url)
    rest = url[len(prefix.group()) :] if prefix else url
    read = rest if rest.isascii() else "".join(char if char.isascii() else _read_as(char) for char in rest)
    at = read.replace("%40", "%4@").rfind("@")
    before_at = rest[: at - 2 if rest[at - 2 : at + 1] == "%40" else at]
    return f"{before_at}&{from_query}" if from_query else before_at


# Where URL parsers split a userinfo (and Django's cache splits a LOCATION): a part between them is
# what an error may quote ("Port could not be cast to integer value as 'Xk9f'", "connecting to adm1n:2024").
_USERINFO_SPLIT = re.compile(r"(?:[:/?#;,@\[\]=&+\s]|%40)+")
_SCRUBBED_LEAST = 3  # a shorter part cannot be told from the error's other words


def words_without_userinfo(words: str, urls: Iterable[str]) -> str | None:
    """``words`` (an error's, about ``urls``: a URL parser's or a connection's) with every part of the
    urls' credentials (:func:`_userinfo`, as written and percent-decoded) put as ``***``; None when
    one such part is too short to be told from other words (the caller then leaves them all out)."""
    parts: set[str] = set()
    for url in urls:
        userinfo = _userinfo(url)
        if userinfo:
            parts.update(_USERINFO_SPLIT.split(userinfo) + _USERINFO_SPLIT.split(urllib.parse.unquote(userinfo)))
    parts.discard("")
    if any(len(part) < _SCRUBBED_LEAST for part in parts):
        return None
    # As written, as repr() writes it (a backslash doubled, a quote escaped), in any case (a host
    # read out of them is lowercased: "connecting to moresecret:6379"; a review).
    spellings = {spelling for part in parts for spelling in (part, repr(part)[1:-1], repr(part.lower())[1:-1])}
    # A number read as a port is quoted without its leading zeros ("0815": "connecting to host:815").
    spellings.update(str(int(part)) for part in parts if part.isascii() and part.isdigit() and len(str(int(part))) >= 3)
    pattern = "|".join(re.escape(spelling) for spelling in sorted(spellings, key=len, reverse=True))
    return re.sub(pattern, "***", words, flags=re.IGNORECASE) if pattern else words


def validate_endpoint(endpoint: str) -> str:
    """Return ``endpoint`` if it is an absolute http(s) URL with a host, else raise ValueError.

    The refusal shows the endpoint as :func:`shown_endpoint` does, never the credentials, query or
    fragment it may carry, whatever else is wrong with it (docs/security.md).
    """
    if not isinstance(endpoint, str):
        raise ValueError(f"endpoint must be a string URL, not {type(endpoint).__name__}")
    shown = shown_endpoint(endpoint)
    try:
        parts = urllib.parse.urlsplit(endpoint)
    except ValueError as error:  # an unclosed or invalid [IPv6] host, or characters NFKC makes "@:/?#"
        if "NFKC" in str(error):
            raise ValueError(
                f"endpoint {shown!r} is not a URL: its host has characters that read as '@', ':', '/', '?' or "
                "'#' once normalised (NFKC), such as a full-width at sign (U+FF20)"
            ) from None
        raise ValueError(
            f"endpoint {shown!r} is not a URL: its host in [brackets] is not an IPv6 address, or is not closed"
        ) from None
    # Credentials, query and fragment first: the endpoint labels metrics, keys breakers and appears
    # in logs and admin, no place for secrets, and nothing below may show them (``shown`` does not).
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"endpoint must not carry credentials (user:password@), {shown!r} does: the endpoint is shown "
            "in metrics, logs and admin; send credentials with a request enricher or a requests.Session's auth"
        )
    if parts.query or parts.fragment or endpoint.endswith(("?", "#")):
        # Never sent (a call's URL is the endpoint's path joined with the call's), and the endpoint
        # is shown in metrics, logs and admin: a token there would be both lost and exposed.
        raise ValueError(
            f"endpoint must not have a query (?...) or fragment (#...), {shown!r} has one: it is never sent, and "
            "the endpoint is shown in metrics, logs and admin; put parameters in each request, or add them "
            "with a request enricher"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"endpoint must be an absolute http:// or https:// URL with a host, not {shown!r}{_what_is_missing(shown)}"
        )
    # A parser's words may quote what ``shown`` withholds (a password with a "/" read as a port):
    # they are given only when nothing was withheld.
    told = shown == endpoint
    try:
        _ = parts.port
    except ValueError as error:
        detail = str(error) if told else "not a number from 0 to 65535"
        raise ValueError(f"endpoint {shown!r} has an invalid port: {detail}") from None
    if parts.port == 0:
        raise ValueError(f"endpoint {shown!r} has port 0, which no server listens on: give the service's port")
    # urlsplit drops tabs and line breaks wherever they are (and control characters and spaces at
    # either end), so the checks above read another URL than the one written, and calls went to
    # another path; urllib3 names a space or tab before the scheme as part of an invalid host.
    if (odd := _ODD_CHARACTER.search(endpoint)) is not None:
        raise ValueError(
            f"endpoint {shown!r} has a control character or white space ({odd.group()!r}) in it: URL parsers drop"
            " or refuse it, and calls would go to another path than written; percent-encode it (%20) or remove it"
        )
    if "\\" in endpoint:
        # urllib3 ends the host at a backslash, as browsers do; urlsplit reads it as part of the
        # host: "http://127.0.0.1\\:18080/api/" passed every check as 127.0.0.1 port 18080, and
        # calls went to port 80, path "/%5C:18080/api/".
        raise ValueError(
            f"endpoint {shown!r} has a backslash in it: URL parsers disagree on where it ends the host"
            " (urllib3 reads it as '/'), and calls could go to another host, port or path than written;"
            " percent-encode it (%5C) or remove it"
        )
    try:
        endpoint.encode("utf-8")
    except UnicodeEncodeError as error:
        # What os.environ and os.fsdecode make of a byte that is not UTF-8: every call's URL failed
        # to encode, and a database's text cannot hold it, so every publishing round of admin's
        # circuit breakers failed, the process's other clients' reports too (a review).
        raise ValueError(
            f"endpoint {shown!r} has a lone surrogate ({endpoint[error.start]!r}), which UTF-8 cannot encode: a"
            " byte that is not UTF-8, as read from the environment or a file name; percent-encode it or fix the source"
        ) from None
    _check_host(endpoint, shown, parts.hostname)
    return endpoint


#: An ASCII control character, or white space of any kind (a space, a no-break space...).
_ODD_CHARACTER = re.compile(r"[\x00-\x1f\x7f\s]")


def _what_is_missing(shown: str) -> str:
    """Why ``shown`` (an endpoint as a refusal shows it) is not an absolute http(s) URL with a host:
    read from ``shown``, so that it repeats nothing withheld."""
    scheme = re.match(r"\s*([A-Za-z][A-Za-z0-9+.-]*)://", shown)
    if scheme is None:
        return " (it does not start with http:// or https://)"
    if scheme.group(1).lower() not in ("http", "https"):
        return f" (its scheme is {scheme.group(1)!r})"
    return " (no host after ://)"


def _check_host(endpoint: str, shown: str, host: str) -> None:
    """Refuse a host that the first call would fail to build a URL or a socket address for: urllib3's
    parser (empty labels, spaces, zero-width and full-width characters, a label IDNA 2008 does not
    encode), requests' IDNA encoding, then the rule a call applies to the host it sends to (its
    ``_check_target``: ``host_name_problem`` on the host as urllib3 reads it from the URL, as given
    and as requests prepared it). The same hosts as a call's, the same rule: checked on the host as
    written (``faß.de``), it read ``ß`` as IDNA 2003 does (``fass.de``) where a call sends
    ``xn--fa-hia.de``, and the two could disagree."""
    try:
        prepared = requests.PreparedRequest()
        prepared.prepare_url(endpoint, None)
        sent = [urllib3.util.parse_url(url).host or "" for url in (endpoint, prepared.url or "")]
    except (urllib3.exceptions.LocationParseError, requests.exceptions.InvalidURL, UnicodeError) as error:
        # The parsers quote the URL: their words only when ``shown`` withholds nothing of it.
        detail = f": {error}" if shown == endpoint else ""
        raise ValueError(f"endpoint {shown!r} has an invalid host{_named(host, endpoint, shown)}{detail}") from None
    for name in dict.fromkeys(sent):
        problem = host_name_problem(name) if name else "no host once parsed"
        if problem is not None:
            # The same rule as for a redirect's target (a 488 there): the first call would fail.
            as_sent = "" if name == host or shown != endpoint else f" (sent as {name!r})"
            raise ValueError(
                f"endpoint {shown!r} has an invalid host{_named(host, endpoint, shown)}{as_sent}: {problem}"
            )


def _named(host: str, endpoint: str, shown: str) -> str:
    """The host as a refusal names it after the endpoint: not when ``shown`` withholds part of the
    endpoint, as a parser may have read the host out of that part ("user%3Apassword%40billing", with
    its "@" percent-encoded: a review)."""
    return f" {host!r}" if shown == endpoint else ""


# What each part given to setup() must have, and what to pass instead. Looked at by the method a call
# uses, not the class: a part of one's own need not subclass this package's.
_PARTS = {
    "safe_method_strategy": ("request", "a request strategy (sequential_strategy(), parallel_strategy(), ...)"),
    "unsafe_method_strategy": ("request", "a request strategy (single_attempt_strategy(), ...)"),
    "circuit_breaker": ("execute", "a circuit breaker (DefaultCircuitBreaker(...))"),
    "response_classifier": ("classify", "a response classifier (DefaultResponseClassifier(...))"),
    "transport": ("send", "a transport (RequestsTransport(...))"),
}


def _check_parts(**parts: object) -> None:
    """Refuse a part of the wrong kind as the client is built: a settings dict (``{"NAME":
    "parallel"}``) or a name was taken, and the first call raised ``AttributeError: 'dict' object has
    no attribute 'request'`` (a review)."""
    for name, part in parts.items():
        if part is None:
            continue
        if name == "request_enricher":
            if not callable(part):
                raise TypeError(f"request_enricher must be a callable (request) -> request, not {part!r}")
            continue
        method, what = _PARTS[name]
        if isinstance(part, type):  # the class, not one made of it: its methods want an instance
            raise TypeError(f"{name} must be {what}: an instance, not the class {part.__name__}; make one")
        if not callable(getattr(part, method, None)):
            settings_form = (
                " (a settings dict goes in AIO_REQUEST['CLIENTS'], not setup())" if isinstance(part, dict) else ""
            )
            raise TypeError(f"{name} must be {what}, not {part!r}{settings_form}")


def setup(
    *,
    endpoint: str,
    transport: Transport | None = None,
    safe_method_strategy: RequestStrategy | None = None,
    unsafe_method_strategy: RequestStrategy | None = None,
    response_classifier: ResponseClassifier | None = None,
    timeout: float = 20.0,
    priority: Priority = Priority.NORMAL,
    low_timeout_threshold: float = 0.005,
    emit_system_headers: bool = True,
    request_enricher: RequestEnricher | None = None,
    circuit_breaker: CircuitBreaker[str, Response] | None = None,
    service_name: str | None = None,
    max_workers: int = DEFAULT_MAX_WORKERS,
    metrics: bool = True,
    retry_budget: RetryBudget | _Default | None = DEFAULT_RETRY_BUDGET,
    hedge_priority: HedgePriority = None,
) -> Client:
    """Build a client for ``endpoint``.

    Safe methods use ``safe_method_strategy`` (default: 3 sequential attempts), the others
    ``unsafe_method_strategy`` (default: one attempt). ``max_workers`` bounds the threads that run
    parallel (hedged) attempts. Without a ``transport``, a :class:`RequestsTransport` is made with a
    connection pool as large as the attempts it lets run at once. ``metrics``: record the client's
    Prometheus metrics (docs/metrics.md; nothing is recorded without prometheus-client anyway).

    ``retry_budget`` bounds the extra attempts (retries and hedges) of all the client's strategies:
    by default a new ``RetryBudget()`` (20% of first attempts plus 10 per second, over 10 s); None
    turns it off. ``hedge_priority``: None sends hedges with the call's priority, ``"lower"`` one
    step lower, a :class:`Priority` with that one (never above the call's). See
    docs/budgets-and-shedding.md.
    """
    validate_endpoint(endpoint)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= LONGEST_DEADLINE:
        # Past LONGEST_DEADLINE (31 years, what AIO_REQUEST's TIMEOUT takes too) the waits a call
        # meets overflowed: OverflowError out of client.request(), or a 489 (setup(timeout=1e10)).
        raise ValueError(f"timeout must be a positive number of seconds up to {LONGEST_DEADLINE:,.0f}, not {timeout!r}")
    if (
        isinstance(low_timeout_threshold, bool)
        or not isinstance(low_timeout_threshold, int | float)
        or not 0 <= low_timeout_threshold < float("inf")
    ):
        raise ValueError(f"low_timeout_threshold must be a number of seconds >= 0, not {low_timeout_threshold!r}")
    if low_timeout_threshold >= timeout:
        # The client would send nothing: an attempt with less time left than the threshold is a 408,
        # and a call with no deadline of its own has at most ``timeout``.
        raise ValueError(
            f"low_timeout_threshold ({low_timeout_threshold!r}) must be less than timeout ({timeout!r}): an attempt"
            " with less time left than low_timeout_threshold is answered 408 without being sent, and a call with"
            " no deadline of its own has at most timeout, so the client would send none"
        )
    if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
        # 1.5 and True went through (a pool of True threads), where the settings reader refuses them.
        raise ValueError(f"max_workers must be an int >= 1, not {max_workers!r}")
    if service_name is not None:
        # Sent on every call: a value no header can carry ("a\nb", 5) made every call raise.
        if not isinstance(service_name, str) or not service_name.strip():
            raise ValueError(f"service_name must be a non-empty string, not {service_name!r}")
        if len(service_name) > MAX_SERVICE_NAME_LENGTH:  # servers answered a 100,000-character one 431
            raise ValueError(
                f"service_name is longer than {MAX_SERVICE_NAME_LENGTH} characters ({len(service_name)}): servers"
                " running this app count such a caller as 'other' in their metrics"
            )
        check_headers({X_SERVICE_NAME: service_name})
    _check_parts(
        safe_method_strategy=safe_method_strategy,
        unsafe_method_strategy=unsafe_method_strategy,
        circuit_breaker=circuit_breaker,
        response_classifier=response_classifier,
        transport=transport,
        request_enricher=request_enricher,
    )
    if retry_budget is not None and not isinstance(retry_budget, RetryBudget | _Default):
        raise ValueError(f"retry_budget must be a RetryBudget or None, not {retry_budget!r}")
    budget = RetryBudget() if isinstance(retry_budget, _Default) else retry_budget
    hedge_priority = validate_hedge_priority(hedge_priority)
    classifier = response_classifier or DefaultResponseClassifier()
    strategy: MethodBasedStrategy = method_based_strategy(safe=safe_method_strategy, unsafe=unsafe_method_strategy)
    recorder = ClientMetrics(endpoint, retry_budget=budget is not None) if metrics and METRICS_ENABLED else None
    modules: list[RequestModule] = [LowTimeoutModule(low_timeout_threshold, recorder)]
    if circuit_breaker is not None:
        modules.append(CircuitBreakerModule(circuit_breaker, classifier))
        if recorder is not None:
            watch_breaker(circuit_breaker, endpoint)
    transport = transport if transport is not None else RequestsTransport()
    modules.append(
        TransportModule(
            transport,
            emit_system_headers=emit_system_headers,
            request_enricher=request_enricher,
            service_name=service_name,
            metrics=recorder,
        )
    )
    return Client(
        endpoint=endpoint,
        strategy=strategy,
        classifier=classifier,
        timeout=float(timeout),
        priority=Priority(priority),
        pipeline=build_pipeline(modules),
        workers=AttemptThreadPool(max_workers),
        transport=transport,
        metrics=recorder,
        circuit_breaker=circuit_breaker,
        retry_budget=budget,
        hedge_priority=hedge_priority,
        low_timeout_threshold=low_timeout_threshold,
    )
