"""The demo's chain frontend -> orders -> billing as real processes on free loopback ports.

    with running_chain(tmp_path) as chain:
        chain.urls["frontend"]                 # "http://127.0.0.1:PORT/"
        chain.arrivals("billing", run="tag")   # what billing received for requests tagged run=tag

Each service is ``python -m testproject.serve`` with its demo settings module (``settings.demo_*``),
started by the demo's own launcher, with an in-memory database; their output goes to
``<name>.log`` in the given directory (``chain.logs()`` reads it back for assertion messages).
Leaving the block stops them all; they also stop by themselves if the test process dies.
"""

import contextlib
import dataclasses
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from testproject import launcher
from tests.support.loopback import free_port

READY_TIMEOUT = 25.0  # three Django processes starting at once on a busy 2-core machine
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclasses.dataclass(frozen=True)
class Chain:
    urls: dict[str, str]  # service name -> base URL
    log_dir: Path

    def get(self, service: str, path: str, headers: dict[str, str] | None = None, timeout: float = 10.0) -> Any:
        """GET a JSON endpoint of a service directly (no client, no propagation headers)."""
        request = urllib.request.Request(self.urls[service] + path, headers=headers or {})
        with _NO_PROXY.open(request, timeout=timeout) as response:
            return json.load(response)

    def arrivals(self, service: str, run: str) -> list[dict[str, Any]]:
        """The requests ``service`` received that were tagged ``run=<run>``, in order of arrival."""
        found: list[dict[str, Any]] = self.get(service, f"demo/stats?run={run}")["arrivals"]
        return found

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')}" for path in sorted(self.log_dir.glob("*.log"))
        )


def _free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


@contextlib.contextmanager
def running_chain(log_dir: Path, attempts: int = 2) -> Iterator[Chain]:
    """Start the chain on free ports (again on other ports if a service could not start: a port
    found free may be taken before the service binds it) and stop it when the block ends."""
    with contextlib.ExitStack() as stack:
        for attempt in range(1, attempts + 1):
            ports = dict(zip((name for name, _ in launcher.SERVICES), _free_ports(len(launcher.SERVICES)), strict=True))
            try:
                stack.enter_context(
                    launcher.running(
                        ports,
                        environment={"DEMO_DATABASE": ":memory:", "DEMO_VERBOSE": "0"},
                        log_dir=log_dir,
                        ready_timeout=READY_TIMEOUT,
                    )
                )
            except launcher.ServiceFailed:
                if attempt == attempts:
                    raise
                continue
            break
        yield Chain({name: f"http://127.0.0.1:{port}/" for name, port in ports.items()}, log_dir)
