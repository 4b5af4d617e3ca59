"""``python -c SCRIPT`` in a child process from the checkout's root: for what must run in a process
of its own (monkey-patched by gevent or eventlet, say), its result read from what it prints."""

import subprocess
import sys

from tests.support.manage import ROOT


def run_script(script: str, *arguments: str, timeout: float = 120) -> "subprocess.CompletedProcess[str]":
    """Run ``script`` with ``arguments`` (its ``sys.argv[1:]``) under this Python; never raises for
    the exit code: the caller checks ``returncode``, ``stdout`` and ``stderr``."""
    return subprocess.run(
        [sys.executable, "-c", script, *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
