"""strategies/delays.py: fixed and backing-off delays between attempts."""

import pytest

from django_aio_request import Response
from django_aio_request.strategies.delays import constant_delays, linear_backoff_delays


def ok(elapsed: float) -> Response:
    return Response(status=200, elapsed=elapsed)


class TestConstantDelays:
    def test_same_delay_for_every_attempt(self) -> None:
        delays = constant_delays(delay=0.25)
        assert [delays(k) for k in range(1, 5)] == [0.25] * 4
        assert constant_delays()(3) == 0.0

    def test_negative_delay_is_an_error(self) -> None:
        with pytest.raises(ValueError, match="delay must be >= 0"):
            constant_delays(delay=-0.1)


class TestLinearBackoffDelays:
    def test_without_jitter_grows_linearly(self) -> None:
        delays = linear_backoff_delays(min_delay_seconds=0.1, delay_multiplier=0.05, jitter=0)
        assert [delays(k) for k in range(1, 4)] == pytest.approx([0.15, 0.2, 0.25])

    def test_jitter_moves_the_delay_within_its_fraction(self) -> None:
        delays = linear_backoff_delays(min_delay_seconds=0.0, delay_multiplier=0.1, jitter=0.2)
        samples = [delays(2) for _ in range(500)]
        assert all(0.16 <= s <= 0.24 for s in samples)
        assert max(samples) - min(samples) > 0.05  # really jittered, not a constant
        assert 0.19 < sum(samples) / len(samples) < 0.21  # and centred on the nominal delay

    def test_default_is_fifty_milliseconds_per_attempt(self) -> None:
        delays = linear_backoff_delays()
        assert all(0.04 <= delays(1) <= 0.06 for _ in range(50))
        assert all(0.12 <= delays(3) <= 0.18 for _ in range(50))

    @pytest.mark.parametrize(
        "kwargs",
        [{"min_delay_seconds": -1}, {"delay_multiplier": -0.1}, {"jitter": -0.1}, {"jitter": 1.5}],
    )
    def test_invalid_arguments(self, kwargs: dict[str, float]) -> None:
        with pytest.raises(ValueError, match=r"must be (>= 0|between 0 and 1)"):
            linear_backoff_delays(**kwargs)
