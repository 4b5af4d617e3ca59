"""Name resolution is bounded by the deadline, against a real DNS server and the C library's resolver.

``getaddrinfo()`` reads the name server from /etc/resolv.conf, so each scenario runs in a child
process in its own mount namespace (``unshare -m``, root only), where a bind mount makes that file
name a DnsServer on 127.0.0.1:53 (tests/dns_server.py), with one try of 30 s: a lookup it never
answers blocks ``getaddrinfo()`` for 30 s. The machine's own /etc/resolv.conf is not touched.
"""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from django_aio_request.core import status
from django_aio_request.transport import bounded_resolver
from django_aio_request.transport.attempt_sockets import AttemptSockets
from django_aio_request.transport.bounded_resolver import ResolutionUnfinished, Resolver
from tests.support.loopback import LoopbackServer
from tests.support.thread_limits import first_start_fails

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 0.5
SLACK = 0.25  # how far past its deadline a call may end on a busy two-core machine


def _namespace_problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root: a mount namespace and port 53"
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "needs unshare and mount (util-linux)"
    return None


def run(scenario: str) -> dict[str, Any]:
    problem = _namespace_problem()
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and the DNS tests cannot run: {problem}")
        pytest.skip(f"DNS deadline tests skipped: {problem}")
    with tempfile.NamedTemporaryFile("w", suffix=".resolv.conf") as conf:
        conf.write("nameserver 127.0.0.1\noptions timeout:30 attempts:1\n")
        conf.flush()
        child = f'"{sys.executable}" -m tests.support.resolver_child {scenario}'
        command = f'mount --bind "{conf.name}" /etc/resolv.conf && exec {child}'
        done = subprocess.run(
            ["unshare", "--mount", "sh", "-c", command],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_a_name_server_that_never_answers_ends_the_call_at_its_deadline() -> None:
    got = run("hanging")
    assert got["status"] == status.TIMEOUT
    assert DEADLINE <= got["elapsed"] + 0.01 < DEADLINE + SLACK
    assert got["queries"] == 1  # the lookup really went to the name server


def test_a_slow_answer_within_the_deadline_is_used() -> None:
    got = run("slow")
    assert got["status"] == 200
    assert got["elapsed"] >= 0.2  # the name server's delay
    assert got["queries"] == 1
    assert got["body"].startswith("slow.example.test:")  # connected to its address, named by its name


def test_a_name_that_does_not_exist_is_a_network_error_at_once() -> None:
    got = run("missing")
    assert got["status"] == status.NETWORK_ERROR
    assert got["elapsed"] < 1.0


def test_a_cancelled_attempt_stops_waiting_for_its_lookup() -> None:
    got = run("cancelled")
    assert got["status"] == status.CANCELLED
    # The cancelling timer starts just before the call's clock does (CI on 2026-12-01 saw 0.0984 s),
    # hence the 10 ms, as in the deadline tests above.
    assert 0.1 <= got["elapsed"] + 0.01 < 0.1 + SLACK


def test_many_calls_to_hanging_names_share_lookups_and_a_bounded_number_of_threads() -> None:
    got = run("crowd")
    for call in got["same"] + got["distinct"]:
        assert call["status"] == status.TIMEOUT
        assert call["elapsed"] < DEADLINE + SLACK
    assert got["queries"] == 1  # 20 calls for one name: one lookup
    assert got["threads_for_one_name"] == 1
    # 12 more names: the bound's threads, and one more at most for each lookup stuck past STUCK_AFTER
    # by then (the first name's, 0.5 s old when they came, 1 s old before they gave up)
    assert got["max_threads"] <= got["threads"] <= got["max_threads"] + 1 <= got["most_threads"]


# The Resolver on its own, with names the machine resolves from /etc/hosts.


def test_resolves_a_name_from_the_hosts_file() -> None:
    addresses = Resolver().resolve("localhost", socket.AF_INET, AttemptSockets(deadline_in(5)))
    assert "127.0.0.1" in addresses


def test_a_lookup_error_reaches_the_caller() -> None:
    with pytest.raises(socket.gaierror):
        Resolver().resolve("no-such-host.invalid", socket.AF_INET, AttemptSockets(deadline_in(5)))


def test_an_aborted_attempt_does_not_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    guard = AttemptSockets(deadline_in(5))
    guard.abort(status.CANCELLED)
    blocked = threading.Event()
    # The one stand-in here: a lookup that never returns, so only the abort can end the wait.
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args: blocked.wait())
    with pytest.raises(ResolutionUnfinished):
        Resolver().resolve("example.test", socket.AF_INET, guard)
    blocked.set()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_resolves_with_threads_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    real_getaddrinfo = socket.getaddrinfo
    release = threading.Event()

    def lookup(host: str, *args: Any) -> Any:
        if host.startswith("blocked"):  # stands in for a name server that does not answer
            release.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "no answer")
        return real_getaddrinfo(host, *args)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    resolver = Resolver(max_threads=2)
    for name in ("blocked-1", "blocked-2"):  # both threads busy, both names in flight
        with pytest.raises(ResolutionUnfinished):
            resolver.resolve(name, socket.AF_INET, AttemptSockets(deadline_in(0.05)))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it resolves, then leave without running the parent's cleanup
        try:
            found = resolver.resolve("localhost", socket.AF_INET, AttemptSockets(deadline_in(5)))
            os.write(write, json.dumps(found).encode())
        except BaseException as error:
            os.write(write, json.dumps(repr(error)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_found = json.loads(pipe.read())
    os.waitpid(pid, 0)
    release.set()
    # The parent's threads and lookups are not in the child: it starts a thread of its own.
    assert "127.0.0.1" in child_found


def test_a_lookup_stuck_past_the_sharing_window_is_not_joined_but_asked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    real_getaddrinfo = socket.getaddrinfo
    release = threading.Event()
    asked: list[str] = []

    def lookup(host: str, *args: Any) -> Any:
        asked.append(host)
        if len(asked) == 1:  # the first lookup is stuck, as one can be in the C library
            release.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "no answer")
        return real_getaddrinfo(host, *args)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    resolver = Resolver(share_for=1.0)
    with pytest.raises(ResolutionUnfinished):
        resolver.resolve("localhost", socket.AF_INET, AttemptSockets(deadline_in(0.05)))
    with pytest.raises(ResolutionUnfinished):  # within the window: joins the stuck lookup
        resolver.resolve("localhost", socket.AF_INET, AttemptSockets(deadline_in(0.05)))
    assert asked == ["localhost"]
    time.sleep(1.0)  # past the window now
    assert "127.0.0.1" in resolver.resolve("localhost", socket.AF_INET, AttemptSockets(deadline_in(5)))
    assert asked == ["localhost", "localhost"]
    release.set()


@pytest.fixture
def hanging_names(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Names ending in ``.hang`` stand for a name server that never answers them: their lookups hang
    until the test ends; every other name is looked up as ever."""
    real_getaddrinfo = socket.getaddrinfo
    release = threading.Event()

    def lookup(host: str, *args: Any) -> Any:
        if host.endswith(".hang"):
            release.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "no answer")
        return real_getaddrinfo(host, *args)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    yield
    release.set()


def test_names_whose_lookups_hang_do_not_hold_up_other_names(
    hanging_names: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every thread busy with a lookup that hangs: other names waited for them past their deadlines
    (localhost from /etc/hosts was a 408). Past STUCK_AFTER those lookups do not count, up to
    MOST_THREADS threads in all."""
    monkeypatch.setattr(bounded_resolver, "STUCK_AFTER", 0.2)
    monkeypatch.setattr(bounded_resolver, "MOST_THREADS", 4)
    resolver = Resolver(max_threads=2)
    for name in ("a.hang", "b.hang"):  # both threads stuck
        with pytest.raises(ResolutionUnfinished):
            resolver.resolve(name, socket.AF_INET, AttemptSockets(deadline_in(0.05)))
    started = time.monotonic()  # asked at once: answered when the two count as stuck
    assert "127.0.0.1" in resolver.resolve("localhost", socket.AF_INET, AttemptSockets(deadline_in(2)))
    assert time.monotonic() - started < 1.0
    for name in ("c.hang", "d.hang"):  # now four threads, all stuck: the most there may be
        with pytest.raises(ResolutionUnfinished):
            resolver.resolve(name, socket.AF_INET, AttemptSockets(deadline_in(0.3)))
    time.sleep(0.3)
    with pytest.raises(ResolutionUnfinished):  # no fifth thread
        resolver.resolve("localhost", socket.AF_INET, AttemptSockets(deadline_in(0.5)))
    assert sum(t.name == "django-aio-request-resolver" for t in threading.enumerate()) >= 4


def test_a_name_asked_again_after_its_first_asker_gave_up_in_the_queue_is_looked_up(
    hanging_names: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every thread held by a hanging name, a name's first asker gave up while its lookup waited in
    the queue; the look for stuck threads found nobody waiting then, and a later asker joined the
    queued lookup without asking for a thread: that name was a 408 at every call until SHARE_FOR
    ran out, 10 s (a review: 12 calls in a row, 0.8 s apart)."""
    monkeypatch.setattr(bounded_resolver, "STUCK_AFTER", 0.3)
    resolver = Resolver(max_threads=2)
    for name in ("a.hang", "b.hang"):  # both threads stuck
        with pytest.raises(ResolutionUnfinished):
            resolver.resolve(name, socket.AF_INET, AttemptSockets(deadline_in(0.1)))
    assert resolver._threads == 2
    with pytest.raises(ResolutionUnfinished):  # queued behind them, given up on before they count as stuck
        resolver.resolve("localhost", socket.AF_INET, AttemptSockets(deadline_in(0.05)))
    time.sleep(0.5)  # the look for stuck threads has come and gone: nobody waited for localhost then
    started = time.monotonic()
    assert "127.0.0.1" in resolver.resolve("localhost", socket.AF_INET, AttemptSockets(deadline_in(2)))
    assert time.monotonic() - started < 0.5


def test_a_thread_that_could_not_be_started_is_not_waited_for(
    hanging_names: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread that failed to start (a pids limit: RuntimeError) stayed counted as one to come, and
    a name queued behind a hanging one was never looked up again (a review: a 408 at every call)."""
    first_start_fails(monkeypatch, "django-aio-request-resolver")
    resolver = Resolver(max_threads=2)
    with pytest.raises(RuntimeError):
        resolver.resolve("a.hang", socket.AF_INET, AttemptSockets(deadline_in(0.1)))
    with pytest.raises(ResolutionUnfinished):  # a thread now, which hangs on it
        resolver.resolve("a.hang", socket.AF_INET, AttemptSockets(deadline_in(0.1)))
    for _ in range(3):
        assert "127.0.0.1" in resolver.resolve("localhost", socket.AF_INET, AttemptSockets(deadline_in(1)))


def test_a_crowd_asking_for_one_hanging_name_takes_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each asker joining a queued lookup asks for a thread if there is room: one just started, not
    idle yet, counts as the one to take it, or 50 askers at once started up to MAX_THREADS."""
    release = threading.Event()

    def lookup(host: str, *args: Any) -> Any:
        release.wait(30)
        raise socket.gaierror(socket.EAI_AGAIN, "no answer")

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    try:
        for round_number in range(20):
            resolver = Resolver(max_threads=8)
            start = threading.Barrier(50)

            def ask(
                name: str = f"{round_number}.hang", resolver: Resolver = resolver, start: threading.Barrier = start
            ) -> None:
                start.wait()
                with contextlib.suppress(ResolutionUnfinished):
                    resolver.resolve(name, socket.AF_INET, AttemptSockets(deadline_in(0.05)))

            askers = [threading.Thread(target=ask) for _ in range(50)]
            for asker in askers:
                asker.start()
            for asker in askers:
                asker.join()
            assert resolver._threads == 1, round_number
    finally:
        release.set()


def test_lookups_every_asker_gave_up_on_take_no_thread(hanging_names: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """More hanging names than threads: the queued ones whose callers gave up were taken first by
    each new thread, and hung it, while a name someone waited for stayed behind them (a 408)."""
    monkeypatch.setattr(bounded_resolver, "STUCK_AFTER", 0.5)
    resolver = Resolver(max_threads=2)
    for n in range(6):  # two hang on threads, four wait in the queue, all given up on
        with pytest.raises(ResolutionUnfinished):
            resolver.resolve(f"{n}.hang", socket.AF_INET, AttemptSockets(deadline_in(0.01)))
    time.sleep(0.6)  # the two running count as stuck now
    started = time.monotonic()
    assert "127.0.0.1" in resolver.resolve("localhost", socket.AF_INET, AttemptSockets(deadline_in(2)))
    assert time.monotonic() - started < 0.5
    assert resolver._threads == 3  # the two stuck, and one for localhost: none for the four given up


def test_addresses_are_connected_to_without_a_lookup() -> None:
    """An IP address in the URL goes straight to connect(): no resolver thread is started for it."""
    from django_aio_request import get
    from django_aio_request.transport.requests_transport import RequestsTransport

    before = {t for t in threading.enumerate() if t.name == "django-aio-request-resolver"}
    server = LoopbackServer()
    server.route("/x", lambda handler: handler.reply(200, b"ok"))
    response = RequestsTransport().send(server.url, get("x"), 5.0)
    assert response.status == 200
    assert {t for t in threading.enumerate() if t.name == "django-aio-request-resolver"} == before


def test_tls_to_a_host_name_is_verified_against_that_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection goes to the address the resolver found, but TLS still checks the certificate
    against the name in the URL (and sends it as SNI and in Host)."""
    import ssl
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import requests
    import trustme

    from django_aio_request import get
    from django_aio_request.transport.requests_transport import RequestsTransport

    class Echo(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = (self.headers["Host"] or "").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    authority = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert("localhost").configure_cert(context)  # for the name only, not for 127.0.0.1
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    # requests lets these variables override a session's own CA bundle.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    try:
        with authority.cert_pem.tempfile() as ca_file:
            session = requests.Session()
            session.verify = ca_file
            transport = RequestsTransport(session)
            by_name = transport.send(f"https://localhost:{port}/", get("x"), 5.0)
            by_address = transport.send(f"https://127.0.0.1:{port}/", get("x"), 5.0)
            transport.close()
    finally:
        server.shutdown()
        server.server_close()
    assert (by_name.status, by_name.text()) == (200, f"localhost:{port}")
    assert by_address.status == status.NETWORK_ERROR  # the certificate does not name the address


def deadline_in(seconds: float) -> float:
    return time.monotonic() + seconds


def test_redirects_to_one_hanging_name_on_new_ports_share_one_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """faults.md: one lookup per name, whatever port a call connects to. Keyed by the port too, a
    downstream redirecting to one name whose name server hangs, a new port each time, took a
    resolver thread per port: all 32 after about 40 calls, and then every name was a 408 (a review)."""
    import itertools

    from django_aio_request import get
    from django_aio_request.transport.requests_transport import RequestsTransport

    real_getaddrinfo = socket.getaddrinfo
    release = threading.Event()
    asked: list[str] = []

    def lookup(host: str, *args: Any) -> Any:
        if host.endswith(".hang"):
            asked.append(host)
            release.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "no answer")
        return real_getaddrinfo(host, *args)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    ports = itertools.count(1000)
    server = LoopbackServer()
    server.route("/go", lambda handler: handler.reply(302, b"", {"Location": f"http://x.hang:{next(ports)}/"}))
    transport = RequestsTransport()
    try:
        for _ in range(12):
            started = time.monotonic()
            response = transport.send(server.url, get("go"), 0.2)
            assert response.status == status.TIMEOUT
            assert time.monotonic() - started < 0.2 + SLACK
        assert asked == ["x.hang"]  # one lookup for the twelve ports, still in flight
    finally:
        release.set()
        transport.close()
