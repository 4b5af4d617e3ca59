"""How long to wait before attempt ``k`` (k >= 1) of a call."""

import math
import random
from collections.abc import Callable

from django_aio_request.core.request import Request
from django_aio_request.core.response import Response
from django_aio_request.strategies.arguments import finite

#: ``delays(attempt) -> seconds``. Sequential strategies wait this long after attempt k-1 ends;
#: parallel ones start attempt k this long after the call started.
DelaysProvider = Callable[[int], float]


class RequestAttemptDelaysProvider:
    """A delays provider that looks at the request; may also learn from responses (``observe``)."""

    def __call__(self, request: Request, attempt: int) -> float:
        raise NotImplementedError

    def observe(self, request: Request, response: Response) -> None:
        """Told of the response each attempt got (the default learns nothing), on the thread that ran it.

        An attempt abandoned here (the 499 of :func:`~django_aio_request.core.response.is_abandoned`) is
        passed only when another attempt of the same call won: one abandoned with its call (a caller
        that gave up) is not. An :class:`~django_aio_request.core.response.UnsentResponse` is passed
        like any response; it never reached the server."""


class _RequestUnaware(RequestAttemptDelaysProvider):
    __slots__ = ("_delays",)

    def __init__(self, delays: DelaysProvider) -> None:
        self._delays = delays

    def __call__(self, request: Request, attempt: int) -> float:
        return self._delays(attempt)


def as_request_delays(delays: "DelaysProvider | RequestAttemptDelaysProvider") -> RequestAttemptDelaysProvider:
    return delays if isinstance(delays, RequestAttemptDelaysProvider) else _RequestUnaware(delays)


def asked(provider: RequestAttemptDelaysProvider, request: Request, attempt: int) -> float:
    """What ``provider`` gives for ``attempt``; a NaN raises :func:`nan_delay`'s error."""
    delay = provider(request, attempt)
    if math.isnan(delay):
        raise nan_delay(provider, attempt)
    return delay


def nan_delay(provider: object, attempt: int) -> ValueError:
    """The error for a delays provider (a function of the application's own, often) that gave NaN:
    before no time and after none, the attempt due then went at once in one version and never in
    the next, or a pause raised after attempts had been sent."""
    return ValueError(f"the delays provider {provider!r} gave NaN for attempt {attempt}")


def request_unaware(delays: RequestAttemptDelaysProvider) -> DelaysProvider | None:
    """The plain ``delays(attempt)`` that :func:`as_request_delays` wrapped, or None when ``delays``
    looks at the request: called as it is, a call spares the wrapper's step."""
    return delays._delays if isinstance(delays, _RequestUnaware) else None


def constant_delays(*, delay: float = 0.0) -> DelaysProvider:
    """``delay`` seconds before every attempt: a finite number >= 0 (NaN or infinity raise here)."""
    seconds = finite("delay", delay)
    if seconds < 0:
        raise ValueError(f"delay must be >= 0 seconds, not {delay!r}")
    return lambda _attempt: seconds


def linear_backoff_delays(
    *, min_delay_seconds: float = 0.0, delay_multiplier: float = 0.05, jitter: float = 0.2
) -> DelaysProvider:
    """``min_delay_seconds + attempt * delay_multiplier``, moved up or down by up to ``jitter`` of itself.

    Each a finite number (NaN or infinity raise here, not in the middle of a call)."""
    least = finite("min_delay_seconds", min_delay_seconds)
    multiplier = finite("delay_multiplier", delay_multiplier)
    spread = finite("jitter", jitter)
    if least < 0 or multiplier < 0:
        raise ValueError("min_delay_seconds and delay_multiplier must be >= 0")
    if not 0 <= spread <= 1:
        raise ValueError(f"jitter must be between 0 and 1, not {jitter!r}")

    def delays(attempt: int) -> float:
        delay = least + attempt * multiplier
        return delay * (1 + spread * random.uniform(-1.0, 1.0))

    return delays
