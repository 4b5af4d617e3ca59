"""Real servers running ``benchmarks/_shedding_service.py`` and closed-loop callers, for load-shedding
tests and ``benchmarks/shedding.py``.

A closed-loop caller sends a request, waits for its answer, and sends the next; after a 503 it first
waits the ``Retry-After`` it was given, as a client honouring the refusal does. Each caller keeps
one connection open.
"""

import dataclasses
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PATTERN = ("high", "normal", "low", "normal", "low")  # 20% high, 40% normal, 40% low


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def owns_listener(pid: int, port: int) -> bool:
    """Whether process ``pid``, or one it started (a script's server), holds a socket listening on
    ``port`` (Linux: /proc). A port found free can be taken by another process before the server
    binds it: gunicorn then retries its bind for seconds while the other server answers on the port,
    and a test read that one's 404 (CI, 2026-12-07)."""
    inodes: set[str] = set()
    for process in _with_descendants(pid):
        try:
            links = [os.readlink(f"/proc/{process}/fd/{fd}") for fd in os.listdir(f"/proc/{process}/fd")]
        except OSError:  # the process is gone, or an fd closed while being read
            continue
        inodes.update(link[len("socket:[") : -1] for link in links if link.startswith("socket:["))
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as rows:
                next(rows)
                for row in rows:
                    fields = row.split()
                    # local address "0100007F:1F90", state 0A = LISTEN, inode the tenth field
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                        return True
        except OSError:
            continue
    return False


def _with_descendants(pid: int) -> list[int]:
    """``pid`` and the processes it started, and theirs (from each process's parent in /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        process = todo.pop()
        found.append(process)
        todo.extend(children.get(process, []))
    return found


#: gunicorn worker classes by ``server()`` kind
WORKERS = {
    "gunicorn": "gthread",
    "gunicorn-priority": "django_aio_request.server.priority_worker.PriorityThreadWorker",
    "gunicorn-gevent": "gevent",  # greenlets: ``threads`` is its worker connections
}


@contextmanager
def server(kind: str, threads: int, config: Mapping[str, object], *, first_on_path: str | None = None) -> Iterator[str]:
    """``kind`` "gunicorn" (one gthread worker with ``threads`` threads), "gunicorn-priority" (the same
    with this package's PriorityThreadWorker), "gunicorn-gevent" (one gevent worker, ``threads`` its
    worker connections) or "uvicorn"; yields its base URL. ``first_on_path``: a
    folder put before the environment's packages (another gunicorn release)."""
    for _ in range(3):  # a port another process took meanwhile: again on another
        with _server_on(free_port(), kind, threads, config, first_on_path) as url:
            if url is not None:
                yield url
                return
    raise RuntimeError(f"{kind} found no free port in 3 tries")


