"""A demo service tells how long its full garbage collections stopped it (testproject/gc_pauses.py),
and ``testproject.serve --freeze-gc`` freezes what the loaded application made; benchmarks/load.py
reads both from billing's ``/demo/stats``."""

import gc
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from testproject import gc_pauses
from tests.support.loopback import free_port, wait_until_listening

ROOT = Path(__file__).resolve().parents[2]
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def test_a_full_collection_is_recorded_with_when_it_started_and_how_long_it_took() -> None:
    gc_pauses.install()
    gc_pauses.install()  # a second handler loading the middleware: still one callback
    assert gc.callbacks.count(gc_pauses._callback) == 1
    gc.disable()  # no automatic collection in between: only the two below run
    try:
        known = gc_pauses.latest()
        before = time.time()
        gc.collect()  # a full collection: generation 2
        after = time.time()
        full = gc_pauses.latest()
        gc.collect(0)  # a young one: not a full collection, not recorded
        young = gc_pauses.latest()
    finally:
        gc.enable()

    assert full[:-1] == known[-(gc_pauses._KEPT - 1) :]  # one more, the oldest dropped once 1,000 are kept
    started, took = full[-1]
    assert before <= started <= after
    assert 0 < took <= after - before
    assert young == full


@pytest.fixture
def billing(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, bool]]:
    """Billing as benchmarks/load.py starts it, with ``--freeze-gc`` when the test's parameter is
    True: its ``/demo/stats`` URL and that parameter."""
    frozen: bool = request.param
    port = free_port()
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "benchmarks._load_billing_settings",
        "DEMO_DATABASE": ":memory:",
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "billing.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "testproject.serve", "--port", str(port), "--exit-with-parent"]
            + (["--freeze-gc"] if frozen else []),
            cwd=ROOT,
            env=environment,
            stdin=subprocess.PIPE,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_listening(process, port, f"billing (its output: {log})", seconds=25)
        yield f"http://127.0.0.1:{port}/demo/stats", frozen
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.parametrize("billing", [False, True], indirect=True, ids=["as is", "frozen"])
def test_serve_freezes_the_loaded_application_only_when_asked_and_stats_say_so(billing: tuple[str, bool]) -> None:
    url, frozen = billing
    with _NO_PROXY.open(url, timeout=5) as response:
        stats = json.load(response)
    if frozen:
        assert stats["gc_frozen"] > 10_000  # Django, the demo and this package's modules, at least
    else:
        assert stats["gc_frozen"] == 0
    assert isinstance(stats["gc_pauses"], list)
