"""Live gauges of processes that died with nobody to mark them dead leave /metrics (metrics/dead_workers.py)."""

import json
import logging
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest

from django_aio_request.metrics import dead_workers
from tests.support.breaker_gauge import breaker_states, get, until_both_workers_served
from tests.support.breaker_workers import breaker_workers


def a_dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def touched(path: Path, seconds_ago: float, content: bytes = b"\x08\x00\x00\x00\x00\x00\x00\x00") -> Path:
    path.write_bytes(content)  # by default what prometheus_client writes first: 8 bytes used, no value
    when = time.time() - seconds_ago
    os.utime(path, (when, when))
    return path


def test_a_sweep_removes_only_dead_processes_live_gauges_untouched_for_a_while(tmp_path: Path) -> None:
    dead, alive, me = a_dead_pid(), os.getppid(), os.getpid()
    old = dead_workers.STALE_AFTER + 5
    files = {
        "dead, old": touched(tmp_path / f"gauge_livesum_{dead}.db", old),
        "dead, old, another live mode": touched(tmp_path / f"gauge_livemax_{dead}.db", old),
        "dead, touched lately (a process this one cannot see)": touched(tmp_path / f"gauge_liveall_{dead + 1}.db", 1),
        "alive, old": touched(tmp_path / f"gauge_livesum_{alive}.db", old),
        "this process, old": touched(tmp_path / f"gauge_livesum_{me}.db", old),
        "dead, a counter": touched(tmp_path / f"counter_{dead}.db", old),
        "dead, a gauge summed over all processes": touched(tmp_path / f"gauge_all_{dead}.db", old),
    }
    if dead_workers._alive(dead + 1):
        files.pop("dead, touched lately (a process this one cannot see)")

    removed = dead_workers.sweep(str(tmp_path))

    assert removed == [dead]
    left = {name for name, path in files.items() if path.exists()}
    assert left == set(files) - {"dead, old", "dead, old, another live mode"}
    assert time.time() - files["this process, old"].stat().st_mtime < 5  # touched: it says this process lives


