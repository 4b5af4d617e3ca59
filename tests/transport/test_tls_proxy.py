"""Calls through an ``https://`` proxy: TLS to the proxy, and the request's own TLS inside its CONNECT
tunnel (urllib3's TLS-in-TLS ``SSLTransport``, which is no socket and has no ``shutdown()``). The
deadline, a winning hedge and an async cancellation must end such an attempt as they end any other."""

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import pytest
import requests
import trustme

import django_aio_request as dar
from tests.support.raw_server import request_heads

T = TypeVar("T")
TRICKLED = 100  # bytes of body, one every 0.1 s: 10 s unless the attempt is aborted


class TlsProxy:
    """An https:// proxy whose CONNECT tunnel leads to a server inside it, answering over TLS with the
    same certificate: a body trickled byte by byte, or (``fast_after_first``) a quick answer to every
    tunnel but the first."""

    def __init__(self, context: ssl.SSLContext, *, fast_after_first: bool = False) -> None:
        self._context = context
        self._fast_after_first = fast_after_first
        self._tunnels = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._open: list[socket.socket] = []
        self.url = f"https://localhost:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            self._open.append(raw)
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            outer = self._context.wrap_socket(raw, server_side=True)
            if next(request_heads(outer, 20), None) is None:  # the CONNECT request's head
                return
            outer.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            with self._lock:
                self._tunnels += 1
                fast = self._fast_after_first and self._tunnels > 1
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            inner = self._context.wrap_bio(incoming, outgoing, server_side=True)

            def flush() -> None:
                data = outgoing.read()
                if data:
                    outer.sendall(data)

            def step(operation: Callable[[], T]) -> T:
                while True:
                    try:
                        result = operation()
                        flush()
                        return result
                    except ssl.SSLWantReadError:
                        flush()
                        data = outer.recv(65536)
                        if not data:
                            raise OSError("the tunnel was closed") from None
                        incoming.write(data)

            step(inner.do_handshake)
            request = b""
            while b"\r\n\r\n" not in request:
                request += step(lambda: inner.read(65536))
            if fast:
                inner.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfast")
                flush()
                time.sleep(1)
                return
            inner.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % TRICKLED)
            flush()
            for _ in range(TRICKLED):
                inner.write(b"x")
                flush()
                time.sleep(0.1)
        except OSError:
            pass
        finally:
            raw.close()

    def close(self) -> None:
        self._listener.close()
        for raw in self._open:
            raw.close()


@pytest.fixture
def tls(tmp_path: "pytest.TempPathFactory") -> tuple[ssl.SSLContext, str]:
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    bundle = tmp_path / "ca.pem"  # type: ignore[operator]
    ca.cert_pem.write_to_path(str(bundle))
    return context, str(bundle)


def _client(proxy: TlsProxy, bundle: str, strategy: dar.RequestStrategy) -> dar.Client:
    session = requests.Session()
    session.proxies = {"https": proxy.url}
    session.verify = bundle
    return dar.setup(
        endpoint="https://localhost:9/", safe_method_strategy=strategy, transport=dar.RequestsTransport(session=session)
    )


def test_a_call_through_an_https_proxy_ends_at_its_deadline(tls: tuple[ssl.SSLContext, str]) -> None:
    context, bundle = tls
    proxy = TlsProxy(context)
    client = _client(proxy, bundle, dar.single_attempt_strategy())
    try:
        started = time.monotonic()
        with client.request(dar.get("x"), deadline=dar.Deadline.from_timeout(0.5)) as response:
            took = time.monotonic() - started
        assert response.status == 408
        assert took < 0.8  # before the fix: 10 s, the whole trickle
    finally:
        client.close()
        proxy.close()


def test_a_hedge_that_wins_through_an_https_proxy_ends_the_call(tls: tuple[ssl.SSLContext, str]) -> None:
    context, bundle = tls
    proxy = TlsProxy(context, fast_after_first=True)
    strategy = dar.parallel_strategy(
        attempts_count=2, delays_provider=dar.constant_delays(delay=0.2), stragglers_only=False
    )
    client = _client(proxy, bundle, strategy)
    try:
        started = time.monotonic()
        with client.request(dar.get("x"), deadline=dar.Deadline.from_timeout(20)) as response:
            body = response.read()
        took = time.monotonic() - started
        assert (response.status, body) == (200, b"fast")
        assert took < 1.0  # before the fix: 10 s, attempt 0 never aborted
    finally:
        client.close()
        proxy.close()


def test_an_async_call_through_an_https_proxy_is_cancelled_at_once(tls: tuple[ssl.SSLContext, str]) -> None:
    context, bundle = tls
    proxy = TlsProxy(context)
    client = _client(proxy, bundle, dar.single_attempt_strategy())

    async def call() -> None:
        async with asyncio.timeout(0.5), client.arequest(dar.get("x"), deadline=dar.Deadline.from_timeout(20)):
            pass

    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):  # before the fix: AttributeError ('SSLTransport' ... 'shutdown')
            asyncio.run(call())
        assert time.monotonic() - started < 1.0
    finally:
        client.close()
        proxy.close()
