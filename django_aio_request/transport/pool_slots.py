"""The slots of a urllib3 pool's queue (``pool.pool``, a LIFO queue of connections and empty
slots, None), moved without taking a connection out of it: an empty slot swapped for a drained
connection (connection_drainer.py), and an empty slot given back at the bottom of the stack
(attempt_sockets.py).

With the standard library's ``queue.LifoQueue`` each is done on its list under its ``mutex``, so no
thread sees the queue half moved. gevent's monkey-patching replaces ``queue.LifoQueue`` with its own,
which has no ``mutex`` (and none is needed: a greenlet is never switched out between calls that do
not wait); reaching for it raised ``AttributeError`` at every hedge that won under gunicorn's gevent
worker, the drained connection was closed, and a pool slot was lost for good (a review: a blocking
pool of 4 held 1 after three won hedges). Such a queue is moved with its own non-blocking
``get_nowait()`` and ``put_nowait()``.
"""

import queue
from typing import Any

__all__ = ["put_empty_slot_at_bottom", "swap_empty_slot"]


def _empty(slot: Any) -> bool:
    """Whether ``slot`` is an empty one: None, or a connection with no socket."""
    return slot is None or slot.sock is None


def swap_empty_slot(waiting: Any, conn: Any) -> bool:
    """Put ``conn`` on top of the queue ``waiting`` in place of its topmost empty slot (the next call
    takes it before an empty slot); False, and ``conn`` not put, if it holds none."""
    mutex = getattr(waiting, "mutex", None)
    if mutex is not None:
        with mutex:
            slots = waiting.queue
            for index in range(len(slots) - 1, -1, -1):
                if _empty(slots[index]):
                    del slots[index]
                    slots.append(conn)
                    return True
        return False
    above: list[Any] = []  # taken off the top, to go back in their order
    found = False
    try:
        while not found:
            slot = waiting.get_nowait()
            found = _empty(slot)
            if not found:
                above.append(slot)
    except queue.Empty:
        pass
    for slot in reversed(above):
        waiting.put_nowait(slot)
    if found:
        waiting.put_nowait(conn)
    return found


def put_empty_slot_at_bottom(waiting: Any) -> None:
    """Give an empty slot back to the queue ``waiting`` at its bottom, not on top (where the next
    call would take it and connect anew); nothing if the queue is full, as urllib3 does."""
    mutex = getattr(waiting, "mutex", None)
    if mutex is not None:
        with mutex:
            if 0 < waiting.maxsize <= len(waiting.queue):
                return
            waiting.queue.insert(0, None)
            waiting.unfinished_tasks += 1
            waiting.not_empty.notify()
        return
    if 0 < (waiting.maxsize or 0) <= waiting.qsize():
        return
    above: list[Any] = []
    try:
        while True:
            above.append(waiting.get_nowait())
    except queue.Empty:
        pass
    waiting.put_nowait(None)
    for slot in reversed(above):
        waiting.put_nowait(slot)
