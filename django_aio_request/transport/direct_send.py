"""Sending a request straight to the adapter's urllib3 pool, past requests' per-call machinery.

On a loopback call, requests spends most of its time around the socket, not on it: merging the
session's settings into every request (``isinstance`` checks against typing Protocols), looking
for a netrc file, copying hooks, building a ``requests.Response`` and extracting cookies from it.
When the session would change nothing of that for a host, the transport builds the same
``PreparedRequest`` with requests' own ``prepare_url``, ``prepare_headers`` and ``prepare_body``
and hands it to the same connection pool ``HTTPAdapter.send`` would pick, with the same arguments.

Whatever requests would do differently takes requests' own path (``RequestsTransport._send``):

* decided once per host (a session is never changed once it is shared, field notes): a session of
  a subclass of ``requests.Session``, with ``auth``, ``params`` or response hooks, credentials in
  the URL or a netrc entry for the host, a proxy for the host, or a mounted adapter that is not the
  transport's own;
* checked on every call, because tools patch them at any time: ``requests.Session.send`` (tracing:
  OpenTelemetry, ddtrace), ``HTTPAdapter.send`` (``responses``), ``Session.get_adapter``
  (requests-mock) or the session's own attributes replaced by something that is not requests' own,
  a cookie in the session's jar, or a header value that is None (requests drops those).
"""

import dataclasses
import functools
import ssl
import sys
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from requests.cookies import RequestsCookieJar, extract_cookies_to_jar
from requests.models import PreparedRequest
from requests.structures import CaseInsensitiveDict
from requests.utils import (
    DEFAULT_CA_BUNDLE_PATH,
    check_header_validity,
    get_auth_from_url,
    get_netrc_auth,
    select_proxy,
)
from urllib3 import HTTPResponse
from urllib3.connection import port_by_scheme
from urllib3.util import Timeout
from urllib3.util.ssl_ import create_urllib3_context, resolve_ssl_version

from django_aio_request.core.request import Request, split_url


def _stock(owner: type, name: str, module: str) -> Callable[..., Any] | None:
    """``owner.name`` as requests defines it, or None if something replaced it before this import
    (then no call takes the direct route). A wrapper made with ``functools.wraps`` (OpenTelemetry's
    instrumentation, installed at start-up, before this import) copies the name and module of what
    it wraps, but not its code: the code must come from requests' own file."""
    function = owner.__dict__.get(name)
    defined_in = getattr(sys.modules.get(module), "__file__", None)
    if (
        isinstance(function, types.FunctionType)
        and function.__module__ == module
        and not hasattr(function, "__wrapped__")
        and defined_in is not None
        and function.__code__.co_filename == defined_in
    ):
        return function
    return None


_SESSION_SEND = _stock(requests.Session, "send", "requests.sessions")
_SESSION_GET_ADAPTER = _stock(requests.Session, "get_adapter", "requests.sessions")
_ADAPTER_SEND = _stock(HTTPAdapter, "send", "requests.adapters")


@dataclass(frozen=True, slots=True)
class DirectRoute:
    """How to send to one host directly: the adapter whose pool is used, and the pool's key."""

    adapter: HTTPAdapter
    #: The key of the pool ``HTTPAdapter.send`` picks for the host, and what a new pool is made of.
    pool_key: Any
    pool_context: Mapping[str, Any]
    https: bool
    verify: Any
    cert: Any
    #: The session's headers, as ``prepare_headers`` left them (validated, None values dropped).
    base_headers: CaseInsensitiveDict[Any]
    #: The session's headers they were made from (see :func:`with_session_headers`).
    headers_of: dict[Any, Any]


def _headers_now(session: requests.Session) -> Mapping[Any, Any]:
    """The session's headers as compared with a route's ``headers_of``: a ``CaseInsensitiveDict``'s
    store, or the plain dict requests also takes (``session.headers = {...}``)."""
    headers = session.headers
    return headers._store if isinstance(headers, CaseInsensitiveDict) else headers  # type: ignore[attr-defined]


def _base_headers(session: requests.Session) -> tuple[CaseInsensitiveDict[Any], dict[Any, Any]]:
    probe = PreparedRequest()
    # requests drops a session header set to None, and validates the rest on every call.
    probe.prepare_headers({name: value for name, value in session.headers.items() if value is not None})
    return probe.headers, dict(_headers_now(session))