def test_an_empty_metric_file_of_a_dead_process_is_swept_as_it_fails_every_scrape(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """prometheus_client creates a process's file before it sizes it: a process killed in between left
    it empty, and every scrape failed on it (struct.error: a 500 from /metrics) for good. The log
    names the file (a review: it said "removed the live gauges" of an empty histogram file)."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    dead, alive, me = a_dead_pid(), os.getppid(), os.getpid()
    old = dead_workers.STALE_AFTER + 5
    empty = touched(tmp_path / f"counter_{dead}.db", old, b"")
    with_totals = touched(tmp_path / f"histogram_{dead}.db", old)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
    with pytest.raises(struct.error):
        generate_latest(registry)  # prometheus_client's own failure
    kept = [
        with_totals,
        touched(tmp_path / f"gauge_all_{dead}.db", 1, b""),  # lately: a process this one cannot see
        touched(tmp_path / f"counter_{alive}.db", old, b""),  # its process may still size it
        touched(tmp_path / f"histogram_{me}.db", old, b""),
    ]

    caplog.set_level(logging.INFO, logger="django_aio_request.metrics.dead_workers")
    assert dead_workers.sweep(str(tmp_path)) == [dead]

    assert not empty.exists()
    assert all(path.exists() for path in kept)
    assert [record.getMessage() for record in caplog.records] == [
        f"removed the empty metric files of exited processes ['counter_{dead}.db'] from {tmp_path}"
    ]


def test_a_file_a_sweep_cannot_remove_is_said_once_and_the_others_are_swept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # In a sticky directory (mode 1777) a worker may not remove another user's file: that one error
    # ended the sweep, and the dead files listed after it stayed in the gauge for good.
    dead = a_dead_pid()
    old = dead_workers.STALE_AFTER + 5
    names = [f"gauge_{mode}_{dead}.db" for mode in ("livesum", "liveall", "livemax", "livemin", "livemostrecent")]
    files = [touched(tmp_path / name, old) for name in names]
    forbidden = sorted(os.listdir(tmp_path))[0]  # whichever scandir lists, one file of the five
    remove = os.remove

    def not_ours(path: str) -> None:
        if os.path.basename(path) == forbidden:
            raise PermissionError(1, "Operation not permitted", path)
        remove(path)

    monkeypatch.setattr(os, "remove", not_ours)

    assert dead_workers.sweep(str(tmp_path)) == [dead]
    dead_workers.sweep(str(tmp_path))

    assert [path.name for path in files if path.exists()] == [forbidden]
    said = [r.getMessage() for r in caplog.records if "could not sweep the live gauge file" in r.getMessage()]
    assert len(said) == 1, said
    assert forbidden in said[0]


def test_a_sweep_of_a_directory_gone_is_said_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "gone"
    os.environ["PROMETHEUS_MULTIPROC_DIR"], before = str(missing), os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    try:
        dead_workers._after_fork_in_child()  # as a new process: due at once
        dead_workers._sweep_now_and_then()
    finally:
        if before is None:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        else:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = before
    assert "could not sweep the live gauges of exited processes" in caplog.text


UVICORN_APP = """
from django.core.asgi import get_asgi_application

application = get_asgi_application()
"""


@pytest.fixture
def uvicorn_workers(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``uvicorn --workers 2`` in multiprocess mode (no hook marks a worker dead); its URL and the
    endpoint of each worker's client (tests/support/urls_breaker_workers.py)."""
    uvicorn = Path(sys.executable).parent / "uvicorn"
    if not uvicorn.exists():
        pytest.skip("uvicorn is not installed (pip install -e '.[test]')")

    def workers(port: int) -> list[str]:
        return [str(uvicorn), "--workers", "2", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                "workers_app:application"]  # fmt: skip

    with breaker_workers(tmp_path, "workers", UVICORN_APP, workers) as served:
        yield served


def scraped_states(url: str, endpoint: str) -> dict[str, float]:
    """:func:`breaker_states`; ``open`` -1 (scrape again) for the 500 of a scrape made while the worker
    that replaces the killed one makes its metric files: prometheus_client creates each before it
    sizes it, and a scrape that reads one then fails (prometheus/client_python#1199; docs/metrics.md).
    CI saw it once."""
    try:
        return breaker_states(url, endpoint)
    except urllib.error.HTTPError as error:
        if error.code != 500:
            raise
        return {"open": -1.0, "closed": 0.0, "half_open": 0.0}


@pytest.mark.timeout(120)
def test_a_sigkilled_uvicorn_worker_s_open_breaker_leaves_the_gauge(uvicorn_workers: tuple[str, str]) -> None:
    """uvicorn's supervisor replaces a killed worker but has no hook to mark it dead: its ``open``
    stayed in the gauge for good (1.0 at +3, +13 and +23 s), and AioRequestCircuitOpen fired with
    every live circuit closed."""
    url, endpoint = uvicorn_workers
    deadline = time.monotonic() + 60
    until_both_workers_served(url, deadline)
    opened = json.loads(get(url + "open"))
    assert opened["status"] == 502
    while breaker_states(url, endpoint)["open"] != 1:
        assert time.monotonic() < deadline, breaker_states(url, endpoint)
        time.sleep(0.05)

    os.kill(opened["pid"], signal.SIGKILL)

    # Within STALE_AFTER plus a sweep or two (the killed worker's file must be untouched that long).
    by = time.monotonic() + dead_workers.STALE_AFTER + 4 * dead_workers.SWEEP_INTERVAL + 5
    while (states := scraped_states(url, endpoint))["open"] != 0:  # each scrape is a request: workers record
        assert time.monotonic() < by, f"the killed worker's open circuit is still counted: {states}"
        time.sleep(0.2)
    assert states["half_open"] == 0


CHILDREN = """
import multiprocessing, os
import django_aio_request as dar
from django_aio_request import metrics as all_metrics

client = dar.setup(endpoint="http://127.0.0.1:9/", circuit_breaker=dar.DefaultCircuitBreaker(
    break_duration=60, sampling_duration=10, minimum_throughput=2, failure_threshold=0.5))


def work(_):
    all_metrics.flush()  # records: its copy of the breaker counts in a live gauge file of its own
    return os.getpid()


if __name__ == "__main__":
    fork = multiprocessing.get_context("fork")
    process = fork.Process(target=work, args=(None,))
    process.start()
    process.join()
    pool = fork.Pool(2)
    pids = set(pool.map(work, range(8)))
    pool.close()
    pool.join()
    print(os.getpid(), process.pid, *pids)
"""


def test_a_multiprocessing_child_s_live_gauges_go_when_it_ends(tmp_path: Path) -> None:
    """At once, not at the next sweep of a process that records (about 6 s): a pool worker's copy of
    the parent's breakers counted as a live one until then (a review: 14 where 2 workers had 2)."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", CHILDREN], cwd=root, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    parent, *children = done.stdout.split()
    assert len(children) >= 2  # the process and the pool's workers that took a task (one may take all 8)
    live = {path.name for path in tmp_path.glob("gauge_live*")}
    assert live == {f"gauge_livesum_{parent}.db"}  # the parent is no multiprocessing child: its own stays


PID_APP = """
import os


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]
"""


@pytest.mark.parametrize("variable", [None, "prometheus_multiproc_dir"])
def test_the_documented_child_exit_hook_keeps_the_master_up_without_the_directory(
    tmp_path: Path, variable: str | None
) -> None:
    """docs/metrics.md's hook, as written there, in a ``gunicorn.conf.py`` run where
    ``PROMETHEUS_MULTIPROC_DIR`` is not set: the first worker exit raised TypeError in the master,
    which died, and the service with it (a review). With the old lower-case variable, which the
    startup check accepts, the hook marks the worker dead too: it did nothing (a second review)."""
    import re
    import urllib.request

    from tests.support.loopback import free_port, wait_until_listening

    docs = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    [hook] = [block for block in re.findall(r"```python\n(.*?)```", docs, re.S) if "def child_exit" in block]
    (tmp_path / "gunicorn.conf.py").write_text(textwrap.dedent(hook))
    (tmp_path / "pid_app.py").write_text(PID_APP)
    env = {key: value for key, value in os.environ.items() if key.lower() != "prometheus_multiproc_dir"}
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    if variable is not None:
        env[variable] = str(metrics)
    port = free_port()
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    command = [gunicorn, "-w", "1", "-b", f"127.0.0.1:{port}", "pid_app:application"]  # ./gunicorn.conf.py, by default
    server = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until_listening(server, port, "gunicorn")

        def worker_pid() -> int:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
                return int(answer.read())

        first = worker_pid()
        live = metrics / f"gauge_livesum_{first}.db"  # what a worker recording metrics leaves
        live.write_bytes(b"")
        os.kill(first, signal.SIGKILL)  # a worker exit: child_exit runs in the master
        deadline = time.monotonic() + 20
        while True:
            assert server.poll() is None, "the master died"
            try:
                second = worker_pid()
                break
            except OSError:
                assert time.monotonic() < deadline, "no new worker"
                time.sleep(0.1)
        assert second != first
    finally:
        server.terminate()
        output = server.communicate(timeout=20)[0].decode()
    assert "TypeError" not in output, output
    assert live.exists() is (variable is None)  # marked dead where a directory is named
