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


_MESSAGE = "must be a TCP port number from 1 to 65535, not"
BAD_PORTS = {
    "not a number": ({"DEMO_PORT": "abc"}, f"DEMO_PORT {_MESSAGE} 'abc'"),
    "zero": ({"DEMO_PORT": "0"}, f"DEMO_PORT {_MESSAGE} '0'"),
    "too large": ({"DEMO_PORT": "70000"}, f"DEMO_PORT {_MESSAGE} '70000'"),
    "negative": ({"DEMO_BILLING_PORT": "-1"}, f"DEMO_BILLING_PORT {_MESSAGE} '-1'"),
    "a superscript two": ({"DEMO_PORT": "\u00b2"}, f"DEMO_PORT {_MESSAGE} '\u00b2'"),  # isdigit(), not int()
    "5,000 digits": ({"DEMO_ORDERS_PORT": "9" * 5000}, f"DEMO_ORDERS_PORT {_MESSAGE} '{'9' * 40}'..."),
    "no room for the next two": ({"DEMO_PORT": "65535"}, "DEMO_ORDERS_PORT is DEMO_PORT + 1 by default, 65536"),
    # Each free when checked, then the services raced for it and one, at random, was blamed for a taken port.
    "one port for two": (
        {"DEMO_PORT": "8400", "DEMO_ORDERS_PORT": "8400"},
        "DEMO_PORT and DEMO_ORDERS_PORT are both 8400: each demo service needs a port of its own.",
    ),
}


@pytest.mark.parametrize(("ports", "said"), list(BAD_PORTS.values()), ids=list(BAD_PORTS))
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
    assert f"port {taken} (frontend) already in use (another demo still running?)" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "demo.sqlite3").exists()
