"""The ``X-Request-Timeout`` value this client stamps: the time left, in seconds to the millisecond
(below 10 ms to the microsecond).

The value is a :class:`StampedTimeout`, a ``str`` that says it was stamped here. The pipeline
writes it (with ``X-Request-Priority``) over whatever the request's own headers said, as
aio-request does, unless the client's ``emit_system_headers`` is off (core/pipeline.py;
tests/transport/test_requests_transport.py::test_the_system_headers_replace_the_caller_s_own_as_aio_request_s_do). The
transport stamps it again (:func:`restamp`) as the request goes out, after its wait for a
connection slot and for the connection itself, and before each redirect it follows: only in place
of a stamped value, never of one a request enricher (which runs after the pipeline wrote its own)
set itself (any plain ``str``)."""

import math
from collections.abc import MutableMapping
from typing import Any

from django_aio_request.core import headers as h


class StampedTimeout(str):
    """An ``X-Request-Timeout`` value stamped by the pipeline (core/pipeline.py)."""

    __slots__ = ()


#: The most seconds the header carries: the largest a server running this app reads (at most 9
#: integer digits, server/middleware.py; it caps them at its MAX_TIMEOUT). A longer deadline
#: (``Deadline.from_timeout(1e9)``) sent as it is, "1000000000.000", was malformed there: ignored,
#: the server's default TIMEOUT (20 s) instead of its MAX_TIMEOUT.
MAX_SECONDS = 999_999_999


#: Below this many seconds left the header carries whole microseconds, not milliseconds.
MICROSECONDS_BELOW = 0.010


def stamp(seconds: float) -> StampedTimeout:
    """``seconds`` left, as the header carries them (at most :data:`MAX_SECONDS`), rounded down to the
    millisecond: the time left may only shrink on its way. Rounded to the nearest, as ``:.3f`` does,
    the header said up to 0.5 ms more than was left.

    Less than 10 ms goes in whole microseconds (``0.005900``; ``0.000890`` as ``PriorityThreadWorker``
    writes it), where a server's low-timeout threshold is: a millisecond cut off there is what decides
    whether it serves the request. aio-request's middleware refuses a deadline at or below its
    threshold (5 ms by default), and 5.9 ms left, sent as ``0.005``, was answered 408, which this
    client's breaker counted as the endpoint's failure (a review: the circuit opened against a
    healthy aiohttp service). Below a millisecond, ``0.000`` read as a deadline passed. Values that
    small are rare, so they cost a server's cache of values seen (server/middleware.py) nothing."""
    left = min(seconds, MAX_SECONDS)
    if 0 < left < MICROSECONDS_BELOW:
        return StampedTimeout(f"{math.floor(left * 1_000_000) / 1_000_000:.6f}")
    return StampedTimeout(f"{math.floor(left * 1000) / 1000:.3f}")


def restamp(headers: MutableMapping[str, Any], seconds: float) -> None:
    """Make a stamped ``X-Request-Timeout`` in ``headers`` (requests' case-insensitive dict) the
    ``seconds`` left now. One a request enricher set itself is its own: left as it is."""
    if isinstance(headers.get(h.X_REQUEST_TIMEOUT), StampedTimeout):
        headers[h.X_REQUEST_TIMEOUT] = stamp(max(seconds, 0.0))
