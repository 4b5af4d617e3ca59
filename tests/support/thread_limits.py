"""A process that may start no more threads (a pids limit), for the first start of one kind."""

import threading

import pytest


def first_start_fails(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """The first ``start()`` of a thread named ``name`` raises as CPython does when the system refuses
    a new thread; every later one starts."""
    real_start = threading.Thread.start
    failures = [1]

    def start(thread: threading.Thread) -> None:
        if thread.name == name and failures[0]:
            failures[0] -= 1
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
