"""Run the demo's services (``python -m testproject.serve``) as child processes, for ``make demo``
and the end-to-end tests.

    with running({"frontend": 8000, "orders": 8001, "billing": 8002}) as services:
        ...  # every service answers here

Each child gets every service's port in its environment, so each knows where the next hop is.
Leaving the block stops them all (SIGTERM, then SIGKILL after a few seconds). The children run in
their own session (a Ctrl-C in the terminal reaches only the launcher, which stops them in order)
and stop by themselves when the launcher dies: their standard input is a pipe from it.
"""

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Protocol

from settings.demo import PORT_VARIABLES

ROOT = Path(__file__).resolve().parent.parent
SERVICES = (
    ("frontend", "settings.demo_frontend"),
    ("orders", "settings.demo_orders"),
    ("billing", "settings.demo_billing"),
)
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class StopNote(Protocol):
    """What :func:`wait_for_exit` looks at to know that a stop was asked for (testproject/demo.py's)."""

    def is_set(self) -> bool: ...


class ServiceFailed(RuntimeError):
    """A service exited, or did not answer in time, while starting."""


class ServiceProcess:
    def __init__(self, name: str, settings_module: str, port: int, log: Path | None = None) -> None:
        self.name = name
        self.settings_module = settings_module
        self.port = port
        self.url = f"http://127.0.0.1:{port}/"
        self.log = log
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, environment: Mapping[str, str]) -> None:
        output: IO[bytes] | None = self.log.open("ab") if self.log else None
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "testproject.serve", "--exit-with-parent"],
                cwd=ROOT,
                env={**environment, "DJANGO_SETTINGS_MODULE": self.settings_module, "PYTHONUNBUFFERED": "1"},
                stdin=subprocess.PIPE,
                stdout=output,
                stderr=subprocess.STDOUT if output else None,
                start_new_session=True,
            )
        finally:
            if output:
                output.close()  # the child has its own copy

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def returncode(self) -> int | None:
        return self._process.poll() if self._process else None

    def answers(self) -> bool:
        """Whether this process (not another one left on the port) serves its stats endpoint."""
        try:
            with _NO_PROXY.open(self.url + "demo/stats", timeout=1.0) as response:
                return bool(json.load(response).get("pid") == self.pid)
        except (OSError, ValueError):
            return False

    def wait_ready(self, until: float) -> None:
        while not self.answers():
            if self.returncode is not None:
                raise ServiceFailed(f"{self.name} exited with code {self.returncode} while starting{self._log_hint()}")
            if time.monotonic() > until:
                raise ServiceFailed(f"{self.name} did not answer on {self.url} in time{self._log_hint()}")
            time.sleep(0.05)

    def terminate(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.terminate()

    def wait(self, until: float) -> None:
        """Wait for the process to end until ``until``, then kill it."""
        if self._process is None:
            return
        try:
            self._process.wait(max(0.0, until - time.monotonic()))
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdin:
            self._process.stdin.close()

    def _log_hint(self) -> str:
        return f" (see {self.log})" if self.log else ""


def port_environment(ports: Mapping[str, int]) -> dict[str, str]:
    return {PORT_VARIABLES[name]: str(port) for name, port in ports.items()}


def stop_all(services: Sequence[ServiceProcess], timeout: float = 5.0) -> None:
    for service in services:
        service.terminate()
    until = time.monotonic() + timeout
    for service in services:
        service.wait(until)


@contextlib.contextmanager
def running(
    ports: Mapping[str, int],
    *,
    environment: Mapping[str, str] | None = None,
    log_dir: Path | None = None,
    ready_timeout: float = 60.0,
) -> Iterator[list[ServiceProcess]]:
    """Start the three services on ``ports`` (service name -> port), wait until all answer, and stop
    them all when the block ends. ``environment`` is added to this process's for the children;
    with ``log_dir`` their output goes to ``<name>.log`` there, else to this process's."""
    child_environment = {**os.environ, **port_environment(ports), **(environment or {})}
    services = [
        ServiceProcess(name, module, ports[name], log_dir / f"{name}.log" if log_dir else None)
        for name, module in SERVICES
    ]
    try:
        for service in services:
            service.start(child_environment)
        until = time.monotonic() + ready_timeout
        for service in services:
            service.wait_ready(until)
        yield services
    finally:
        stop_all(services)


def wait_for_exit(
    services: Sequence[ServiceProcess], poll_seconds: float = 0.2, stop: StopNote | None = None
) -> ServiceProcess:
    """Block until one of the services exits, and return it; KeyboardInterrupt once ``stop`` is set
    (by a Ctrl-C whose own KeyboardInterrupt was lost: testproject/demo.py).

    It sleeps between its looks rather than wait on ``stop``: a signal handler that sets a
    ``threading.Event`` takes its lock, which the main thread holds for part of every ``wait()``,
    and a Ctrl-C arriving then hung the demo. The handler's KeyboardInterrupt ends the sleep."""
    while True:
        for service in services:
            if service.returncode is not None:
                return service
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt
        time.sleep(poll_seconds)
