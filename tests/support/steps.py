"""Thread switches at every step: run a function and, between two of its bytecode steps, something
else, as another thread would run it there. For code that shares state between threads without a
lock: each interleaving is tried once, in order, instead of hoping that many threads hit it."""

import sys
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any


def run_with_step(call: Callable[[], object], code: CodeType, step: int | None, between: Callable[[], object]) -> int:
    """Run ``call()``; in the frame running ``code``, run ``between()`` after ``step`` bytecode
    steps (None: never). Returns the steps that frame took."""
    steps = 0

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal steps
        if frame.f_code is not code:
            return None
        frame.f_trace_opcodes = True
        if event == "opcode":
            if steps == step:
                between()
            steps += 1
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        call()
    finally:
        sys.settrace(previous)
    return steps
