"""strategies/percentile_delays.py: hedge delays learned from the latencies of recent responses."""

import random
import threading
import time

import pytest

from django_aio_request import EmptyResponse, Response, get, post
from django_aio_request.core.response import UnsentResponse
from django_aio_request.strategies.percentile_delays import PercentileDelaysProvider


def ok(elapsed: float) -> Response:
    return Response(status=200, elapsed=elapsed)


class TestPercentileDelaysProvider:
    def test_min_delay_until_enough_samples(self) -> None:
        provider = PercentileDelaysProvider(min_delay_seconds=0.05, min_samples=10)
        request = get("things")
        assert provider(request, 1) == 0.05
        for _ in range(9):
            provider.observe(request, ok(1.0))
        assert provider(request, 1) == 0.05
        provider.observe(request, ok(1.0))
        assert provider(request, 1) == pytest.approx(1.0)

    def test_delay_is_about_the_percentile_of_successful_latencies(self) -> None:
        provider = PercentileDelaysProvider(percentile=0.9, min_delay_seconds=0.0, min_samples=10)
        request = get("things")
        latencies = [i / 100 for i in range(1, 101)]  # 0.01 .. 1.00
        random.Random(7).shuffle(latencies)
        for latency in latencies:
            provider.observe(request, ok(latency))
        assert provider.delay(request) == pytest.approx(0.9, abs=0.02)

        p50 = PercentileDelaysProvider(percentile=0.5, min_delay_seconds=0.0, min_samples=10)
        for latency in latencies:
            p50.observe(request, ok(latency))
        assert p50.delay(request) == pytest.approx(0.5, abs=0.02)

    def test_attempt_k_waits_k_times_the_delay(self) -> None:
        provider = PercentileDelaysProvider(min_delay_seconds=0.0, min_samples=5)
        request = get("things")
        for _ in range(5):
            provider.observe(request, ok(0.2))
        assert [provider(request, k) for k in (1, 2, 3)] == pytest.approx([0.2, 0.4, 0.6])

    def test_clamped_to_min_and_max(self) -> None:
        provider = PercentileDelaysProvider(min_delay_seconds=0.05, max_delay_seconds=2.0, min_samples=5)
        fast, slow = get("fast"), get("slow")
        for _ in range(5):
            provider.observe(fast, ok(0.001))
            provider.observe(slow, ok(30.0))
        assert provider.delay(fast) == 0.05
        assert provider.delay(slow) == 2.0
        assert provider(slow, 2) == 4.0

    def test_failed_responses_are_ignored(self) -> None:
        provider = PercentileDelaysProvider(min_delay_seconds=0.0, min_samples=5)
        request = get("things")
        for status in (500, 503, 404, 408, 489, 302):
            for _ in range(5):
                provider.observe(request, Response(status=status, elapsed=9.0))
        assert provider.delay(request) == 0.0  # still no samples
        for _ in range(5):
            provider.observe(request, ok(0.1))
        for _ in range(20):
            provider.observe(request, Response(status=500, elapsed=9.0))
        assert provider.delay(request) == pytest.approx(0.1)

    def test_keyed_by_method_and_url_template(self) -> None:
        provider = PercentileDelaysProvider(min_delay_seconds=0.0, min_samples=4)
        for thing_id in range(4):  # different ids, one template
            provider.observe(get("things/{id}", path_parameters={"id": thing_id}), ok(0.3))
        assert provider.delay(get("things/{id}", path_parameters={"id": 99})) == pytest.approx(0.3)
        assert provider.delay(post("things/{id}", path_parameters={"id": 1})) == 0.0
        assert provider.delay(get("other/{id}", path_parameters={"id": 1})) == 0.0

    def test_follows_new_samples(self) -> None:
        provider = PercentileDelaysProvider(min_delay_seconds=0.0, min_samples=10, refresh_seconds=3600)
        request = get("things")
        for _ in range(100):
            provider.observe(request, ok(0.1))
        assert provider.delay(request) == pytest.approx(0.1)
        for _ in range(100):
            provider.observe(request, ok(1.0))
        # Half the window is now 1 s: its 95th percentile is 1 s, even though the refresh
        # interval has not passed (many new samples arrived).
        assert provider.delay(request) == pytest.approx(1.0)

    def test_old_samples_leave_the_window_and_their_record_is_dropped_when_read(self) -> None:
        provider = PercentileDelaysProvider(
            min_delay_seconds=0.01, min_samples=5, window_seconds=0.2, refresh_seconds=0.0
        )
        request = get("things")
        for _ in range(5):
            provider.observe(request, ok(0.5))
        assert provider.delay(request) == pytest.approx(0.5)
        time.sleep(0.25)
        assert provider.delay(request) == 0.01
        assert not provider._samples  # the record whose samples all left the window
        provider.observe(request, ok(0.5))  # learns again from scratch
        assert len(provider._samples[("GET", "things")].latencies) == 1

    def test_at_most_max_templates_records_the_ones_past_it_pooled(self) -> None:
        """Templates built from data (get(f"things/{id}")) kept a record each without a bound:
        100,000 of them kept 100,001 records, ~113 MiB."""
        provider = PercentileDelaysProvider(min_delay_seconds=0.0, min_samples=5, refresh_seconds=0.0)
        for i in range(5 * PercentileDelaysProvider.MAX_TEMPLATES):
            provider.observe(get(f"things/{i}"), ok(0.3))
        assert len(provider._samples) == PercentileDelaysProvider.MAX_TEMPLATES
        # The templates past the bound share one record: a new one's delay is theirs pooled.
        assert provider.delay(get("things/new")) == pytest.approx(0.3)
        assert provider.delay(get("things/0")) == 0.0  # its own record: 1 sample, under min_samples

    def test_templates_gone_quiet_make_room_for_new_ones(self) -> None:
        class Small(PercentileDelaysProvider):
            MAX_TEMPLATES = 10
            SWEEP_SECONDS = 0.0

        provider = Small(min_delay_seconds=0.0, min_samples=1, window_seconds=0.2, refresh_seconds=0.0)
        for i in range(10):
            provider.observe(get(f"old/{i}"), ok(0.1))
        provider.observe(get("busy"), ok(0.2))  # past the bound: pooled
        assert ("GET", "busy") not in provider._samples
        time.sleep(0.25)  # every old sample leaves the window
        provider.observe(get("new"), ok(0.3))
        assert list(provider._samples) == [("GET", "new")]
        assert provider.delay(get("new")) == pytest.approx(0.3)

    def test_max_samples_keeps_only_the_newest(self) -> None:
        provider = PercentileDelaysProvider(min_delay_seconds=0.0, min_samples=5, max_samples=10, refresh_seconds=0.0)
        request = get("things")
        for _ in range(50):
            provider.observe(request, ok(2.0))
        for _ in range(10):
            provider.observe(request, ok(0.2))
        assert provider.delay(request) == pytest.approx(0.2)

    def test_concurrent_observers_and_readers(self) -> None:
        provider = PercentileDelaysProvider(min_delay_seconds=0.0, min_samples=10, refresh_seconds=0.0)
        request = get("things")
        errors: list[BaseException] = []
        barrier = threading.Barrier(8)

        def work() -> None:
            try:
                barrier.wait(5)
                for _ in range(300):
                    provider.observe(request, ok(0.25))
                    provider(request, 2)
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert errors == []
        assert provider(request, 2) == pytest.approx(0.5)

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"percentile": 0},
            {"percentile": 1},
            {"percentile": 95},
            {"min_delay_seconds": -0.1},
            {"min_delay_seconds": 5, "max_delay_seconds": 1},
            {"window_seconds": 0},
            {"max_samples": 0},
            {"min_samples": 0},
        ],
    )
    def test_invalid_arguments(self, kwargs: dict[str, float]) -> None:
        with pytest.raises(ValueError, match=r"must be|need"):
            PercentileDelaysProvider(**kwargs)  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        "name",
        [
            "percentile",
            "min_delay_seconds",
            "max_delay_seconds",
            "window_seconds",
            "refresh_seconds",
            "saturation_ratio",
        ],
    )
    @pytest.mark.parametrize("value", [float("nan"), float("inf")])
    def test_a_number_that_is_not_finite_is_refused_at_once(self, name: str, value: float) -> None:
        """window_seconds=nan passed (nan <= 0 is False), so did an infinite max_delay_seconds."""
        with pytest.raises(ValueError, match=f"^{name} must be a finite number, not {value}$"):
            PercentileDelaysProvider(**{name: value})  # type: ignore[arg-type]

    @pytest.mark.parametrize("name", ["max_samples", "min_samples"])
    @pytest.mark.parametrize("value", [2.5, 20.0, True])
    def test_a_count_that_is_not_a_whole_number_is_refused_at_once(self, name: str, value: object) -> None:
        with pytest.raises(TypeError, match=f"^{name} must be a whole number \\(an int\\), not {value}$"):
            PercentileDelaysProvider(**{name: value})  # type: ignore[arg-type]

    def test_the_percentile_is_by_nearest_rank(self) -> None:
        # int(0.95 * 20) picked the 20th of 20 latencies, the slowest, as their 95th percentile.
        provider, request = PercentileDelaysProvider(min_samples=20), get("few")
        for _ in range(19):
            provider.observe(request, ok(0.020))
        provider.observe(request, ok(3.0))
        assert provider.delay(request) == pytest.approx(0.020)

    def test_attempts_a_deadline_ended_count_for_saturation_not_for_the_delay(self) -> None:
        # Learned into the hedging percentile, 3-4% of calls timing out (attempt 0 and its hedge,
        # two latencies each) pushed a 33 ms p95 to the 150 ms deadline: no hedges for the curable
        # rest of the tail. They are lower bounds for the body, which saturation is judged by.
        provider = PercentileDelaysProvider(percentile=0.9, min_samples=20, refresh_seconds=0.0)
        request = get("tail")
        for index in range(200):
            provider.observe(request, ok(0.030 if index % 10 == 0 else 0.005))
            if index % 10 == 5:
                provider.observe(request, EmptyResponse(status=408, elapsed=0.150))
        assert provider.delay(request) == pytest.approx(0.010)  # the p90 of the answers (5 ms), floored

    def test_what_says_nothing_of_the_server_is_not_learned(self) -> None:
        provider = PercentileDelaysProvider(min_samples=1, min_delay_seconds=0.0)
        request = get("quiet")
        # waited for one of this client's connections, then out of time or abandoned: never sent
        provider.observe(request, UnsentResponse(status=408, elapsed=0.5))
        provider.observe(request, UnsentResponse(status=499, elapsed=0.5))
        provider.observe(request, EmptyResponse(status=408))  # refused as too late to send
        provider.observe(request, Response(status=503, elapsed=0.5))  # failed
        provider.observe(request, EmptyResponse(status=408, elapsed=None))  # type: ignore[arg-type]
        provider.observe(request, EmptyResponse(status=408, elapsed="0.1"))  # type: ignore[arg-type]
        assert provider.delay(request) == 0.0  # nothing learned: the floor
        provider.observe(request, ok(0.2))
        assert provider.delay(request) == pytest.approx(0.2)

    def test_min_samples_above_max_samples_is_refused(self) -> None:
        # The record never held min_samples latencies: the delay stayed at its floor for ever.
        with pytest.raises(ValueError, match=r"min_samples \(20\) must not be above max_samples \(10\)"):
            PercentileDelaysProvider(max_samples=10, min_samples=20)

    def test_a_negative_refresh_is_refused(self) -> None:
        with pytest.raises(ValueError, match=r"refresh_seconds must be >= 0, not -1\.0"):
            PercentileDelaysProvider(refresh_seconds=-1)


def test_a_forked_child_asks_for_a_delay_whose_lock_another_thread_held_at_the_fork() -> None:
    # The lock stayed held in the child, and every hedged call there waited on it for ever.
    from tests.support.forking import held_by_another_thread, in_child

    provider, request = PercentileDelaysProvider(min_samples=1, min_delay_seconds=0.0), get("forked")
    provider.observe(request, ok(0.2))

    def ask() -> list[float]:
        asked: list[float] = []
        asking = threading.Thread(target=lambda: asked.append(provider.delay(request)), daemon=True)
        asking.start()
        asking.join(2)
        return asked

    with held_by_another_thread(provider._lock):
        assert in_child(ask) == [pytest.approx(0.2)]
