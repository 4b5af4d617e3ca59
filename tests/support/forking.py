"""Run a function in a forked child and read its result back: for tests of what survives fork()."""

import json
import os
from collections.abc import Callable
from typing import Any


def in_child(work: Callable[[], Any]) -> Any:
    """``work()`` in a forked child, which leaves without running the parent's cleanup; its JSON
    result, read back through a pipe (None if the child wrote nothing)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, json.dumps(work()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        got = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(got or "null")