@contextmanager
def _server_on(
    port: int, kind: str, threads: int, config: Mapping[str, object], first_on_path: str | None
) -> Iterator[str | None]:
    """``server()`` on ``port``: its URL, or None when another process holds the port."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "benchmarks._shedding_service",
        "SHEDDING_SERVICE": json.dumps(config),
        "PYTHONPATH": str(ROOT) if first_on_path is None else os.pathsep.join([first_on_path, str(ROOT)]),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if kind in WORKERS:
        concurrency = ["--worker-connections" if kind == "gunicorn-gevent" else "--threads", str(threads)]
        command = [str(BIN / "gunicorn"), "-c", "benchmarks/_load_gunicorn.py", "-k", WORKERS[kind], "--workers", "1",
                   *concurrency, "--bind", f"127.0.0.1:{port}", "--backlog", "2048",
                   "--log-level", "warning", "benchmarks._shedding_service:wsgi()"]  # fmt: skip
    elif kind == "uvicorn":
        command = [str(BIN / "uvicorn"), "--factory", "benchmarks._shedding_service:asgi", "--host", "127.0.0.1",
                   "--port", str(port), "--log-level", "warning", "--no-access-log"]  # fmt: skip
    else:
        raise ValueError(kind)
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    assert process.stderr is not None
                    raise RuntimeError(f"{kind} did not start: {process.stderr.read().decode()}") from None
                time.sleep(0.05)
        yield url if owns_listener(process.pid, port) else None
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for stream in (process.stdin, process.stderr):
            if stream is not None:
                stream.close()


@dataclasses.dataclass(frozen=True)
class Outcome:
    caller: str  # "real" or "impostor"
    priority: str  # the priority claimed
    status: int  # 0: no answer
    elapsed: float
    ended: float  # time.monotonic() when answered
    do_not_retry: bool = False


@dataclasses.dataclass(frozen=True)
class Callers:
    """``count`` callers cycling through ``priorities``, each naming itself ``service`` (None: no header)."""

    count: int
    priorities: Sequence[str] = PATTERN
    service: str | None = "known"
    kind: str = "real"


def request(connection: http.client.HTTPConnection, path: str, headers: dict[str, str]) -> tuple[int, bool, float]:
    """Status, X-Do-Not-Retry, and Retry-After in seconds (0 without)."""
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    response.read()
    retry_after = response.getheader("Retry-After")
    wait = float(retry_after) if retry_after is not None and retry_after.isdecimal() else 0.0
    return response.status, response.getheader("X-Do-Not-Retry") is not None, wait


def closed_loop(
    url: str,
    groups: Sequence[Callers],
    *,
    path: str,
    seconds: float,
    deadline: float,
    backoff: float,
    honour_retry_after: bool = True,
    new_connections: bool = False,
) -> list[Outcome]:
    """Every caller of every group for ``seconds``; each request carries ``X-Request-Timeout: deadline``.

    After an answer other than 200 a caller waits ``Retry-After`` seconds when the answer has one (and
    ``honour_retry_after``), else ``backoff`` seconds. ``new_connections``: every request on a
    connection of its own (``Connection: close``), else one kept-alive connection per caller.
    """
    host, port = url.removeprefix("http://").split(":")
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    start = threading.Barrier(sum(g.count for g in groups) + 1)
    stop = [0.0]

    def caller(group: Callers, index: int) -> None:
        mine: list[Outcome] = []
        connection = http.client.HTTPConnection(host, int(port), timeout=deadline + 5)
        turn = index
        start.wait()
        while time.monotonic() < stop[0]:
            priority = group.priorities[turn % len(group.priorities)]
            turn += 1
            headers = {"X-Request-Timeout": str(deadline), "X-Request-Priority": priority}
            if group.service is not None:
                headers["X-Service-Name"] = group.service
            if new_connections:
                headers["Connection"] = "close"
            began = time.monotonic()
            try:
                status, do_not_retry, retry_after = request(connection, path, headers)
            except (OSError, http.client.HTTPException):
                status, do_not_retry, retry_after = 0, False, 0.0
            if new_connections or status == 0:
                connection.close()
                connection = http.client.HTTPConnection(host, int(port), timeout=deadline + 5)
            ended = time.monotonic()
            mine.append(Outcome(group.kind, priority, status, ended - began, ended, do_not_retry))
            if status != 200:
                time.sleep(retry_after if honour_retry_after and retry_after else backoff)
        connection.close()
        with lock:
            outcomes.extend(mine)

    threads = [
        threading.Thread(target=caller, args=(group, index), daemon=True)
        for group in groups
        for index in range(group.count)
    ]
    for thread in threads:
        thread.start()
    stop[0] = time.monotonic() + seconds
    start.wait()
    for thread in threads:
        thread.join(seconds + deadline + 30)
    return outcomes


def metric(url: str, name: str, labels: dict[str, str] | None = None) -> float:
    """A sample of the server's ``/metrics`` (0.0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and (labels is None or all(sample.labels.get(k) == v for k, v in labels.items())):
                return float(sample.value)
    return 0.0
