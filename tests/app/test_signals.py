"""signals.client_built: sent once per built client; the app connects the breaker publisher to it."""

from typing import Any

from pytest_django.fixtures import Settings as SettingsWrapper

from django_aio_request import clients
from django_aio_request.breaker_publisher import client_built as watch_breaker
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