def with_session_headers(route: DirectRoute, session: requests.Session) -> DirectRoute:
    """``route``, or a copy of it with the session's headers as they are now when they changed (a
    token renewed in ``session.headers``): one dictionary comparison a call, and nothing else of
    the route made again (its SSL context and so its pool and kept-alive connections stay)."""
    if _headers_now(session) == route.headers_of:
        return route
    base_headers, headers_of = _base_headers(session)
    return dataclasses.replace(route, base_headers=base_headers, headers_of=headers_of)


def plan_route(
    session: requests.Session, adapter_class: type[HTTPAdapter], url: str, settings: Mapping[str, Any]
) -> DirectRoute | None:
    """The direct route to ``url``'s host, or None if requests would send to it differently.

    ``settings`` are requests' environment settings for the host (proxies, verify, cert). Called
    once per host; what is checked here does not change while the session is shared.
    """
    if type(session) is not requests.Session or None in (_SESSION_SEND, _SESSION_GET_ADAPTER, _ADAPTER_SEND):
        return None
    hooks = session.hooks.get("response")  # requests takes a list or one function (register_hook)
    if session.auth is not None or session.params or callable(hooks) or any(hooks or ()):
        return None
    if select_proxy(url, settings.get("proxies") or {}) is not None:
        return None
    if any(get_auth_from_url(url)):  # credentials in the URL: requests sends them as basic auth
        return None
    if session.trust_env and get_netrc_auth(url) is not None:
        return None
    adapter = session.get_adapter(url)
    if type(adapter) is not adapter_class:
        return None
    probe = PreparedRequest()
    probe.prepare_url(url, None)
    verify, cert = settings.get("verify", True), settings.get("cert")
    # requests' own, not the guarded adapter's (which gives requests' path the context this route
    # makes below: _preload_tls): its type is adapter_class, checked above.
    host_params, pool_kwargs = HTTPAdapter.build_connection_pool_key_attributes(adapter, probe, verify, cert)
    # What PoolManager.connection_from_host works out on every call, worked out once.
    manager = adapter.poolmanager
    context = dict(manager.connection_pool_kw)
    for name, value in pool_kwargs.items():
        if value is None:
            context.pop(name, None)
        else:
            context[name] = value
    scheme = host_params["scheme"]
    context.update(scheme=scheme, host=host_params["host"], port=host_params["port"] or port_by_scheme[scheme])
    preloaded = scheme == "https" and _preload_tls(context, verify)
    pool_key = manager.key_fn_by_scheme[scheme](context)
    base_headers, headers_of = _base_headers(session)
    return DirectRoute(
        adapter, pool_key, context, scheme == "https" and not preloaded, verify, cert, base_headers, headers_of
    )


class _EncryptedKeyWithoutPassword(Exception):
    """A client key needs a password and none was given."""


class _RefusingContext(ssl.SSLContext):
    """The context of a pool whose client key is encrypted and given no password: each connection
    fails at once, as requests fails it (``SSLError``, a 489), and nothing prompts on the terminal."""

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        raise ssl.SSLError("the client certificate's key is encrypted and no password was given")


def _no_password() -> str:
    raise _EncryptedKeyWithoutPassword


# The pool arguments a preloaded TLS context holds (loaded once into it): taken out of the pool's.
LOADED_TLS_ARGUMENTS = ("ca_certs", "ca_cert_dir", "cert_file", "key_file", "key_password")


