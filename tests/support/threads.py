"""Running a test's function on several threads at once."""

import threading
from collections.abc import Callable


def run_in_threads(function: Callable[[], object], count: int, timeout: float = 30.0) -> None:
    """Run ``function`` on ``count`` threads, started together, and wait for them (each at most ``timeout`` s)."""
    threads = [threading.Thread(target=function) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
