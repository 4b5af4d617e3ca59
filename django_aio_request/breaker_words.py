"""The words for a breaker's status that admin and ``manage.py circuit_breakers`` share.

Apart from admin.py so that the command works in a project without ``django.contrib.admin``
(importing admin.py registers its model admin, which needs that app).
"""

import datetime

from django.utils import timezone

from django_aio_request.models import BreakerStatus, Mode, State

__all__ = ["ago", "calls", "duration", "local", "percent", "state_note"]


def percent(ratio: float) -> str:
    return f"{ratio:.0%}"


def duration(delta: datetime.timedelta) -> str:
    """``"12 s"``, ``"3 min"``, ``"2 h"``."""
    seconds = max(0, round(delta.total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def local(moment: datetime.datetime) -> datetime.datetime:
    """``moment`` in the current time zone, to be shown: an aware one (``USE_TZ = True``) converted to it;
    a naive one (``USE_TZ = False``) is in ``TIME_ZONE`` already, as Django reads and writes them
    (``timezone.localtime()`` refuses it)."""
    return timezone.localtime(moment) if timezone.is_aware(moment) else moment


def ago(moment: datetime.datetime | None, now: datetime.datetime | None = None) -> str:
    """``"12:04:05 (3 s ago)"``; ``"never"``."""
    if moment is None:
        return "never"
    now = now or timezone.now()
    return f"{local(moment):%H:%M:%S} ({duration(now - moment)} ago)"


def calls(failures: int, successes: int, rejected: int) -> str:
    """``"12 failed, 30 ok (29%), 5 rejected"``: the calls of a window."""
    total = failures + successes
    text = f"{failures} failed, {successes} ok ({percent(failures / total if total else 0.0)})"
    return f"{text}, {rejected} rejected" if rejected else text


def state_note(obj: BreakerStatus, now: datetime.datetime | None = None) -> str:
    """What the state means now: an override not yet applied everywhere, a probe due, a probe out."""
    now = now or timezone.now()
    if obj.override and obj.known_override() is None:
        return (
            f"override {obj.override!r} is no mode: every process ignores it"
            " (Back to automatic, under Circuit breaker overrides, removes it)"
        )
    if obj.override:
        pending = obj.pending()
        if pending:
            return f"set; {pending} of {obj.processes} processes apply it at their next round"
        return "override: " + (
            "every call gets the fallback" if obj.override == Mode.FORCE_OPEN else "every call goes through"
        )
    if obj.pending():
        # Admin cannot tell an override lifted here from one a process set itself (in code, a test's
        # force_breaker()), which the publisher does not lift: say both.
        return (
            f"forced in {obj.pending()} of {obj.processes} processes with no override set here: lifted and"
            " not yet gone (they go back to automatic at their next round), or set in the process itself"
        )
    if obj.state == State.OPEN and obj.blocked_until is not None:
        if obj.blocked_until <= now:
            return f"probe due: the break ended {duration(now - obj.blocked_until)} ago; the next call probes"
        return f"probe in {duration(obj.blocked_until - now)} (at {local(obj.blocked_until):%H:%M:%S})"
    if obj.state == State.HALF_OPEN:
        return "one probe call is out: its outcome closes or reopens the circuit"
    return ""
