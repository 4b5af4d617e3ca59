"""Other gunicorn releases beside the installed one, for ``tests/server/test_priority_worker_releases.py``.

``PriorityThreadWorker`` overrides parts of gunicorn's gthread worker, which changed between
releases. ``make test`` installs the releases below (gunicorn alone, pure Python) into
``<virtualenv>/gunicorn-releases/<version>`` (the virtualenv running this, ``.venv`` or the Makefile's
``VENV``); a server started with that folder first on ``PYTHONPATH`` runs that release. Run
``python -m tests.support.gunicorn_releases`` with that virtualenv's Python to install the missing ones.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

FOLDER = Path(sys.prefix) / "gunicorn-releases"  # as the Makefile's $(VENV)/gunicorn-releases

#: What each release does with a new connection: 23.0.0 waits on the poller for its first bytes;
#: 24.1.1 (as 24.0-25.1) queues it for a thread at once; 26.2.0 (as 25.2-27.0.0) keeps those that
#: wait for data in ``pending_conns`` but does not cap them on a stop (27.0.1, installed, does).
RELEASES = ("23.0.0", "24.1.1", "26.2.0")


def folder(version: str) -> Path:
    """The folder to put first on ``PYTHONPATH`` for ``version``; skips the test (with CI=true: fails) when missing."""
    path = FOLDER / version
    if not (path / "gunicorn" / "__init__.py").exists():
        reason = f"gunicorn {version} is not in {path} (make test, or python -m tests.support.gunicorn_releases)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI=true: these tests must run, not be skipped", pytrace=False)
        pytest.skip(reason)
    return path


def install() -> None:
    for version in RELEASES:
        path = FOLDER / version
        if not (path / "gunicorn" / "__init__.py").exists():
            command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(path),
                       f"gunicorn=={version}"]  # fmt: skip
            subprocess.run(command, check=True)


if __name__ == "__main__":
    install()
