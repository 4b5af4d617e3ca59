"""Run a function in a forked child and read its result back: for tests of what survives fork()."""

import contextlib
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

CHILD_SECONDS = 10


def in_child(work: Callable[[], Any]) -> Any:
    """``work()`` in a forked child, which leaves without running the parent's cleanup; its JSON
    result, read back through a pipe (None if the child wrote nothing, or hung past CHILD_SECONDS)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        # A child that hangs (a lock held for ever) ends, and writes nothing: by the signal's default
        # action, not a handler the parent had (pytest-timeout's).
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(CHILD_SECONDS)
        try:
            os.write(write, json.dumps(work()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        got = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(got or "null")


@contextlib.contextmanager
def held_by_another_thread(lock: Any) -> Iterator[None]:
    """``lock`` held by another thread for the whole block: what a fork inside the block copies."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(5)
    try:
        yield
    finally:
        release.set()
        holder.join()
