"""``make demo`` (``python -m testproject.demo``) given ports it cannot use: a message saying which
variable or port, an exit code, and no traceback, before anything is started or migrated."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.loopback import free_port

ROOT = Path(__file__).resolve().parents[2]


def _demo(tmp_path: Path, **ports: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **ports, "DEMO_DATABASE": str(tmp_path / "demo.sqlite3")}
    env.pop("DJANGO_SETTINGS_MODULE", None)  # the demo chooses its own, as under `make demo`
    return subprocess.run(
        [sys.executable, "-m", "testproject.demo"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("ports", "said"),
    [
        ({"DEMO_PORT": "abc"}, "DEMO_PORT must be a TCP port number from 1 to 65535, not 'abc'"),
        ({"DEMO_PORT": "0"}, "DEMO_PORT must be a TCP port number from 1 to 65535, not '0'"),
        ({"DEMO_PORT": "70000"}, "DEMO_PORT must be a TCP port number from 1 to 65535, not '70000'"),
        ({"DEMO_BILLING_PORT": "-1"}, "DEMO_BILLING_PORT must be a TCP port number from 1 to 65535, not '-1'"),
        ({"DEMO_PORT": "65535"}, "DEMO_ORDERS_PORT is DEMO_PORT + 1 by default, 65536: no TCP port"),
    ],
    ids=["not a number", "zero", "too large", "negative", "no room for the next two"],
)
def test_a_demo_port_that_is_no_port_is_named_without_a_traceback(
    tmp_path: Path, ports: dict[str, str], said: str
) -> None:
    """``DEMO_PORT=abc`` was a ValueError traceback, ``0`` waited 60 s for a service to answer on a
    port the system picked, and ``65535`` listed Django's check errors and asked whether another
    demo was still running."""
    run = _demo(tmp_path, **ports)
    assert run.returncode == 2, run.stdout + run.stderr
    assert said in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "demo.sqlite3").exists()  # nothing migrated


def test_a_port_in_use_is_named_before_anything_starts(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as holder:
        taken = holder.getsockname()[1]
        others = {"DEMO_ORDERS_PORT": str(free_port()), "DEMO_BILLING_PORT": str(free_port())}
        run = _demo(tmp_path, DEMO_PORT=str(taken), **others)
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"frontend's port {taken} already in use (another demo still running?)" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "demo.sqlite3").exists()
