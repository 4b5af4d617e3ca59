"""transport/pool_slots.py: a pool's empty slots moved without taking a connection out, in the
standard library's LIFO queue and in gevent's (which gunicorn's gevent worker patches in: it has no
``mutex``), and the drainer pooling a losing hedge's connection in a process gevent patched."""

import json
import queue
from collections.abc import Callable
from typing import Any

import gevent.queue
import pytest

from django_aio_request.transport.pool_slots import put_empty_slot_at_bottom, swap_empty_slot
from tests.support.child_python import run_script
from tests.support.scripted_server import ScriptedServer, first_of_a_path_late

QUEUES: list[Callable[[int], Any]] = [queue.LifoQueue, gevent.queue.LifoQueue]


class Conn:
    def __init__(self, name: str, sock: object = True) -> None:
        self.name, self.sock = name, sock

    def __repr__(self) -> str:
        return self.name


def contents(waiting: Any) -> list[str]:
    """The queue's slots from the top (what get() takes first) down."""
    taken = []
    while not waiting.empty():
        slot = waiting.get_nowait()
        taken.append("-" if slot is None else repr(slot))
    return taken


def filled(make: Callable[[int], Any], slots: list[Any], maxsize: int = 10) -> Any:
    waiting = make(maxsize)
    for slot in slots:  # bottom first
        waiting.put_nowait(slot)
    return waiting


@pytest.mark.parametrize("make", QUEUES, ids=["queue", "gevent"])
def test_a_drained_connection_takes_the_topmost_empty_slot_and_goes_on_top(make: Callable[[int], Any]) -> None:
    waiting = filled(make, [None, Conn("a"), Conn("dead", sock=None), Conn("b")])
    assert swap_empty_slot(waiting, Conn("drained")) is True
    assert contents(waiting) == ["drained", "b", "a", "-"]


@pytest.mark.parametrize("make", QUEUES, ids=["queue", "gevent"])
def test_a_drained_connection_finds_no_empty_slot_and_the_queue_is_as_it_was(make: Callable[[int], Any]) -> None:
    waiting = filled(make, [Conn("a"), Conn("b")])
    assert swap_empty_slot(waiting, Conn("drained")) is False
    assert contents(waiting) == ["b", "a"]


@pytest.mark.parametrize("make", QUEUES, ids=["queue", "gevent"])
def test_an_empty_slot_given_back_goes_to_the_bottom_unless_the_queue_is_full(make: Callable[[int], Any]) -> None:
    waiting = filled(make, [Conn("a"), Conn("b")], maxsize=3)
    put_empty_slot_at_bottom(waiting)
    put_empty_slot_at_bottom(waiting)  # full: dropped, as urllib3 drops what a full pool is given
    assert contents(waiting) == ["b", "a", "-"]


HEDGED_UNDER_GEVENT = """
import sys
from gevent import monkey
monkey.patch_all()  # what gunicorn's gevent worker does first
import json, logging, time
import django_aio_request as dar
from django_aio_request.transport.connection_drainer import drainer

errors = []
class Errors(logging.Handler):
    def emit(self, record):
        errors.append(record.getMessage())
logging.getLogger("django_aio_request").addHandler(Errors(logging.ERROR))
strategy = dar.parallel_strategy(attempts_count=2, delays_provider=lambda k: 0.05 * k, stragglers_only=False)
client = dar.setup(endpoint=sys.argv[1], timeout=5.0, safe_method_strategy=strategy, retry_budget=None)
statuses = []
for n in range(8):
    with client.request(dar.get(f"slow{n}")) as response:  # attempt 0 answered at 0.15 s, its hedge at once
        statuses.append(response.status)
    time.sleep(0.2)  # the loser's answer comes meanwhile: the drainer reads it
client.close()
print(json.dumps({"statuses": statuses, "pooled": drainer.counts["pooled"], "errors": errors}))
"""


def test_under_gevent_a_winning_hedge_s_loser_goes_back_to_the_pool() -> None:
    """gevent's LifoQueue has no ``mutex``: at every hedge that won, pooling the loser's connection
    raised AttributeError (logged as an ERROR with its traceback), the connection was closed and the
    next hedge made a new one (41 connections for 80 attempts), and a pool slot was lost for good."""
    server = ScriptedServer(first_of_a_path_late(0.15))
    try:
        done = run_script(HEDGED_UNDER_GEVENT, server.url + "/")
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        connections = server.connections()
    finally:
        server.close()
    assert result["statuses"] == [200] * 8
    assert result["errors"] == []
    assert result["pooled"] == 8
    assert connections <= 3, connections  # the first call's two; a loser still draining at a call's start: one more
