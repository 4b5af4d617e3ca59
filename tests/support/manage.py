"""``python manage.py ...`` in a subprocess, as a user runs it: for tests of what commands print."""

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def manage(
    *arguments: str,
    settings: str,
    path: Path | None = None,
    timeout: float = 60,
    env: Mapping[str, str] | None = None,
) -> "subprocess.CompletedProcess[str]":
    """The repository's ``manage.py <arguments>`` with ``DJANGO_SETTINGS_MODULE=settings``; ``path``
    (a folder holding the settings module, say) goes first on ``PYTHONPATH``; ``env``: the environment
    (this process's by default). Never raises for the exit code: the caller checks ``returncode``,
    ``stdout`` and ``stderr``."""
    python_path = str(ROOT) if path is None else f"{path}{os.pathsep}{ROOT}"
    env = {**(os.environ if env is None else env), "DJANGO_SETTINGS_MODULE": settings, "PYTHONPATH": python_path}
    return subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
