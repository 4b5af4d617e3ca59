"""Single, sequential, method-based and retry-until-deadline strategies against a real server."""

import itertools
import socket
from collections.abc import Callable

import pytest

from django_aio_request import (
    Client,
    Deadline,
    PercentileDelaysProvider,
    Request,
    constant_delays,
    delete,
    get,
    parallel_strategy,
    post,
    put,
    request,
    retry_until_deadline_expired,
    sequential_strategy,
    single_attempt_strategy,
    split_deadline_between_attempts,
)
from django_aio_request.strategies import SequentialStrategy
from tests.support.loopback import (
    Handler,
    LoopbackServer,
    answer_after,
    free_port,
    hang_until_disconnect,
    replies,
    shed_then_served,
    wait_for_disconnect,
)
from tests.support.loopback import timed_call as call


def gaps(server: LoopbackServer, path: str) -> list[float]:
    arrivals = [r.at for r in server.received(path)]
    return [later - earlier for earlier, later in itertools.pairwise(arrivals)]


def sequential(attempts: int, delay: float = 0.0, **kwargs: object) -> SequentialStrategy:
    strategy = sequential_strategy(attempts_count=attempts, delays_provider=constant_delays(delay=delay), **kwargs)  # type: ignore[arg-type]
    assert isinstance(strategy, SequentialStrategy)
    return strategy


class TestSingleAttempt:
    def test_one_request_whatever_the_answer(self, server: LoopbackServer, make_client: Callable[..., Client]) -> None:
        server.route("/down", replies(500, 200))
        client = make_client(safe_method_strategy=single_attempt_strategy())

        response, _ = call(client, get("down"))

        assert response.status == 500
        assert response.read() == b"1"
        assert len(server.received("/down")) == 1


