"""Connections through a SOCKS proxy (``socks5://``, ``socks5h://``, ``socks4://``, ``socks4a://``) that
the attempt's deadline reaches, as it reaches those of HTTP(S) proxies (attempt_sockets.py).

urllib3 makes them with PySocks (``urllib3.contrib.socks``), whose ``create_connection`` opens the
socket, connects to the proxy and talks SOCKS before handing it back: each wait bounded by the
socket's timeout, none by the call's deadline, so a proxy that trickled its reply, or relayed a
server that trickled its answer, held a call past its deadline (a known gap until 2026-12-07).
Here the socket is registered with the attempt before it connects, as for a plain connection: the
deadline's timer shuts it down, which ends a connect, the proxy's handshake or a read of the answer
at once; and the names looked up (the proxy's, and the target's where the client resolves it) are
looked up within the deadline (bounded_resolver.py). Imported only when a SOCKS proxy is used
(PySocks is optional, ``requests[socks]``).
"""

import socket
from typing import Any, cast

import socks  # type: ignore[import-untyped]
from urllib3.connection import HTTPConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.contrib.socks import SOCKSConnection, SOCKSHTTPSConnection
from urllib3.exceptions import ConnectTimeoutError
from urllib3.util.connection import allowed_gai_family

from django_aio_request.transport.attempt_sockets import (
    AttemptSockets,
    GuardedConnectionMixin,
    GuardedPoolBase,
    GuardedResponse,
    connect_failure,
    current_attempt,
    is_name,
)
from django_aio_request.transport.bounded_resolver import ResolutionUnfinished, resolver

__all__ = ["SOCKS_POOL_CLASSES"]


class _GuardedSOCKSMixin(GuardedConnectionMixin):
    socket_options: Any
    source_address: Any

    def _new_conn(self) -> socket.socket:
        guard = current_attempt()
        if guard is None:
            plain: socket.socket = SOCKSConnection._new_conn(self)  # type: ignore[arg-type]
            return plain
        conn = cast(HTTPConnection, self)
        try:
            return self._through_proxy(guard)
        except ResolutionUnfinished as error:
            raise ConnectTimeoutError(
                self, "resolving the SOCKS proxy's or the target's name did not finish before the deadline"
            ) from error
        except socks.ProxyError as error:  # as urllib3's SOCKSConnection says it: by the socket's error under it
            under = (
                error.socket_err if isinstance(error.socket_err, OSError) else OSError(str(error.socket_err or error))
            )
            raise connect_failure(conn, under) from error
        except OSError as error:
            raise connect_failure(conn, error) from error

    def _through_proxy(self, guard: AttemptSockets) -> socket.socket:
        """PySocks' ``create_connection``, each socket registered with the attempt before it connects
        (to the proxy, then the SOCKS handshake): the deadline's shutdown ends whichever is under way."""
        options: dict[str, Any] = self._socks_options  # type: ignore[attr-defined]  # SOCKSConnection's
        target = _target(self.host.strip("[]"), options, guard)
        proxy_host = str(options["proxy_host"]).strip("[]")
        error: Exception = OSError("getaddrinfo returns an empty list")
        for family, kind, proto, _, address in _proxy_addresses(proxy_host, int(options["proxy_port"]), guard):
            sock = socks.socksocket(family, kind, proto)
            try:
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                if isinstance(self.timeout, int | float):
                    sock.settimeout(self.timeout)
                sock.set_proxy(
                    options["socks_version"],
                    address[0],
                    int(options["proxy_port"]),
                    options["rdns"],
                    options["username"],
                    options["password"],
                )
                if self.source_address:
                    sock.bind(self.source_address)
                guard.attach(self, sock.dup(), owned=True)
                if guard.reason is None:
                    sock.connect((target, self.port))
                if guard.reason is not None:  # aborted before connect() began, which then missed the shutdown
                    raise ConnectionAbortedError("the attempt was aborted while connecting through its SOCKS proxy")
            except (OSError, socks.ProxyError) as failed:
                sock.close()
                guard.detach(self)
                error = failed
                continue
            return cast(socket.socket, sock)
        raise error


def _proxy_addresses(host: str, port: int, guard: AttemptSockets) -> list[tuple[Any, ...]]:
    """The proxy's addresses as ``getaddrinfo`` gives them: a name looked up within the deadline
    (bounded_resolver.py), as a plain connection's host is."""
    names = resolver.resolve(host, allowed_gai_family(), guard) if is_name(host) else [host]
    return [
        found
        for name in names
        for found in socket.getaddrinfo(name, port, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    ]


def _target(host: str, options: dict[str, Any], guard: AttemptSockets) -> str:
    """What the proxy is asked to connect to: ``host`` as it is where the proxy resolves names
    (``socks5h://``, ``socks4a://``), else its address, looked up here within the deadline. Given a
    name, PySocks looked it up itself, in the middle of the handshake, where nothing bounded it: a
    lookup taking 3 s held a call given 0.3 s for 3 s (a review). The first address, as PySocks takes
    it; an IPv4 one for SOCKS4, which carries no other."""
    if options["rdns"] or not is_name(host):
        return host
    family = socket.AF_INET if options["socks_version"] == socks.PROXY_TYPE_SOCKS4 else allowed_gai_family()
    addresses = resolver.resolve(host, family, guard)
    if not addresses:
        raise socket.gaierror(socket.EAI_NONAME, f"no address for {host}")
    return addresses[0]


class GuardedSOCKSConnection(_GuardedSOCKSMixin, SOCKSConnection):
    response_class = GuardedResponse


class GuardedSOCKSHTTPSConnection(_GuardedSOCKSMixin, SOCKSHTTPSConnection):
    response_class = GuardedResponse


class GuardedSOCKSHTTPConnectionPool(GuardedPoolBase, HTTPConnectionPool):
    ConnectionCls = GuardedSOCKSConnection


class GuardedSOCKSHTTPSConnectionPool(GuardedPoolBase, HTTPSConnectionPool):
    ConnectionCls = GuardedSOCKSHTTPSConnection


SOCKS_POOL_CLASSES = {"http": GuardedSOCKSHTTPConnectionPool, "https": GuardedSOCKSHTTPSConnectionPool}
