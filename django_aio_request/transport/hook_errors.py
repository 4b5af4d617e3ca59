"""What an exception a response hook raises is: the application's (raised on to the caller), or the
network's or the peer's (a status like any other failure). See docs/faults.md and :func:`raised_on`.

requests calls the response hooks of a session, of a request and of an auth (``HTTPDigestAuth``
reads the peer's challenge and sends the request again) inside ``send()``, and raises what they
raise: the transport wraps each hook so that it can tell the three apart."""

import http.client
import socket
import ssl
from collections.abc import Callable
from types import TracebackType
from typing import Any

import requests
import urllib3.exceptions

from django_aio_request.core import status
from django_aio_request.transport.attempt_sockets import current_attempt

__all__ = ["RaisedByAHook", "innermost", "raised_on"]


class RaisedByAHook(Exception):
    """A response hook of the session or the request raised ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def raised_on(hook: Callable[..., Any]) -> Callable[..., Any]:
    """``hook``, whose exception reaches the caller as it is: requests raises it from ``send()``, and
    the transport took it for a failure of the network, a 489 the breaker counted and strategies
    retried (``raise_for_status`` in a hook turned every 404 into a 489). The answer it was given
    is closed first, as nothing else will read it.

    Two kinds of error are not the hook's own code's, and stay statuses like any other failure
    (:func:`_the_peer_s_or_the_network_s`): a failure of the network met in library code (the
    failure or abort of a request the hook sent again, a body cut short that it read: an auth's
    resend raised ``ConnectionError`` out of ``client.request()`` at the deadline), and what
    requests' own auth code raises reading the peer's challenge (``HTTPDigestAuth``: ``KeyError``
    for a challenge without a nonce). Judged by the error's type and the code that raised it, not
    by which class the hook belongs to: a bug in an application's own code (its auth, its token
    refresh) is raised on, as any hook's is.

    After any failure of an auth's hook the auth forgets what it learnt on this thread: an
    ``HTTPDigestAuth`` keeps the last challenge per thread and signs the next request with it before
    sending, and one malformed challenge after a good one made every later call on that thread raise
    ``KeyError``. The request itself starts afresh too, when the transport sends it again on a fresh
    connection (its resend met a connection the server had closed): challenged anew, it is answered
    (its first 401 still counted, a 401 was the call's answer for a network blip)."""
    auth = getattr(hook, "__self__", None)
    if not isinstance(auth, requests.auth.AuthBase):
        auth = None

    def called(answer: requests.Response, *args: Any, **kwargs: Any) -> Any:
        try:
            return hook(answer, *args, **kwargs)
        except RaisedByAHook:
            raise  # a hook's, met in a request a hook sent again (session.send(r.request)): judged there
        except Exception as error:
            state = getattr(auth, "_thread_local", None)  # HTTPDigestAuth's (and its subclasses')
            if state is not None and hasattr(state, "init"):
                del state.init  # its next call starts afresh (init_per_thread_state), as on a new thread
                # And so does this request if the transport sends it again (a stale connection met by
                # the resend): without the auth's __call__, which counts each request's 401s from 1, it
                # took the fresh connection's challenge for a second 401 and returned it as the answer.
                state.num_401_calls = 1
            guard = current_attempt()
            aborted = None if guard is None else guard.reason
            if (aborted is not None and (aborted != status.TIMEOUT or _caused_by_the_network(error))) or (
                _the_peer_s_or_the_network_s(error)
            ):
                # The attempt was cancelled (a hedge that won, a caller gone): the call has its answer
                # or nobody waits for it, and a hook that wrapped its resend's failure in an error of
                # its own raised that over a winning hedge's 200. At the deadline, only an error the
                # abort caused: a bug of the hook's own met past the deadline is raised on, not a 408
                # retried with nothing logged.
                raise
            answer.close()
            raise RaisedByAHook(error) from None

    return called


# A failure of the network (or of the peer's framing), as the libraries below a hook raise it: a
# list of what they raise for it, not their base classes (an OSError is a missing file too, a
# urllib3 HTTPError an invalid URL, and every requests exception is an OSError).
_REQUESTS_NETWORK_ERRORS = (
    requests.ConnectionError,  # its ProxyError, SSLError, ConnectTimeout
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)
_NETWORK_ERRORS = (
    *_REQUESTS_NETWORK_ERRORS,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.TimeoutError,
    urllib3.exceptions.NewConnectionError,
    urllib3.exceptions.SSLError,
    urllib3.exceptions.ProxyError,
    urllib3.exceptions.DecodeError,
    urllib3.exceptions.MaxRetryError,
    http.client.IncompleteRead,
    http.client.BadStatusLine,  # RemoteDisconnected too
    http.client.LineTooLong,
    ConnectionError,  # refused, reset, aborted (an abort at the deadline), a broken pipe
    TimeoutError,
    socket.gaierror,
    ssl.SSLError,
)


def _is_a_network_error(error: BaseException) -> bool:
    if isinstance(error, requests.RequestException) and not isinstance(error, _REQUESTS_NETWORK_ERRORS):
        return False  # raise_for_status's HTTPError, an invalid URL, a missing certificate file
    return isinstance(error, _NETWORK_ERRORS)


# The code that raises them: requests', urllib3's, the standard library's sockets and HTTP, this
# transport's (an abort). An application's own code raising an OSError (a token file missing) is
# the application's.
_LIBRARIES = ("requests", "urllib3", "http", "socket", "ssl", "django_aio_request.transport")


def _caused_by_the_network(error: BaseException) -> bool:
    """Whether ``error`` or one it was raised from (``raise ... from``, or during its handling) is a
    network error."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if _is_a_network_error(cause):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def innermost(error: BaseException) -> TracebackType | None:
    """The traceback entry of the frame that raised ``error`` (None: it was never raised)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb


def _the_peer_s_or_the_network_s(error: BaseException) -> bool:
    """Whether a hook's ``error`` is the network's doing (a network error raised in library code) or
    the peer's (raised by requests' own auth code: ``requests.auth``). Judged by the module of the
    innermost Python frame, not its file: an install without sources names its files otherwise."""
    tb = innermost(error)
    if tb is None:
        return False
    module = str(tb.tb_frame.f_globals.get("__name__", ""))
    if module == "requests.auth":
        return True
    in_a_library = any(module == name or module.startswith(name + ".") for name in _LIBRARIES)
    return in_a_library and _is_a_network_error(error)
