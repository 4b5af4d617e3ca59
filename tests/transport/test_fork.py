"""transport/requests_transport.py: a transport used before fork() gets pools and slots of its own in
the child (gunicorn forks its workers; ``--preload`` and module-level clients share one across it)."""

import threading
import time
from collections.abc import Callable
from typing import Any

import requests
from requests.adapters import HTTPAdapter

import django_aio_request as dar
from tests.support.forking import held_by_another_thread, in_child
from tests.support.loopback import Handler, LoopbackServer

PORTS: dict[str, int] = {}  # path -> the client's port it came from (its connection)


def echo_after(seconds: float) -> Callable[[Handler], None]:
    def handle(handler: Handler) -> None:
        PORTS[handler.path] = handler.client_address[1]
        time.sleep(seconds)
        handler.reply(200, handler.path.encode())

    return handle


def answer(transport: dar.RequestsTransport, url: str, path: str, timeout: float = 2.0) -> list[Any]:
    response = transport.send(url, dar.get(path), timeout)
    return [response.status, response.read().decode()]


def test_parent_and_child_calling_at_once_each_read_their_own_answer(server: LoopbackServer) -> None:
    """The keep-alive connection the parent pooled is the child's too: calling on it at once, each
    read the other's answer (the parent got the child's, in three runs of three)."""
    server.route("/warm", echo_after(0))
    server.route("/parent", echo_after(0.3))
    server.route("/child", echo_after(0.3))
    transport = dar.RequestsTransport()
    try:
        assert answer(transport, server.url, "warm") == [200, "/warm"]  # pools a connection

        def child() -> list[Any]:
            time.sleep(0.05)  # after the parent's request went out on the pooled connection
            return answer(transport, server.url, "child")

        results: list[Any] = []
        thread = threading.Thread(target=lambda: results.append(in_child(child)))
        thread.start()
        parent = answer(transport, server.url, "parent")
        thread.join(10)
    finally:
        transport.close()
    assert parent == [200, "/parent"]
    assert results == [[200, "/child"]]
    assert PORTS["/child"] not in (PORTS["/warm"], PORTS["/parent"])  # a connection of the child's own


def test_slots_taken_by_the_parent_s_calls_in_flight_are_the_child_s_to_use(server: LoopbackServer) -> None:
    """With max_connections=1 and a call of the parent's in flight at the fork, every call of the
    child waited for a slot nobody there would give back: 408."""
    server.route("/slow", echo_after(1.0))
    server.route("/fast", echo_after(0))
    transport = dar.RequestsTransport(max_connections=1)
    try:
        thread = threading.Thread(target=answer, args=(transport, server.url, "slow", 5.0))
        thread.start()
        time.sleep(0.2)  # the parent's call holds the only slot
        assert in_child(lambda: answer(transport, server.url, "fast", 1.0)) == [200, "/fast"]
        thread.join(10)
    finally:
        transport.close()


def test_a_route_being_planned_at_the_fork_is_planned_again_in_the_child(server: LoopbackServer) -> None:
    """A thread of the parent working out a host's route at the fork holds the transport's planning
    lock: the child's copy would stay held, and its first call to any new host would wait for ever."""
    server.route("/fast", echo_after(0))
    transport = dar.RequestsTransport()
    try:
        host = server.url.rstrip("/")
        transport._planning[host] = threading.Lock()
        with held_by_another_thread(transport._planning[host]), held_by_another_thread(transport._planning_guard):
            assert in_child(lambda: answer(transport, server.url, "fast", 1.0)) == [200, "/fast"]
    finally:
        transport.close()


def test_pool_options_of_a_user_s_adapter_hold_in_the_child(server: LoopbackServer) -> None:
    """The child's pools were made with the pool size alone: options the user gave the adapter's
    pools (here source_address; also ssl_context, socket_options) were dropped there."""
    server.route("/who", lambda handler: handler.reply(200, handler.client_address[0].encode()))
    session = requests.Session()
    adapter = HTTPAdapter()
    adapter.init_poolmanager(10, 10, source_address=("127.0.0.2", 0))  # calls leave from 127.0.0.2
    session.mount(server.url, adapter)
    transport = dar.RequestsTransport(session)
    try:
        assert answer(transport, server.url, "who") == [200, "127.0.0.2"]
        assert in_child(lambda: answer(transport, server.url, "who")) == [200, "127.0.0.2"]
    finally:
        transport.close()
