"""strategies/delays.py: fixed and backing-off delays between attempts."""

import math
from typing import Any

import pytest

from django_aio_request import EmptyResponse, Request, Response, get
from django_aio_request.strategies.delays import constant_delays, linear_backoff_delays
from django_aio_request.strategies.percentile_delays import PercentileDelaysProvider


def ok(elapsed: float) -> Response:
    return Response(status=200, elapsed=elapsed)


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The percentile provider's clock, which the test moves: ``now[0]`` (not the time module everyone shares)."""
    from django_aio_request.strategies import percentile_delays

    moved = [1000.0]

    class Clock:
        @staticmethod
        def monotonic() -> float:
            return moved[0]

    monkeypatch.setattr(percentile_delays, "time", Clock)
    return moved


class TestConstantDelays:
    def test_same_delay_for_every_attempt(self) -> None:
        delays = constant_delays(delay=0.25)
        assert [delays(k) for k in range(1, 5)] == [0.25] * 4
        assert constant_delays()(3) == 0.0

    def test_negative_delay_is_an_error(self) -> None:
        with pytest.raises(ValueError, match="delay must be >= 0"):
            constant_delays(delay=-0.1)

    @pytest.mark.parametrize(
        ("delay", "error", "message"),
        [
            (math.nan, ValueError, "delay must be a finite number, not nan"),
            (math.inf, ValueError, "delay must be a finite number, not inf"),
            (-math.inf, ValueError, "delay must be a finite number, not -inf"),
            ("0.1", TypeError, "delay must be a number, not '0.1'"),
            (True, TypeError, "delay must be a number, not True"),
            (None, TypeError, "delay must be a number, not None"),
        ],
    )
    def test_a_delay_that_is_not_a_finite_number_is_refused_at_once(
        self, delay: Any, error: type[Exception], message: str
    ) -> None:
        """NaN passed the check (nan < 0 is False) and the call raised ValueError after attempt 0 was sent."""
        with pytest.raises(error, match=f"^{message}$"):
            constant_delays(delay=delay)


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

    @pytest.mark.parametrize("name", ["min_delay_seconds", "delay_multiplier", "jitter"])
    @pytest.mark.parametrize("value", [math.nan, math.inf])
    def test_an_argument_that_is_not_finite_is_refused_at_once(self, name: str, value: float) -> None:
        """NaN passed the checks (every comparison with it is False) and the call raised later."""
        with pytest.raises(ValueError, match=f"^{name} must be a finite number, not {value}$"):
            linear_backoff_delays(**{name: value})

    @pytest.mark.parametrize("name", ["min_delay_seconds", "delay_multiplier", "jitter"])
    def test_an_argument_that_is_not_a_number_is_a_type_error(self, name: str) -> None:
        for value in ("0.1", True, None):
            with pytest.raises(TypeError, match=f"^{name} must be a number, not "):
                linear_backoff_delays(**{name: value})  # type: ignore[arg-type]


class Calls:
    """Calls at ``rate`` a second on the provider's test clock, each learned, then asked whether held."""

    def __init__(self, provider: PercentileDelaysProvider, request: Request, now: list[float], rate: int) -> None:
        self.provider, self.request, self.now, self.rate = provider, request, now, rate

    def run(self, seconds: float, latency: float) -> list[bool]:
        """Whether each call was held; the delay each was given is appended to ``delays``."""
        held = []
        self.delays: list[float] = []
        for _ in range(round(seconds * self.rate)):
            self.now[0] += 1 / self.rate
            self.provider.observe(self.request, ok(latency))
            held.append(self.provider.saturated(self.request))
            self.delays.append(self.provider.delay(self.request))
        return held