def _preload_tls(context: dict[str, Any], verify: Any) -> bool:
    """Give the host's pool one SSL context with the CA certificates (and client certificate) its
    connections verify with, loaded once: urllib3 loaded the CA bundle into a new context for each
    new connection, ~55 ms of CPU that no deadline can stop, and 200 new connections at once to a
    peer stalling the handshake ended up to 0.75 s past a 0.3 s deadline. The pool's connections
    then get no CA path to load again (requests' ``cert_verify`` is not called on this route).

    Verification is urllib3's with this context: certificate required, host name checked. With
    ``verify=False``, a context that verifies nothing, with no certificates to load: urllib3 loaded
    the system's whole store (``load_default_certs``) into a new context for each new connection all
    the same, 35-50 ms of CPU, and a burst of 200 calls to a peer stalling the handshake ended up to
    0.76 s past a 0.3 s deadline (a review). False, leaving the route as requests makes it, when the
    pool already has a context of the application's (its adapter's ``init_poolmanager``) or the
    certificates cannot be loaded (a missing bundle is then reported on the call, as requests
    reports it)."""
    if context.get("ssl_context") is not None:
        return False
    verifying = verify is not False
    ca_certs, ca_cert_dir = context.get("ca_certs"), context.get("ca_cert_dir")
    if verify is True:
        # What requests' cert_verify gives each connection, whatever CA file its pool was given
        # (init_poolmanager(ca_certs=...)): requests trusts certifi's bundle there, and so must this;
        # a pool's ca_cert_dir it leaves, and both are trusted.
        ca_certs = DEFAULT_CA_BUNDLE_PATH
    if verifying and not ca_certs and not ca_cert_dir:
        return _refused_key(context)
    try:
        # The pool's TLS versions too: urllib3 applies them only to a context it makes itself, and a
        # pool limited to TLS 1.3 (init_poolmanager(ssl_minimum_version=...)) spoke TLS 1.2 here.
        version = context.get("ssl_version")
        tls = create_urllib3_context(
            cert_reqs=ssl.CERT_REQUIRED if verifying else ssl.CERT_NONE,
            ssl_version=None if version is None else resolve_ssl_version(version),  # "PROTOCOL_TLSv1_2" too
            ssl_minimum_version=context.get("ssl_minimum_version"),
            ssl_maximum_version=context.get("ssl_maximum_version"),
        )
        if verifying:
            tls.load_verify_locations(cafile=ca_certs, capath=ca_cert_dir)
        if context.get("cert_file"):
            password = context.get("key_password")
            # An encrypted key given no password: OpenSSL would prompt on the process's terminal and
            # block the call past any deadline (a worker in the foreground, runserver). The callback
            # refuses instead, and so does every connection of the pool (below).
            tls.load_cert_chain(context["cert_file"], context.get("key_file"), password or _no_password)
    except _EncryptedKeyWithoutPassword:
        # Not left to urllib3 either: given a key inside the certificate's file (one path in
        # ``session.cert``), it loads it without a password, and OpenSSL prompted all the same.
        _refuse(context)
        return True
    except (OSError, ssl.SSLError, ValueError):
        return False
    context["ssl_context"] = tls
    for name in LOADED_TLS_ARGUMENTS:
        context.pop(name, None)
    return True


def preloaded_tls(context: Mapping[str, Any], verify: Any) -> ssl.SSLContext | None:
    """For requests' own path (transport/requests_transport.py): the context :func:`_preload_tls`
    gives a pool with the pool arguments ``context`` (the manager's and the call's), or None where
    it leaves the pool as requests makes it."""
    trial = dict(context)
    if not _preload_tls(trial, verify):
        return None
    tls: ssl.SSLContext = trial["ssl_context"]
    return tls


def _refused_key(context: dict[str, Any]) -> bool:
    """For a pool with no certificates to verify with, left as requests makes it: whether
    its client key is encrypted and given no password, and the pool refused (:func:`_refuse`)."""
    if context.get("cert_file") and not context.get("key_password") and _needs_a_password(context):
        _refuse(context)
        return True
    return False


