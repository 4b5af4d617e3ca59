"""The demo pages' percentile: nearest rank over sorted values."""

import math
from collections.abc import Sequence


def nearest_rank(ordered: Sequence[float], share: float) -> float:
    """The value that ``share`` of ``ordered`` (sorted) does not exceed; 0.0 when there are none."""
    if not ordered:
        return 0.0
    count = len(ordered)
    rank = max(1, min(count, math.ceil(share * count - 1e-9)))  # 1e-9: 0.99 * 300 is 297.00000000000006
    return ordered[rank - 1]
