"""strategies/deadline_providers.py: the deadline each attempt of a sequential call gets."""

import pytest

from django_aio_request import Deadline
from django_aio_request.strategies.deadline_providers import pass_deadline_through, split_deadline_between_attempts


class TestDeadlineProviders:
    def test_pass_through_gives_every_attempt_the_whole_deadline(self) -> None:
        deadline = Deadline.from_timeout(5)
        provider = pass_deadline_through()
        assert all(provider(deadline, k, 3) is deadline for k in range(3))

    def test_split_shares_the_time_left_among_the_attempts_to_come(self) -> None:
        deadline = Deadline.from_timeout(9.0)
        provider = split_deadline_between_attempts()
        assert 2.95 < provider(deadline, 0, 3).timeout <= 3.0
        assert 4.45 < provider(deadline, 1, 3).timeout <= 4.5
        assert provider(deadline, 2, 3) is deadline  # the last attempt gets all that is left

    def test_split_among_the_first_k_attempts_only(self) -> None:
        deadline = Deadline.from_timeout(8.0)
        provider = split_deadline_between_attempts(attempts_count_to_split=2)
        assert 3.95 < provider(deadline, 0, 5).timeout <= 4.0
        assert provider(deadline, 1, 5) is deadline
        assert provider(deadline, 4, 5) is deadline

    def test_a_single_attempt_gets_everything(self) -> None:
        deadline = Deadline.from_timeout(1.0)
        assert split_deadline_between_attempts()(deadline, 0, 1) is deadline

    def test_an_expired_deadline_is_passed_on(self) -> None:
        deadline = Deadline.from_timeout(0)
        assert split_deadline_between_attempts()(deadline, 0, 3) is deadline

    @pytest.mark.parametrize("count", [0, 1, -3])
    def test_split_needs_at_least_two_attempts(self, count: int) -> None:
        with pytest.raises(ValueError, match="attempts_count_to_split must be >= 2"):
            split_deadline_between_attempts(attempts_count_to_split=count)

    @pytest.mark.parametrize("count", [2.5, 3.0, float("nan"), True, "3"])
    def test_split_needs_a_whole_number(self, count: object) -> None:
        with pytest.raises(TypeError, match=r"^attempts_count_to_split must be a whole number \(an int\), not "):
            split_deadline_between_attempts(attempts_count_to_split=count)  # type: ignore[arg-type]
