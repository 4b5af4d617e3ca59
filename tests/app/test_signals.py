"""signals.client_built: sent once per built client; the app connects the breaker publisher to it."""

import asyncio
import concurrent.futures
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pytest_django.fixtures import Settings as SettingsWrapper

from django_aio_request import clients
from django_aio_request.breaker_publisher import client_built as watch_breaker
from django_aio_request.core.client import Client
from django_aio_request.named_clients import BUILD_WAIT
from django_aio_request.signals import client_built
from django_aio_request.testing import fake_client
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


THREE = {"CLIENTS": {name: {"ENDPOINT": "http://127.0.0.1:1/"} for name in ("c0", "c1", "c2")}}


def test_a_build_holds_up_neither_other_clients_nor_an_event_loop(settings: SettingsWrapper) -> None:
    """While one thread's build of c0 runs its receivers (the publisher may wait 0.25 s there, for a
    database that hangs): another thread builds c1, a receiver builds c2 from a thread of its own and
    waits for it, and a task on an event loop looks c0 up, all without waiting for it. Holding one
    registry lock through the receivers, each of these waited: builds were serialised (a worker's 8
    first requests, 0.70 s against 0.25 s), the loop stalled, the receiver's wait never ended."""
    settings.AIO_REQUEST = THREE
    release = threading.Event()
    in_receiver = threading.Event()
    waited: dict[str, float] = {}

    def receiver(sender: Any, *, name: str, client: Any, **kwargs: Any) -> None:
        if name == "c0":
            with concurrent.futures.ThreadPoolExecutor(1) as pool:  # another thread, waited for
                pool.submit(lambda: clients["c2"]).result(timeout=5)
            in_receiver.set()
            release.wait(5)

    def timed(label: str, look_up: Callable[[], object]) -> None:
        started = time.monotonic()
        look_up()
        waited[label] = time.monotonic() - started

    async def on_a_loop() -> None:
        timed("c0 on an event loop", lambda: clients["c0"])

    client_built.connect(receiver)
    try:
        builder = threading.Thread(target=lambda: clients["c0"])
        builder.start()
        assert in_receiver.wait(5)
        other = threading.Thread(target=timed, args=("c1 in another thread", lambda: clients["c1"]))
        other.start()
        other.join(5)
        asyncio.run(on_a_loop())
        release.set()
        builder.join(5)
    finally:
        release.set()
        client_built.disconnect(receiver)
    assert max(waited.values()) < 0.2, waited
    assert len(waited) == 2


def test_a_lookup_waits_at_most_build_wait_for_another_thread_s_build(settings: SettingsWrapper) -> None:
    """A receiver that waits, in turn, for another thread's lookup of the client it is announcing
    would never return: that lookup gives up waiting after BUILD_WAIT and takes the client."""
    settings.AIO_REQUEST = THREE
    got: list[Any] = []

    def receiver(sender: Any, *, name: str, client: Any, **kwargs: Any) -> None:
        if name == "c0":
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                got.append(pool.submit(lambda: clients["c0"]).result(timeout=BUILD_WAIT + 3))

    client_built.connect(receiver)
    try:
        started = time.monotonic()
        built = clients["c0"]
        took = time.monotonic() - started
    finally:
        client_built.disconnect(receiver)
    assert got == [built]
    assert BUILD_WAIT <= took < BUILD_WAIT + 1


def test_a_module_the_settings_name_may_look_a_client_up_as_it_is_imported(
    settings: SettingsWrapper, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the settings imports the enricher's module, here one that does ``AUTH = clients["auth"]``
    at import: under a plain registry lock that lookup, and every later one, waited for ever."""
    module = f"enricher_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "from django_aio_request import clients\n"
        "def enrich(request):\n"
        "    return request\n"
        "AUTH = clients['auth']  # looked up as the settings are read\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    settings.AIO_REQUEST = {
        "CLIENTS": {
            "auth": {"ENDPOINT": "http://127.0.0.1:1/"},
            "billing": {"ENDPOINT": "http://127.0.0.1:1/", "REQUEST_ENRICHER": f"{module}.enrich"},
        }
    }
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        billing = pool.submit(lambda: clients["billing"]).result(timeout=5)
    assert billing is clients["billing"]
    assert sys.modules[module].AUTH is clients["auth"]


def test_a_fake_made_while_the_real_client_is_built_stays_under_the_name(settings: SettingsWrapper) -> None:
    """fake_client() in a test while another thread's build of the client runs its receivers (the
    breaker publisher may take 0.25 s there): the build's end put the real client back over the fake,
    and the test's call went to the real endpoint."""
    settings.AIO_REQUEST = THREE
    in_receiver, release = threading.Event(), threading.Event()

    def receiver(sender: Any, *, name: str, client: Any, **kwargs: Any) -> None:
        if name == "c0":
            in_receiver.set()
            release.wait(5)

    client_built.connect(receiver)
    built: list[Client] = []
    try:
        builder = threading.Thread(target=lambda: built.append(clients["c0"]))
        builder.start()
        assert in_receiver.wait(5)
        with fake_client("c0") as fake:
            release.set()
            builder.join(5)
            assert clients["c0"].transport is fake
            assert built == [clients["c0"]]  # the builder too gets what is under the name
    finally:
        release.set()
        client_built.disconnect(receiver)


def test_a_receiver_that_raises_leaves_the_others_to_run(settings: SettingsWrapper) -> None:
    """Django's send() stops at the first receiver that raises: the breaker publisher's, connected
    after it, never ran, and the client stayed unwatched for good. The builder still hears of it."""
    settings.AIO_REQUEST = THREE
    ran: list[str] = []

    def broken(sender: Any, *, name: str, client: Any, **kwargs: Any) -> None:
        raise RuntimeError("a receiver's bug")

    def after(sender: Any, *, name: str, client: Any, **kwargs: Any) -> None:
        ran.append(name)

    client_built.connect(broken)
    client_built.connect(after)
    try:
        with pytest.raises(RuntimeError, match="a receiver's bug"):
            clients["c0"]
        assert ran == ["c0"]
        assert clients["c0"] is clients["c0"]  # kept, not built again
        assert ran == ["c0"]
    finally:
        client_built.disconnect(broken)
        client_built.disconnect(after)