class TestSaturation:
    """PercentileDelaysProvider(saturation_ratio=...): no hedges while the learned delay says the
    server is saturated (its percentile far above the baseline it showed within the window)."""

    def provider(self, ratio: float | None) -> PercentileDelaysProvider:
        return PercentileDelaysProvider(
            min_samples=20, max_samples=100, refresh_seconds=0.0, saturation_ratio=ratio, max_delay_seconds=10.0
        )

    def test_a_saturated_server_gets_no_hedges_until_it_recovers(self) -> None:
        provider, request = self.provider(3.0), get("things/{id}")
        for _ in range(100):
            provider.observe(request, ok(0.020))
        assert provider.delay(request) == pytest.approx(0.020)
        for _ in range(100):
            provider.observe(request, ok(0.090))  # every answer 4.5x slower: the server is saturated
        assert provider.delay(request) == 10.0
        assert provider.saturated(request)
        for _ in range(100):
            provider.observe(request, ok(0.040))  # 2x the baseline: busy, not saturated
            provider.delay(request)  # as each call asks: the answers after the hold lifted are learned
        assert provider.delay(request) == pytest.approx(0.040)
        assert not provider.saturated(request)

    def test_a_bigger_slow_tail_is_not_saturation(self) -> None:
        # A server whose slowest few answers take 150 ms (a slow query) and the rest 5 ms. When that
        # tail grows from 4% to 12%, the p90 jumps from 5 ms into it (30 times its lowest), but the
        # server queues nothing: the body of the latencies (their p75) stays at 5 ms, and hedges go on.
        provider, request = self.provider(2.0), get("orders/{id}")
        provider.percentile = 0.9
        for index in range(100):
            provider.observe(request, ok(0.150 if index % 25 == 0 else 0.005))
        assert provider.delay(request) == pytest.approx(0.010)  # the p90 (5 ms), floored at 10 ms
        for index in range(100):
            provider.observe(request, ok(0.150 if index % 25 < 3 else 0.005))
        assert not provider.saturated(request)
        assert provider.delay(request) == pytest.approx(0.150)  # the p90, now in the tail

    def test_a_queueing_server_is_saturated_while_its_body_is_still_under_the_shortest_delay(self) -> None:
        # benchmarks/load.py's billing: answers in 4 ms (p75) when not busy, hedges not before 50 ms.
        # Queueing moves the body to 30 ms: still under 50 ms, yet 7.5 times its baseline, and the
        # attempts past 50 ms (the hedges) multiply. The body judged against 2 x 50 ms saw nothing.
        provider, request = self.provider(2.0), get("hop")
        provider.min_delay_seconds, provider.percentile = 0.050, 0.9
        for index in range(100):
            provider.observe(request, ok(0.400 if index % 20 == 0 else 0.004))
        assert provider.delay(request) == pytest.approx(0.050)
        assert not provider.saturated(request)
        for index in range(100):
            provider.observe(request, ok(0.400 if index % 20 == 0 else 0.030))
        assert provider.saturated(request)
        assert provider.delay(request) == 10.0
        for index in range(100):
            provider.observe(request, ok(0.400 if index % 20 == 0 else 0.006))  # recovered: 1.5x its lowest
        assert not provider.saturated(request)
        assert provider.delay(request) == pytest.approx(0.050)

    def test_a_few_times_a_small_body_is_not_saturation(self) -> None:
        # 0.4 ms to 4 ms is ten times the baseline, but under half of the 10 ms shortest delay:
        # jitter of a fast server, which sends few attempts past the delay. Hedges go on.
        provider, request = self.provider(2.0), get("fast")
        for _ in range(100):
            provider.observe(request, ok(0.0004))
        assert provider.delay(request) == pytest.approx(0.010)  # the baseline learned: 0.4 ms
        for _ in range(100):
            provider.observe(request, ok(0.004))
        assert not provider.saturated(request)
        assert provider.delay(request) == pytest.approx(0.010)
        for _ in range(100):
            provider.observe(request, ok(0.006))  # past half of it (5 ms), and 15 times the baseline
        assert provider.saturated(request)

    def test_a_baseline_learned_in_a_fast_moment_holds_hedges_back_until_the_window_measures_it_again(
        self, now: list[float]
    ) -> None:
        # A documented limit: the baseline is the lowest body within the window. Answers at 1 ms
        # first, then a steady, healthy 8 ms (8x, and above half the 10 ms shortest delay): hedges
        # stay off until the window (60 s here) has passed and the baseline is measured again.
        provider = PercentileDelaysProvider(
            min_samples=20, max_samples=100, refresh_seconds=0.0, saturation_ratio=2.0, window_seconds=60.0
        )
        request = get("warm")
        for _ in range(40):
            now[0] += 0.01
            provider.observe(request, ok(0.001))
            provider.delay(request)
        held: list[bool] = []
        for _ in range(1300):  # 65 s of steady 8 ms answers, one every 50 ms
            now[0] += 0.05
            provider.observe(request, ok(0.008))
            held.append(provider.saturated(request))
        assert all(held[100:1100])  # from 5 s to 55 s: still judged against the 1 ms of the first answers
        assert not any(held[-50:])  # once the window has passed: 8 ms is the baseline, hedges are back

    def test_a_stall_holds_hedges_back_within_seconds_and_no_longer_than_it_lasts(self, now: list[float]) -> None:
        # benchmarks/load.py's billing as one caller's worker sees it: 100 calls a second, 4 ms with a
        # 5% tail at 400 ms, hedges after the p90 but not before 50 ms; the provider's defaults
        # otherwise (2,000 samples: 20 s of them). Then 4 s of queueing (30 ms), then calm again.
        # Judged by the whole window, hedges went on for the first 3.4 s of the stall and stayed off
        # for 3.9 s after it; judged by the last 2 s, they stop after 0.5 s and are back 1.9 s after.
        provider = PercentileDelaysProvider(percentile=0.9, min_delay_seconds=0.050, saturation_ratio=2.0)
        request = get("hop")

        def run(seconds: float, body: float) -> list[bool]:
            held = []
            for index in range(round(seconds * 100)):
                now[0] += 0.01
                provider.observe(request, ok(0.400 if index % 20 == 0 else body))
                held.append(provider.saturated(request))
            return held

        calm = run(12, 0.004)
        assert not any(calm)
        stall = run(4, 0.030)
        assert all(stall[150:])  # held from 1.5 s into the stall on
        after = run(20, 0.004)
        assert not any(after[300:])  # and back 3 s after it
        assert provider.delay(request) == pytest.approx(0.050)

    def test_a_saturation_is_held_for_a_whole_window_wherever_it_begins(self, now: list[float]) -> None:
        # The baseline was one minimum re-measured every window: re-measured in the middle of a
        # saturation, it became the saturated body and hedges went back into it (one that began 10 s
        # before the re-measure was held for 11 s). Now the least body of the last window, kept per
        # tenth of it: held for the first window of any saturation, then the server as it now is.
        for calm_seconds in (100, 250, 290):
            provider = PercentileDelaysProvider(saturation_ratio=2.0)  # window 300 s, 2,000 samples
            calls = Calls(provider, get("slowing"), now, rate=20)
            assert not any(calls.run(calm_seconds, 0.010))
            saturated = calls.run(300, 0.100)
            assert all(saturated[5 * 20 :]), f"hedges back {saturated.index(False, 100) / 20} s into it"
            later = calls.run(150, 0.100)
            assert not any(later[-20 * 20 :])  # 10x slower for over a window: the server as it is now

    def test_the_delay_after_a_saturation_is_the_one_learned_before_it(self, now: list[float]) -> None:
        # The latencies of a saturation stayed in the hedging percentile for the rest of the window:
        # hedges came back once the hold lifted, but at the saturated latencies (150 ms for a server
        # hedged at 10 ms before), for 20 s at 100 calls a second and 295 s at 5.
        for rate in (5, 100):
            provider = PercentileDelaysProvider(saturation_ratio=2.0)
            request = get("recovering")
            calls = Calls(provider, request, now, rate=rate)
            calls.run(60, 0.004)
            before = provider.delay(request)
            assert calls.run(20, 0.150)[-1]
            after = calls.run(30, 0.004)
            lifted = after.index(False)
            assert not any(after[lifted:])
            assert lifted / rate < 15
            # From the first call after the hold: at 100 calls a second the saturation filled the
            # window (2,000 latencies), and falling back on all of them gave 150 ms for a second.
            assert calls.delays[lifted:] == pytest.approx([before] * (len(after) - lifted))

    def test_a_new_template_whose_first_calls_time_out_is_hedged_at_the_floor(self, now: list[float]) -> None:
        # Its first 15 calls stalled (attempt 0 and its hedge ended by a 0.3 s deadline, two latencies
        # each), then the server answered in 5 ms: the delay was the deadline (300 ms) for the next
        # 21 calls, a deadline's lower bound taken for the hedging percentile.
        provider, request = PercentileDelaysProvider(refresh_seconds=0.0), get("fresh")
        for _ in range(15):
            now[0] += 0.3
            provider.observe(request, EmptyResponse(status=408, elapsed=0.300))
            provider.observe(request, EmptyResponse(status=408, elapsed=0.290))
            assert provider.delay(request) == 0.010
        for _ in range(40):
            now[0] += 0.01
            provider.observe(request, ok(0.005))
            assert provider.delay(request) == 0.010

    def test_saturated_says_held_only_when_held(self) -> None:
        # saturated() compared the delay with MAX_DELAY_SECONDS: a server answering in 3 s with a
        # 2 s maximum, or MIN == MAX, read as saturated although nothing was held.
        steady = PercentileDelaysProvider(saturation_ratio=2.0, max_delay_seconds=2.0)
        request = get("slow")
        for _ in range(100):
            steady.observe(request, ok(3.0))
        assert steady.delay(request) == 2.0
        assert not steady.saturated(request)
        fixed = PercentileDelaysProvider(saturation_ratio=2.0, min_delay_seconds=0.5, max_delay_seconds=0.5)
        assert fixed.delay(request) == 0.5
        assert not fixed.saturated(request)

    def test_a_latency_that_is_not_a_number_is_not_learned(self) -> None:
        # One NaN (a custom transport's elapsed) made the baseline NaN, and no saturation was seen again.
        provider = PercentileDelaysProvider(min_samples=20, refresh_seconds=0.0, saturation_ratio=2.0)
        request = get("odd")
        for latency in (math.nan, math.inf, -1.0):
            for _ in range(30):  # a transport that said so for a while
                provider.observe(request, ok(latency))
        provider.delay(request)
        for _ in range(100):
            provider.observe(request, ok(0.020))
        assert not provider.saturated(request)
        for _ in range(100):
            provider.observe(request, ok(0.500))
        assert provider.saturated(request)

    def test_the_window_must_be_far_longer_than_the_recent_seconds(self) -> None:
        # With a window of 3 s a 10 s saturation was held in 10% of its calls, with 1 s in 3%.
        with pytest.raises(ValueError, match="window_seconds must be at least 20 with saturation_ratio"):
            PercentileDelaysProvider(saturation_ratio=2.0, window_seconds=3.0)
        PercentileDelaysProvider(window_seconds=3.0)  # without the ratio, any window

    def test_off_by_default(self) -> None:
        provider, request = self.provider(None), get("x")
        for latency in (0.020, 0.090):
            for _ in range(100):
                provider.observe(request, ok(latency))
        assert provider.delay(request) == pytest.approx(0.090)
        assert not provider.saturated(request)

    def test_the_ratio_must_be_above_one(self) -> None:
        with pytest.raises(ValueError, match="saturation_ratio must be above 1"):
            PercentileDelaysProvider(saturation_ratio=1.0)

    def test_from_settings(self) -> None:
        from django_aio_request.conf.building import build_delays
        from django_aio_request.conf.schema import DelaysSpec

        options = {
            "PERCENTILE": 0.95,
            "MIN_DELAY_SECONDS": 0.01,
            "MAX_DELAY_SECONDS": 10.0,
            "WINDOW_SECONDS": 300.0,
            "SATURATION_RATIO": 4.0,
        }
        built = build_delays(DelaysSpec("percentile", options))
        assert isinstance(built, PercentileDelaysProvider)
        assert built.saturation_ratio == 4.0
