"""What leak and fault tests count: this process's open descriptors, and a condition that must
come true within a while (a server noticing a closed connection, a thread ending)."""

import os
import time
from collections.abc import Callable


def open_fds() -> int:
    """How many file descriptors this process has open now."""
    return len(os.listdir("/proc/self/fd"))


def eventually(condition: Callable[[], bool], timeout: float = 2.0, interval: float = 0.02) -> bool:
    """Whether ``condition()`` comes true within ``timeout`` seconds (checked every ``interval``)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(interval)
    return condition()
