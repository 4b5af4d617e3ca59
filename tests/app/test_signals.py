"""signals.client_built: sent once per built client; the app connects the breaker publisher to it."""

import threading
from typing import Any

from pytest_django.fixtures import Settings as SettingsWrapper

from django_aio_request import clients
from django_aio_request.breaker_publisher import client_built as watch_breaker
from django_aio_request.core.client import Client
from django_aio_request.signals import client_built
from tests.support.loopback import clients as clients_for


def test_sent_once_when_a_client_is_built(settings: SettingsWrapper) -> None:
    settings.AIO_REQUEST = {"CLIENTS": {"billing": {"ENDPOINT": "http://127.0.0.1:1/"}}}
    seen: list[tuple[str, Any]] = []

    def receiver(sender: Any, *, name: str, client: Any, **kwargs: Any) -> None:
        seen.append((name, client))

    client_built.connect(receiver)
    try:
        built = clients["billing"]
        assert clients["billing"] is built
    finally:
        client_built.disconnect(receiver)
    assert seen == [("billing", built)]


def test_the_app_connects_the_breaker_publisher() -> None:
    with clients_for("http://127.0.0.1:1/") as make:
        without_breaker = make()
        answered = client_built.send(sender=None, name="x", client=without_breaker)
    assert watch_breaker in [receiver for receiver, _ in answered]


def test_other_threads_get_the_client_after_the_receivers_ran_and_a_receiver_may_look_up_clients(
    settings: SettingsWrapper,
) -> None:
    """The breaker publisher reads admin's overrides in its receiver: a thread that got the client
    before that was over called an endpoint forced open (tests/app/test_breaker_publisher.py)."""
    settings.AIO_REQUEST = {
        "CLIENTS": {"billing": {"ENDPOINT": "http://127.0.0.1:1/"}, "plain": {"ENDPOINT": "http://127.0.0.1:1/"}}
    }
    in_receiver, release = threading.Event(), threading.Event()
    looked_up: list[Client] = []
    got: list[tuple[Client, bool]] = []

    def receiver(sender: Any, *, name: str, client: Any, **kwargs: Any) -> None:
        if name == "billing":
            looked_up.extend([clients["billing"], clients["plain"]])  # re-entrant, no deadlock
            in_receiver.set()
            release.wait(5)

    def other_thread() -> None:
        in_receiver.wait(5)
        client = clients["billing"]
        got.append((client, release.is_set()))

    client_built.connect(receiver)
    try:
        other = threading.Thread(target=other_thread)
        other.start()
        builder = threading.Thread(target=lambda: clients["billing"])
        builder.start()
        assert in_receiver.wait(5)
        other.join(0.3)
        assert other.is_alive()  # still waiting for the receiver
        release.set()
        builder.join(5)
        other.join(5)
    finally:
        client_built.disconnect(receiver)
    built = clients["billing"]
    assert looked_up == [built, clients["plain"]]
    assert got == [(built, True)]