def _needs_a_password(context: dict[str, Any]) -> bool:
    """Whether the pool's client key is encrypted (loading it asks for a password)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(
            context["cert_file"], context.get("key_file"), _no_password
        )
    except _EncryptedKeyWithoutPassword:
        return True
    except (OSError, ssl.SSLError, ValueError):
        return False  # reported by urllib3 on the call, as requests reports it
    return False


def _refuse(context: dict[str, Any]) -> None:
    """Make every connection of the pool fail at once (:class:`_RefusingContext`)."""
    refusing = _RefusingContext(ssl.PROTOCOL_TLS_CLIENT)
    refusing.check_hostname = False  # urllib3 sets what it needs (verify=False: CERT_NONE) before wrapping
    context["ssl_context"] = refusing
    for name in LOADED_TLS_ARGUMENTS:
        context.pop(name, None)


def still_direct(session: requests.Session, route: DirectRoute, url: str, request: Request) -> bool:
    """The per-call checks: nothing has been patched in since the route was planned."""
    return (
        requests.Session.send is _SESSION_SEND
        and requests.Session.get_adapter is _SESSION_GET_ADAPTER
        and HTTPAdapter.send is _ADAPTER_SEND
        and type(route.adapter).send is _ADAPTER_SEND
        and "send" not in session.__dict__
        and "get_adapter" not in session.__dict__
        and "send" not in route.adapter.__dict__
        and session.get_adapter(url) is route.adapter
        and not len(session.cookies)
        and None not in request.headers.values()
    )


def prepare(route: DirectRoute, url: str, request: Request) -> PreparedRequest:
    """The ``PreparedRequest`` requests' ``Session.prepare_request`` makes for ``request`` on this
    route's session (it raises for the same mistakes: an invalid URL or header)."""
    prepared = PreparedRequest()
    prepared.prepare_method(request.method)
    prepared.url = _prepared_url(url) if len(url) <= MAX_CACHED_URL else normalised_url(url)
    # prepare_headers() on the session's headers merged with the request's, without validating the
    # session's again (done once, in plan_route) or copying them key by key.
    headers: CaseInsensitiveDict[Any] = CaseInsensitiveDict()
    headers._store = route.base_headers._store.copy()  # type: ignore[attr-defined]
    for header in request.headers.items():
        check_header_validity(header)
        headers[header[0]] = header[1]
    prepared.headers = headers
    prepared.prepare_body(request.body, None)
    return prepared


#: URLs longer than this are normalised on every call: the cache holds at most 1,024 of at most this
#: size (2 MiB or so), whatever the application sends.
MAX_CACHED_URL = 1024


def _path_url(prepared: PreparedRequest) -> str:
    """``prepared.path_url``: the path and query sent in the request line. requests splits the URL
    with Python's ``urlsplit``, whose cache keeps the last 128 URLs of any length (a 64 KB path each
    kept 128 KB); a URL longer than MAX_CACHED_URL is split without it."""
    url = prepared.url or ""
    if len(url) <= MAX_CACHED_URL:
        return prepared.path_url
    parts = split_url(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def normalised_url(url: str) -> str:
    """``url`` as requests' ``prepare_url`` leaves it; raises for an invalid one."""
    probe = PreparedRequest()
    probe.prepare_url(url, None)
    return probe.url or url


#: The same, cached (a raise is not): a pure function of the URL, and a tenth of the direct route's
#: Python time.
_prepared_url = functools.lru_cache(maxsize=1024)(normalised_url)


def send(session: requests.Session, route: DirectRoute, prepared: PreparedRequest, timeout: float) -> HTTPResponse:
    """Send ``prepared`` as ``HTTPAdapter.send`` would, and return urllib3's response unread.

    A cookie the answer sets goes into the session's jar as ``Session.send`` puts it there (if the
    jar's policy keeps it: the transport's own session keeps none); the next call then carries it,
    on requests' own path. Raises what urllib3 raises (not requests' wrappers); the transport turns
    both into statuses.
    """
    adapter = route.adapter
    # The pool is looked up on every call (not kept): PoolManager drops the least recently used
    # pools past its size, and a kept one would outlive the manager's close().
    pool = adapter.poolmanager.connection_from_pool_key(route.pool_key, request_context=dict(route.pool_context))
    if route.https:
        adapter.cert_verify(pool, prepared.url, route.verify, route.cert)  # type: ignore[no-untyped-call]
    body = prepared.body
    response: HTTPResponse = pool.urlopen(
        method=prepared.method,
        url=_path_url(prepared),
        body=body,
        headers=prepared.headers,
        redirect=False,
        assert_same_host=False,
        preload_content=False,
        decode_content=False,
        retries=adapter.max_retries,
        timeout=Timeout(connect=timeout, read=timeout),
        chunked=not (body is None or "Content-Length" in prepared.headers),
    )
    if "set-cookie" in response.headers:
        extract_cookies_to_jar(session.cookies, prepared, response)  # type: ignore[no-untyped-call]
    return response


def as_requests_response(route: DirectRoute, prepared: PreparedRequest, raw: HTTPResponse) -> requests.Response:
    """``raw`` as the ``requests.Response`` requests' own path would have made (for following a
    redirect with requests' own ``resolve_redirects``)."""
    prepared.prepare_cookies(RequestsCookieJar())  # as prepare_request's: an empty jar the redirect reads
    return route.adapter.build_response(prepared, raw)
