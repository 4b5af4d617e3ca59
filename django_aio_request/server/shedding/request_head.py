"""The priority a request claims, read from the first bytes of its head before any thread parses it.

A server whose requests wait in its own queue before a thread takes them (gunicorn's gthread
worker) cannot order that queue by ``X-Request-Priority`` unless it reads the header first. This
module finds the headers the order needs, ``X-Request-Priority``, ``X-Service-Name`` and
``X-Request-Timeout``, in
bytes peeked from the socket (``MSG_PEEK``: nothing is consumed, the thread later parses the
request as usual). It is a hint for the queue's order, not a parser: whatever is not plainly an
HTTP/1 head with each header once on a complete line counts as not found, and the middleware
still decides from the headers the server parsed.
"""

import dataclasses

from django_aio_request.core.priority import Priority

__all__ = ["NOTHING", "Claims", "read_claims"]

_PRIORITY = b"x-request-priority"
_SERVICE = b"x-service-name"
_TIMEOUT = b"x-request-timeout"
_PRIORITIES = {p.value.encode(): p for p in Priority}
_OWS = b" \t"


@dataclasses.dataclass(frozen=True)
class Claims:
    """What a request head claims; None where it claims nothing (or not once, or not readably)."""

    priority: Priority | None = None
    service: str | None = None
    timeout: str | None = None  # as sent: the middleware's parse_timeout() reads it


NOTHING = Claims()


def read_claims(data: bytes) -> Claims:
    """The priority and service name claimed in ``data``, the first bytes of an HTTP/1 request.

    Only a complete head counts: until its blank line has arrived, a header seen once may come again
    after the bytes read (past the 8 KiB peeked, or sent later), and a header named twice counts as
    absent (as the middleware ignores a joined ``high,low``). Read from a head not all there, a
    10 ms ``X-Request-Timeout`` followed past 8 KiB by a second one had the request taken ahead of
    every other once its "deadline" passed, and the middleware, seeing ``0.01,30``, served it in
    full: 30 such low-priority callers left trusted high priority 0% in time (a review). The
    priority is compared as the middleware compares it: ASCII, any case, blanks around it ignored.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return NOTHING  # the head is not all there: queued with the default priority and no deadline
    head = data[: end + 2]
    lines = head.split(b"\r\n")[1:-1]  # the request line first; the last piece is cut off or empty
    priority: list[bytes] = []
    service: list[bytes] = []
    timeout: list[bytes] = []
    for line in lines:
        field, colon, value = line.partition(b":")
        if not colon:
            continue
        field = field.lower()
        if field == _PRIORITY:
            priority.append(value)
        elif field == _SERVICE:
            service.append(value)
        elif field == _TIMEOUT:
            timeout.append(value)
    claimed = _PRIORITIES.get(priority[0].strip(_OWS).lower()) if len(priority) == 1 else None
    return Claims(claimed, _text(service), _text(timeout)) if priority or service or timeout else NOTHING


def _text(values: list[bytes]) -> str | None:
    """The one value of a header, blanks around it removed; None when absent, repeated, empty or not ASCII."""
    if len(values) != 1:
        return None
    value = values[0].strip(_OWS)
    return value.decode("ascii") if value and value.isascii() else None