class TestSequential:
    def test_retries_server_errors_until_accepted(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        server.route("/flaky", replies(500, 503, 200))
        client = make_client(safe_method_strategy=sequential(5))

        response, _ = call(client, get("flaky"))

        assert response.status == 200
        assert response.read() == b"3"
        assert len(server.received("/flaky")) == 3

    def test_stops_at_attempts_count_with_the_last_response(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        server.route("/down", replies(500, 502, 503, 504, 500))
        client = make_client(safe_method_strategy=sequential(4))

        response, _ = call(client, get("down"))

        assert response.status == 504
        assert response.read() == b"4"
        assert len(server.received("/down")) == 4

    @pytest.mark.parametrize(("status", "attempts"), [(404, 1), (400, 1), (429, 3), (408, 3), (503, 3)])
    def test_which_statuses_are_retried(
        self, server: LoopbackServer, make_client: Callable[..., Client], status: int, attempts: int
    ) -> None:
        server.route("/x", replies(status))
        client = make_client(safe_method_strategy=sequential(3))

        response, _ = call(client, get("x"))

        assert response.status == status
        assert len(server.received("/x")) == attempts

    def test_do_not_retry_header_stops_retries(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        server.route("/x", lambda h: h.reply(503, b"", {"X-Do-Not-Retry": "1"}))
        client = make_client(safe_method_strategy=sequential(3))

        response, _ = call(client, get("x"))

        assert response.status == 503
        assert len(server.received("/x")) == 1

    def test_network_errors_are_retried(self, server: LoopbackServer, make_client: Callable[..., Client]) -> None:
        server.route("/drop", lambda h: h.connection.shutdown(socket.SHUT_RDWR))  # no answer at all
        client = make_client(safe_method_strategy=sequential(3))

        response, _ = call(client, get("drop"))

        assert response.status == 489
        assert len(server.received("/drop")) == 3

    def test_refused_connections_are_retried_quickly(self, make_client: Callable[..., Client]) -> None:
        client = make_client(endpoint=f"http://127.0.0.1:{free_port()}/", safe_method_strategy=sequential(3))

        response, elapsed = call(client, get("x"))

        assert response.status == 489
        assert elapsed < 1.0

    def test_waits_the_delay_between_attempts(self, server: LoopbackServer, make_client: Callable[..., Client]) -> None:
        server.route("/down", replies(500))
        delays: list[int] = []

        def delays_provider(attempt: int) -> float:
            delays.append(attempt)
            return 0.1 * attempt

        client = make_client(
            safe_method_strategy=sequential_strategy(attempts_count=3, delays_provider=delays_provider)
        )

        call(client, get("down"))

        assert delays == [1, 2]
        first_gap, second_gap = gaps(server, "/down")
        assert 0.1 <= first_gap < 0.1 + 0.15
        assert 0.2 <= second_gap < 0.2 + 0.15

    def test_a_retry_waits_for_what_a_shed_503_asks_in_retry_after(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        # A shedding server asks its callers to step back: retried at the backoff's 50 ms, 146 retries
        # in a review came within 58 ms of a 503 that asked for 1 s.
        server.route("/busy", shed_then_served("1"))
        client = make_client(safe_method_strategy=sequential(3, delay=0.05))

        response, elapsed = call(client, get("busy"), deadline=Deadline.from_timeout(3.0))

        assert response.status == 200
        assert 1.0 <= elapsed < 1.0 + 0.3
        (gap,) = gaps(server, "/busy")
        assert gap >= 1.0

    @pytest.mark.parametrize("asked", ["2", "  7 ", "99999999999999", "Wed, 21 Oct 2099 07:28:00 GMT"])
    def test_a_retry_after_beyond_the_deadline_ends_the_call_with_the_503_at_once(
        self, server: LoopbackServer, make_client: Callable[..., Client], asked: str
    ) -> None:
        server.route("/busy", lambda h: h.reply(503, b"shed", {"Retry-After": asked}))
        client = make_client(safe_method_strategy=sequential(3, delay=0.05))

        response, elapsed = call(client, get("busy"), deadline=Deadline.from_timeout(1.0))

        assert response.status == 503
        assert elapsed < 0.3
        assert len(server.received("/busy")) == 1

    @pytest.mark.parametrize("asked", ["soon", "-1", "1.5", "", "Wed, 21 Oct 2015 07:28:00 GMT", "\u00b2"])
    def test_a_retry_after_that_asks_nothing_leaves_the_delays_as_they_are(
        self, server: LoopbackServer, make_client: Callable[..., Client], asked: str
    ) -> None:
        server.route("/busy", shed_then_served(asked))
        client = make_client(safe_method_strategy=sequential(3, delay=0.05))

        response, elapsed = call(client, get("busy"), deadline=Deadline.from_timeout(3.0))

        assert response.status == 200
        assert elapsed < 0.4  # the backoff's 50 ms: malformed, or in the past

    def test_stops_when_the_deadline_is_shorter_than_the_next_delay(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        server.route("/down", replies(500))
        client = make_client(safe_method_strategy=sequential(3, delay=0.5))

        response, elapsed = call(client, get("down"), deadline=Deadline.from_timeout(0.4))

        assert response.status == 500
        assert elapsed < 0.2  # returned at once instead of sleeping past the deadline
        assert len(server.received("/down")) == 1

    def test_does_not_pause_for_a_retry_the_low_timeout_threshold_would_refuse(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        """0.3 s left, a 0.25 s pause, a 0.1 s threshold: the retry would leave with 0.05 s and not be
        sent. It slept the 0.25 s anyway and returned the first 503 that much later."""
        server.route("/down", replies(503))
        client = make_client(timeout=1.0, low_timeout_threshold=0.1, safe_method_strategy=sequential(2, delay=0.25))

        response, elapsed = call(client, get("down"), deadline=Deadline.from_timeout(0.3))

        assert response.status == 503
        assert elapsed < 0.15  # at once, not after the 0.25 s pause
        assert len(server.received("/down")) == 1

    def test_does_not_pause_for_a_retry_whose_split_share_the_threshold_would_refuse(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        """Three attempts share the time left: 0.35 s, attempt 0 gets 0.117 s. After a 0.2 s pause
        attempt 1 would get half of the 0.15 s left, below the 0.1 s threshold, and be refused,
        although the call's own 0.15 s is not below it: the call ends at once."""
        server.route("/down", replies(503))
        client = make_client(
            timeout=1.0,
            low_timeout_threshold=0.1,
            safe_method_strategy=sequential(3, delay=0.2, deadline_provider=split_deadline_between_attempts()),
        )

        response, elapsed = call(client, get("down"), deadline=Deadline.from_timeout(0.35))

        assert response.status == 503
        assert elapsed < 0.15  # not after the 0.2 s pause
        assert len(server.received("/down")) == 1

        # With time enough for every share, all three attempts go, 0.2 s apart.
        response, elapsed = call(client, get("down"), deadline=Deadline.from_timeout(1.0))
        assert response.status == 503
        assert len(server.received("/down")) == 4

    def test_still_pauses_for_a_retry_the_threshold_lets_through(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        server.route("/down", replies(503))
        client = make_client(timeout=1.0, low_timeout_threshold=0.1, safe_method_strategy=sequential(2, delay=0.15))

        response, elapsed = call(client, get("down"), deadline=Deadline.from_timeout(0.4))

        assert response.status == 503
        assert len(server.received("/down")) == 2
        assert 0.15 <= elapsed < 0.4

    def test_retries_while_the_deadline_allows(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        server.route("/down", replies(500))
        client = make_client(safe_method_strategy=sequential(10, delay=0.15))

        response, elapsed = call(client, get("down"), deadline=Deadline.from_timeout(0.5))

        # The last attempt may have started with too little time left to get an answer.
        assert response.status in (500, 408)
        assert 2 <= len(server.received("/down")) <= 4
        assert elapsed < 0.5 + 0.1

    def test_split_deadline_gives_the_first_of_three_attempts_a_third(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        server.route("/down", replies(500))
        client = make_client(
            safe_method_strategy=sequential(3, deadline_provider=split_deadline_between_attempts()),
        )

        call(client, get("down"), deadline=Deadline.from_timeout(3.0))

        first, second, third = (float(r.headers["X-Request-Timeout"]) for r in server.received("/down"))
        assert 0.9 < first <= 1.0
        assert 0.9 < second <= 1.5  # half of what was left
        assert 1.8 < third <= 3.0  # all that was left
        assert third > second

    def test_split_deadline_ends_a_slow_first_attempt_early(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        count = 0

        def slow_then_fast(handler: Handler) -> None:
            nonlocal count
            count += 1
            if count == 1:
                wait_for_disconnect(handler, 5.0)
                return
            handler.reply(200, b"fast")

        server.route("/x", slow_then_fast)
        client = make_client(
            safe_method_strategy=sequential(3, deadline_provider=split_deadline_between_attempts()),
        )

        response, elapsed = call(client, get("x"), deadline=Deadline.from_timeout(1.5))

        assert response.status == 200
        assert response.read() == b"fast"
        first, second = server.received("/x")
        assert 0.45 < second.at - first.at < 0.75  # the first attempt had a third of 1.5 s
        assert elapsed < 0.9

    def test_without_split_the_first_attempt_gets_everything(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        server.route("/down", replies(500))
        client = make_client(safe_method_strategy=sequential(3))

        call(client, get("down"), deadline=Deadline.from_timeout(3.0))

        assert 2.8 < float(server.received("/down")[0].headers["X-Request-Timeout"]) <= 3.0

    def test_delays_provider_learns_from_responses(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        server.route("/slowish", answer_after(0.1))
        delays = PercentileDelaysProvider(min_delay_seconds=0.0, min_samples=3)
        client = make_client(safe_method_strategy=sequential_strategy(attempts_count=2, delays_provider=delays))

        assert delays.delay(get("slowish")) == 0.0
        for _ in range(3):
            call(client, get("slowish"))

        assert 0.1 <= delays.delay(get("slowish")) < 0.3

    def test_attempts_count_must_be_positive(self) -> None:
        with pytest.raises(ValueError, match="attempts_count must be from 1 to 100, not 0"):
            sequential_strategy(attempts_count=0)


class TestMethodBased:
    @pytest.mark.parametrize(
        ("make_request", "attempts"),
        [
            (lambda: get("down"), 3),
            (lambda: request("HEAD", "down"), 3),
            (lambda: request("OPTIONS", "down"), 3),
            (lambda: post("down", b"x"), 1),
            (lambda: put("down", b"x"), 1),
            (lambda: delete("down"), 1),
            (lambda: request("PATCH", "down"), 1),
        ],
    )
    def test_default_retries_safe_methods_only(
        self,
        server: LoopbackServer,
        make_client: Callable[..., Client],
        make_request: Callable[[], Request],
        attempts: int,
    ) -> None:
        server.route("/down", replies(500))
        client = make_client()

        response, _ = call(client, make_request())

        assert response.status == 500
        assert len(server.received("/down")) == attempts

    def test_strategies_given_to_setup(self, server: LoopbackServer, make_client: Callable[..., Client]) -> None:
        server.route("/down", replies(500))
        client = make_client(safe_method_strategy=single_attempt_strategy(), unsafe_method_strategy=sequential(2))

        call(client, get("down"))
        assert len(server.received("/down")) == 1
        call(client, post("down"))
        assert len(server.received("/down")) == 3


class TestRetryUntilDeadlineExpired:
    def test_keeps_retrying_until_accepted(self, server: LoopbackServer, make_client: Callable[..., Client]) -> None:
        server.route("/flaky", replies(500, 500, 500, 500, 500, 200))
        client = make_client(
            safe_method_strategy=retry_until_deadline_expired(
                single_attempt_strategy(), delays_provider=constant_delays(delay=0.02)
            )
        )

        response, _ = call(client, get("flaky"), deadline=Deadline.from_timeout(5.0))

        assert response.status == 200
        assert response.read() == b"6"
        assert len(server.received("/flaky")) == 6
        assert all(gap >= 0.02 for gap in gaps(server, "/flaky"))

    def test_a_round_waits_for_what_a_shed_503_asks_in_retry_after(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        server.route("/busy", lambda h: h.reply(503, b"shed", {"Retry-After": "1"}))
        client = make_client(
            safe_method_strategy=retry_until_deadline_expired(
                single_attempt_strategy(), delays_provider=constant_delays(delay=0.02)
            )
        )

        response, elapsed = call(client, get("busy"), deadline=Deadline.from_timeout(2.5))

        assert response.status == 503
        assert len(server.received("/busy")) == 3  # at 0, 1 and 2 s: not every 20 ms
        assert all(gap >= 1.0 for gap in gaps(server, "/busy"))
        assert elapsed < 2.5 + 0.2

    @pytest.mark.parametrize(("timeout", "requests"), [(3.0, 3), (0.8, 2)])
    def test_a_round_waits_for_what_any_attempt_of_a_parallel_round_asked_in_retry_after(
        self, server: LoopbackServer, make_client: Callable[..., Client], timeout: float, requests: int
    ) -> None:
        # The round's answer is its first rejection, attempt 0's 500; attempt 1's 503 asked for 1 s.
        # Read from the round's answer alone, the next round went 50 ms after the 503.
        count = itertools.count(1)

        def fail_then_shed(handler: Handler) -> None:
            n = next(count)
            if n == 1:
                handler.reply(500, b"failed")
            elif n == 2:
                handler.reply(503, b"shed", {"Retry-After": "1"})
            else:
                handler.reply(200, b"served")

        server.route("/x", fail_then_shed)
        hedged = parallel_strategy(attempts_count=2, delays_provider=constant_delays(delay=0.5))
        client = make_client(
            safe_method_strategy=retry_until_deadline_expired(hedged, delays_provider=constant_delays(delay=0.02))
        )

        response, elapsed = call(client, get("x"), deadline=Deadline.from_timeout(timeout))

        assert len(server.received("/x")) == requests
        if requests == 3:
            assert response.status == 200
            assert gaps(server, "/x")[1] >= 1.0
        else:  # the 1 s asked ends past the deadline: no next round, and no pause for nothing
            assert response.status in (500, 503)
            assert elapsed < 0.3

    def test_gives_up_at_the_deadline_with_the_last_response(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        server.route("/down", replies(503))
        client = make_client(
            safe_method_strategy=retry_until_deadline_expired(
                single_attempt_strategy(), delays_provider=constant_delays(delay=0.05)
            )
        )

        response, elapsed = call(client, get("down"), deadline=Deadline.from_timeout(0.6))

        # The last attempt may have been left too little time to get an answer at all.
        assert response.status in (503, 408)
        assert len(server.received("/down")) >= 4
        assert elapsed <= 0.6 + 0.1

    def test_does_not_pause_for_a_round_the_low_timeout_threshold_would_refuse(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        """As the sequential strategy between attempts: it slept 0.25 s for a round whose attempt was
        then refused."""
        server.route("/down", replies(503))
        client = make_client(
            timeout=1.0,
            low_timeout_threshold=0.1,
            safe_method_strategy=retry_until_deadline_expired(
                single_attempt_strategy(), delays_provider=constant_delays(delay=0.25)
            ),
        )

        response, elapsed = call(client, get("down"), deadline=Deadline.from_timeout(0.3))

        assert response.status == 503
        assert elapsed < 0.15
        assert len(server.received("/down")) == 1

    def test_does_not_pause_for_a_round_whose_split_first_share_the_threshold_would_refuse(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        """It judged the next round by the whole deadline: with about 0.59 s left and a 0.4 s pause,
        0.19 s looked enough, but the round's sequential strategy gave its first attempt a third of
        it (0.063 s), which the threshold refused: the 503 came back after the pause, not at once."""
        server.route("/down", replies(503))
        client = make_client(
            timeout=1.0,
            low_timeout_threshold=0.1,
            safe_method_strategy=retry_until_deadline_expired(
                sequential(3, deadline_provider=split_deadline_between_attempts()),
                delays_provider=constant_delays(delay=0.4),
            ),
        )

        response, elapsed = call(client, get("down"), deadline=Deadline.from_timeout(0.6))

        assert response.status == 503
        assert len(server.received("/down")) == 3  # the first round's three attempts, no second round
        assert elapsed < 0.3  # no pause: the round would have been refused after it

    def test_wraps_another_strategy(self, server: LoopbackServer, make_client: Callable[..., Client]) -> None:
        server.route("/flaky", replies(500, 500, 500, 500, 200))
        client = make_client(
            safe_method_strategy=retry_until_deadline_expired(
                sequential(2), delays_provider=constant_delays(delay=0.01)
            )
        )

        response, _ = call(client, get("flaky"), deadline=Deadline.from_timeout(5.0))

        assert response.status == 200
        assert len(server.received("/flaky")) == 5

    def test_a_percentile_between_rounds_learns_from_every_attempt(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        """Allowed as its DELAYS in settings, the provider was never told of a response: it stayed at
        its floor whatever the server's latencies."""
        server.route("/ok", answer_after(0.02, 200, b"ok"))
        provider = PercentileDelaysProvider(min_delay_seconds=0.001, min_samples=10)
        client = make_client(
            safe_method_strategy=retry_until_deadline_expired(single_attempt_strategy(), delays_provider=provider)
        )
        for _ in range(12):
            call(client, get("ok"))
        assert provider.delay(get("ok")) >= 0.02  # learned; it was 0.001

    def test_a_hanging_server_is_bounded_by_the_deadline(
        self, server: LoopbackServer, make_client: Callable[..., Client]
    ) -> None:
        server.route("/hang", hang_until_disconnect)
        client = make_client(safe_method_strategy=retry_until_deadline_expired(single_attempt_strategy()))

        response, elapsed = call(client, get("hang"), deadline=Deadline.from_timeout(0.4))

        assert response.status == 408
        assert elapsed < 0.4 + 0.2


@pytest.mark.parametrize("count", [2.5, 2.0, float("nan"), True, "3", None])
def test_attempts_count_that_is_not_a_whole_number_is_refused_at_once(count: object) -> None:
    """parallel_strategy(attempts_count=2.5) was accepted (1 <= 2.5 <= 100) and raised TypeError
    inside the call; nan passed as well."""
    from django_aio_request import parallel_strategy

    for make in (sequential_strategy, parallel_strategy):
        with pytest.raises(TypeError, match=r"^attempts_count must be a whole number \(an int\), not "):
            make(attempts_count=count)  # type: ignore[arg-type]


def test_attempts_count_is_at_most_100() -> None:
    """A call works out its attempts' delays before it sends attempt 0: a million attempts held a
    call past its deadline with nothing sent."""
    from django_aio_request import parallel_strategy
    from django_aio_request.conf.schema import read_settings

    for make in (sequential_strategy, parallel_strategy):
        make(attempts_count=100, delays_provider=constant_delays())
        with pytest.raises(ValueError, match="attempts_count must be from 1 to 100, not 1000000"):
            make(attempts_count=1_000_000, delays_provider=constant_delays())
    strategy = {"NAME": "parallel", "ATTEMPTS_COUNT": 101}
    parsed, problems = read_settings({"CLIENTS": {"b": {"ENDPOINT": "http://b/", "SAFE_METHOD_STRATEGY": strategy}}})
    assert parsed is None
    assert "['ATTEMPTS_COUNT'] must be a whole number of at most 100, not 101" in str(problems[0])


@pytest.mark.parametrize("kind", ["sequential", "retry_until_deadline_expired"])
def test_a_delays_provider_that_gives_nan_for_a_retry_is_a_clear_error(
    server: LoopbackServer, make_client: Callable[..., Client], kind: str
) -> None:
    """The pause before the retry raised time.sleep's "Invalid value NaN", naming no provider."""
    server.route("/x", replies(500))

    def nan(attempt: int) -> float:
        return float("nan")

    strategy = (
        sequential_strategy(attempts_count=2, delays_provider=nan)
        if kind == "sequential"
        else retry_until_deadline_expired(single_attempt_strategy(), delays_provider=nan)
    )
    client = make_client(timeout=2.0, retry_budget=None, safe_method_strategy=strategy)
    with pytest.raises(ValueError, match="gave NaN for attempt 1"), client.request(get("x")):
        pass
    assert len(server.received("/x")) == 1  # the first attempt, rejected; no retry
