"""Whether the current thread runs an asyncio event loop: where nothing may wait on other threads."""

import asyncio

__all__ = ["runs_event_loop"]


def runs_event_loop() -> bool:
    """True on a thread whose event loop is running (a wait there stops every task on the loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
