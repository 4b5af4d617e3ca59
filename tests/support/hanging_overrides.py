"""The breaker publisher's read of admin's overrides, made to hang as a database that stops answering does."""

import threading

import pytest
from django.db import OperationalError

from django_aio_request import breaker_publisher
from django_aio_request.breaker_publisher import FIRST_READ_WAIT, Publisher


def publisher_whose_overrides_hang(
    monkeypatch: pytest.MonkeyPatch, *, first_read_wait: float = FIRST_READ_WAIT
) -> tuple[Publisher, threading.Event]:
    """The process's publisher replaced by one (on the ``postgres`` connection) whose every read of
    the overrides waits until the returned event is set, or 10 s, and then fails as a timed-out
    query does. The caller sets the event and stops the publisher when done."""
    made = Publisher(interval=3600, first_read_wait=first_read_wait, database="postgres")
    monkeypatch.setattr(breaker_publisher, "publisher", made)
    released = threading.Event()

    def hang(self: Publisher, breakers: object) -> None:
        released.wait(10)
        raise OperationalError("timed out")

    monkeypatch.setattr(Publisher, "_apply_overrides", hang)
    return made, released
