"""The ``X-Request-Timeout`` value this client stamps: the time left, in seconds to the millisecond.

The value is a :class:`StampedTimeout`, a ``str`` that says it was stamped here: a redirect followed
by the transport carries the time left at that hop only in place of a stamped value, never of one
the caller or a request enricher set themselves (any plain ``str``)."""


class StampedTimeout(str):
    """An ``X-Request-Timeout`` value stamped by the pipeline (core/pipeline.py)."""

    __slots__ = ()


#: The most seconds the header carries: the largest a server running this app reads (at most 9
#: integer digits, server/middleware.py; it caps them at its MAX_TIMEOUT). A longer deadline
#: (``Deadline.from_timeout(1e9)``) sent as it is, "1000000000.000", was malformed there: ignored,
#: the server's default TIMEOUT (20 s) instead of its MAX_TIMEOUT.
MAX_SECONDS = 999_999_999


def stamp(seconds: float) -> StampedTimeout:
    """``seconds`` left, as the header carries them (at most :data:`MAX_SECONDS`)."""
    return StampedTimeout(f"{min(seconds, MAX_SECONDS):.3f}")
