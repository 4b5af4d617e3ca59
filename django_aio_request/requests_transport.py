"""The default transport, on a ``requests.Session``."""

import http.cookiejar
import logging
import threading
import time
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from . import headers as h
from . import status
from .cancellation import Cancellation
from .guard import POOL_CLASSES, AttemptGuard
from .request import Request
from .response import EmptyResponse, Response
from .transport import Transport
from .watchdog import watchdog

logger = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 64


class _GuardedAdapter(HTTPAdapter):
    """An adapter whose connection pools register sockets with the attempt's guard."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = POOL_CLASSES


class RequestsTransport(Transport):
    """Sends attempts with ``requests``, bounding each one by its deadline on the wall clock.

    ``session``: a session to send with, fully configured before it is given here (requests
    sessions are shared between threads only if nothing mutates them afterwards). Its adapters for
    ``http://`` and ``https://`` are replaced by ones that enforce deadlines; headers, auth, certs
    and proxies are kept. Without one, a session is made that keeps no cookies: a cookie one
    downstream response sets must not ride along on calls made for other users.

    ``max_connections``: attempts in flight at once through this transport, and the size of each
    host's connection pool, so the pool never has to throw a connection away. An attempt that finds
    every slot taken waits for one until its deadline (then it is a 408).

    ``connect_retries``: how many times a connection that failed before anything was sent is tried
    again within the same attempt (and within its deadline).
    """

    def __init__(
        self,
        session: requests.Session | None = None,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        connect_retries: int = 0,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, not {max_connections}")
        if connect_retries < 0:
            raise ValueError(f"connect_retries must be >= 0, not {connect_retries}")
        if session is None:
            session = requests.Session()
            session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
            session.max_redirects = 1_000  # each request's own max_redirects is enforced below
        retries = Retry(
            total=connect_retries,
            connect=connect_retries,
            read=False,
            redirect=False,
            status=0,
            other=0,
            backoff_factor=0,
            raise_on_status=False,
        )
        for prefix in ("http://", "https://"):
            session.mount(
                prefix, _GuardedAdapter(pool_connections=16, pool_maxsize=max_connections, max_retries=retries)
            )
        self._session = session
        self._slots = threading.BoundedSemaphore(max_connections)
        self.max_connections = max_connections

    def send(
        self, endpoint: str, request: Request, timeout: float, cancellation: Cancellation | None = None
    ) -> Response:
        started = time.monotonic()
        guard = AttemptGuard(started + timeout)
        if not self._slots.acquire(timeout=timeout):
            return EmptyResponse(status=status.TIMEOUT, elapsed=time.monotonic() - started)
        cancel_watch = watchdog.schedule(guard.deadline, lambda: guard.abort(status.TIMEOUT))
        unregister = cancellation.on_cancel(lambda: guard.abort(status.CANCELLED)) if cancellation else None
        try:
            with guard.active():
                return self._send(endpoint, request, guard, started)
        except requests.RequestException as error:
            return self._failure(request, endpoint, error, guard, started)
        finally:
            cancel_watch()
            if unregister is not None:
                unregister()
            guard.close()
            self._slots.release()

    def _send(self, endpoint: str, request: Request, guard: AttemptGuard, started: float) -> Response:
        session = self._session
        prepared = session.prepare_request(
            requests.Request(
                method=request.method,
                url=request.build_url(endpoint),
                headers=request.headers,
                data=request.body,
            )
        )
        remaining = max(guard.remaining(), 0.001)
        kwargs: dict[str, Any] = dict(session.merge_environment_settings(prepared.url, {}, False, None, None))
        kwargs["timeout"] = (remaining, remaining)
        response = session.send(prepared, allow_redirects=False, **kwargs)
        try:
            if request.allow_redirects and response.is_redirect:
                redirects = session.resolve_redirects(response, prepared, **kwargs)
                for _ in range(request.max_redirects):
                    response = next(redirects)
                    if not response.is_redirect:
                        break
                else:
                    response.close()
                    return EmptyResponse(
                        status=status.TOO_MANY_REDIRECTS,
                        elapsed=time.monotonic() - started,
                        headers={h.LOCATION: response.headers.get(h.LOCATION, "")},
                    )
            body = response.content
        finally:
            response.close()
        return Response(
            status=response.status_code, headers=response.headers, body=body, elapsed=time.monotonic() - started
        )

    @staticmethod
    def _failure(
        request: Request, endpoint: str, error: requests.RequestException, guard: AttemptGuard, started: float
    ) -> Response:
        elapsed = time.monotonic() - started
        if guard.reason is not None:
            code = guard.reason
        elif isinstance(error, requests.Timeout):
            code = status.TIMEOUT
        elif isinstance(error, requests.TooManyRedirects):
            code = status.TOO_MANY_REDIRECTS
        elif isinstance(
            error,
            requests.ConnectionError
            | requests.exceptions.ChunkedEncodingError
            | requests.exceptions.ContentDecodingError,
        ):
            code = status.NETWORK_ERROR
        else:
            raise error  # an invalid URL, header or body: the caller's bug, not the network's
        if code != status.CANCELLED:
            logger.warning(
                "%s %s%s failed after %.3fs: %s (status %s)",
                request.method,
                endpoint,
                request.url,
                elapsed,
                type(error).__name__,
                code,
            )
        return EmptyResponse(status=code, elapsed=elapsed)

    def close(self) -> None:
        self._session.close()
