import math
import time


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
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"timeout must be a finite number of seconds >= 0, not {seconds!r}")
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
