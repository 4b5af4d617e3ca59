"""The ``X-Request-Timeout`` value this client stamps: the time left, in seconds to the millisecond.

The value is a :class:`StampedTimeout`, a ``str`` that says it was stamped here: a redirect followed
by the transport carries the time left at that hop only in place of a stamped value, never of one
the caller or a request enricher set themselves (any plain ``str``)."""


class StampedTimeout(str):
    """An ``X-Request-Timeout`` value stamped by the pipeline (core/pipeline.py)."""

    __slots__ = ()


def stamp(seconds: float) -> StampedTimeout:
    """``seconds`` left, as the header carries them."""
    return StampedTimeout(f"{seconds:.3f}")
