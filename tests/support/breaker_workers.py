"""A server's worker processes, each with the client of tests/support/urls_breaker_workers.py, in
prometheus-client's multiprocess mode (tests of the breaker state gauge across processes)."""

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.support.loopback import free_port, stop_server, wait_until_listening

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def breaker_workers(
    tmp_path: Path, name: str, app: str, command: Callable[[int], list[str]], env: dict[str, str] | None = None
) -> Iterator[tuple[str, str]]:
    """Run ``command(port)`` (a server of module ``{name}_app``, whose text is ``app``) in ``tmp_path``
    with an empty PROMETHEUS_MULTIPROC_DIR; yields its URL and the endpoint its workers' client calls,
    where nothing listens."""
    (tmp_path / f"{name}_settings.py").write_text(
        "from tests.support.settings_metrics import *  # noqa: F403\n"
        "ROOT_URLCONF = 'tests.support.urls_breaker_workers'\n"
    )
    (tmp_path / f"{name}_app.py").write_text(app)
    directory = tempfile.mkdtemp(prefix=f"aio-request-{name}-")  # empty, as multiprocess mode needs
    port, dead_port = free_port(), free_port()
    environment = {
        **os.environ,
        **(env or {}),
        "PROMETHEUS_MULTIPROC_DIR": directory,
        "DJANGO_SETTINGS_MODULE": f"{name}_settings",
        "TEST_DEAD_PORT": str(dead_port),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    log = tmp_path / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command(port), cwd=tmp_path, env=environment, stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            wait_until_listening(process, port, name)
        except RuntimeError as error:
            raise RuntimeError(f"{error}:\n{log.read_text()}") from None
        yield f"http://127.0.0.1:{port}/", f"http://127.0.0.1:{dead_port}/"
    finally:
        stop_server(process)
        shutil.rmtree(directory, ignore_errors=True)
