"""The real servers the shedding tests and benchmarks start (benchmarks/_shedding_load.py) are theirs:
a port another process took between finding it free and the server's bind is not taken for the server."""

import http.client
import socket
import subprocess
import sys

import pytest

import benchmarks._shedding_load as shedding_load
from benchmarks._shedding_load import owns_listener, server


def test_a_listener_is_told_by_the_process_that_holds_it_or_one_it_started() -> None:
    script = (
        "import socket,sys,time\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen()\n"
        "print(s.getsockname()[1],flush=True)\ntime.sleep(60)\n"
    )
    # the listener in a child of the process started: as a script that starts the server
    parent = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess,sys\nsubprocess.run([sys.executable,'-c',{script!r}])"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        port = int(parent.stdout.readline())
        assert owns_listener(parent.pid, port)
        assert not owns_listener(parent.pid, port + 1 if port < 65535 else port - 1)
        with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as other:
            assert not owns_listener(other.pid, port)
            other.kill()
    finally:
        parent.kill()
        parent.wait()


def test_a_server_whose_port_another_process_took_is_started_on_another(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first port handed out is held by a listener of this process: the server is started again on
    the next, and the URL yielded is the one it answers on (a test read the other listener's 404 in CI)."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = iter([taken.getsockname()[1], shedding_load.free_port()])
    monkeypatch.setattr(shedding_load, "free_port", lambda: next(ports))
    try:
        with server("uvicorn", 1, {"shedding": {"MAX_CONCURRENCY": 4}}) as url:
            host, port = url.removeprefix("http://").rsplit(":", 1)
            assert int(port) != taken.getsockname()[1]
            connection = http.client.HTTPConnection(host, int(port), timeout=10)
            try:
                connection.request("GET", "/sleep?ms=1")
                assert connection.getresponse().status == 200
            finally:
                connection.close()
    finally:
        taken.close()
