"""What deadline attempt ``k`` of ``n`` of a sequential call gets."""

from collections.abc import Callable

from django_aio_request.core.deadline import Deadline
from django_aio_request.strategies.arguments import whole

DeadlineProvider = Callable[[Deadline, int, int], Deadline]


def pass_deadline_through() -> DeadlineProvider:
    """Every attempt may use all the time the call has left."""
    return lambda deadline, _attempt, _attempts_count: deadline


def split_deadline_between_attempts(*, attempts_count_to_split: int | None = None) -> DeadlineProvider:
    """Share the time left equally among the attempts still to come.

    With 9 s and 3 attempts the first gets 3 s; if it fails after 1 s, the second gets 4 s, and the
    last one whatever is left. With ``attempts_count_to_split=k``, only the first ``k`` attempts share:
    the k-th and later get all that is left.
    """
    if attempts_count_to_split is not None:
        if whole("attempts_count_to_split", attempts_count_to_split) < 2:
            raise ValueError(f"attempts_count_to_split must be >= 2, not {attempts_count_to_split}")
        attempts_count_to_split = int(attempts_count_to_split)

    def provider(deadline: Deadline, attempt: int, attempts_count: int) -> Deadline:
        sharing = attempts_count if attempts_count_to_split is None else min(attempts_count_to_split, attempts_count)
        left = sharing - attempt
        if left <= 1 or deadline.expired:
            return deadline
        return deadline / left

    return provider
