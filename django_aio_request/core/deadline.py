import contextvars
import math
import time

#: The LOW_TIMEOUT_THRESHOLD of the client whose call runs in this context: the least time left an
#: attempt is sent with. The client's call (sync or async) sets it around its strategy's ``request``
#: (with the token, not a context manager: a generator per call cost more); hedges run in copies of
#: that context. Read by the strategies (strategies/base.py ``too_late_to_send``) and by the transport
#: before it sends a request again (transport/requests_transport.py). 0 outside a client (tests,
#: custom callers).
client_low_timeout_threshold: contextvars.ContextVar[float] = contextvars.ContextVar(
    "django_aio_request_low_timeout_threshold", default=0.0
)


def too_little_to_send(left: float) -> bool:
    """Whether an attempt with ``left`` seconds is not sent: none left, or less than the threshold."""
    return left <= 0 or left < client_low_timeout_threshold.get()


#: The farthest a call's deadline is, in seconds from now: 31 years, the most ``X-Request-Timeout``
#: carries (core/timeout_header.py) and far below what the waits a call meets take
#: (``threading.TIMEOUT_MAX``, about 292 years, past which they raise ``OverflowError``).
LONGEST_DEADLINE = 999_999_999.0


class Deadline:
    """A point on the monotonic clock by which a call must be over."""

    __slots__ = ("_expires_at",)

    def __init__(self, expires_at: float) -> None:
        self._expires_at = expires_at

    @classmethod
    def from_timeout(cls, seconds: float) -> "Deadline":
        """A deadline ``seconds`` from now. Negative, NaN and infinite values are errors."""
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise TypeError(f"timeout must be a number of seconds, not {type(seconds).__name__}")
        try:
            finite = math.isfinite(seconds)
        except OverflowError:  # an int too large for a float: 10**400
            finite = False
        if not finite or seconds < 0:
            raise ValueError(f"timeout must be a finite number of seconds >= 0, not {_shown(seconds)}")
        return cls(time.monotonic() + seconds)

    @property
    def expires_at(self) -> float:
        """The deadline on the ``time.monotonic()`` clock."""
        return self._expires_at

    @property
    def timeout(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self._expires_at - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self._expires_at

    def __truediv__(self, divisor: object) -> "Deadline":
        """A deadline that leaves ``1/divisor`` of the time left now."""
        if isinstance(divisor, bool) or not isinstance(divisor, int | float):
            return NotImplemented
        if not math.isfinite(divisor) or divisor <= 0:
            raise ValueError(f"a deadline can only be divided by a positive number, not {divisor!r}")
        return Deadline.from_timeout(self.timeout / divisor)

    def __float__(self) -> float:
        return self.timeout

    def __repr__(self) -> str:
        return "<Deadline expired>" if self.expired else f"<Deadline timeout={self.timeout:.3f}s>"


def _shown(value: float) -> str:
    """``repr`` of a number, cut short: the error of a 5,000-digit int would be 5,000 characters long."""
    try:
        text = repr(value)
    except ValueError:  # an int past sys.get_int_max_str_digits()
        return f"an int of {value.bit_length()} bits" if isinstance(value, int) else "a number"
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"
