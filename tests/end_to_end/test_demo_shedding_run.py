"""The load-shedding page's run (testproject/shedding.py) when orders fails a read of its /metrics."""

import itertools

import pytest
from pytest_django.fixtures import Settings

from django_aio_request import Priority
from django_aio_request.testing import fake_client, reply
from testproject import shedding


def test_a_limit_sample_orders_resets_is_counted_missing_and_the_run_samples_on(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    """An overloaded orders reset a read of its /metrics: the sampling thread died with the traceback
    and the rest of the run had no samples, with nothing on the page saying so (1 of ~20 runs in a review)."""
    settings.AIO_REQUEST = {"CLIENTS": {"orders_single": {"ENDPOINT": "http://127.0.0.1:9/"}}}
    reads = itertools.count()

    def every_other_read_reset(seconds: float) -> shedding.Sample:
        if next(reads) % 2:
            raise ConnectionResetError(104, "Connection reset by peer")
        return shedding.Sample(round(seconds, 2), 2.0, 0.0)

    monkeypatch.setattr(shedding, "orders_gauges", every_other_read_reset)
    monkeypatch.setattr(shedding, "orders_shed", lambda: {p.value: 0.0 for p in Priority})
    monkeypatch.setattr(shedding, "SAMPLE_EVERY", 0.05)
    with fake_client("orders_single") as orders:
        orders.route("*", reply(200, delay=0.01))
        results, samples, missed = shedding.run(0.5)
    assert {r.priority for r in results} == set(shedding.CALLERS)
    # Reads alternate, a sample and a reset: a sample after a reset shows the sampler lived on. How
    # many reads fit in the run is the scheduler's (2 samples in 0.5 s once, under CI's load).
    assert len(samples) >= 2
    assert missed >= 1
    assert abs(len(samples) - missed) <= 1
