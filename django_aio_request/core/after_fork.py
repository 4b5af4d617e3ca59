"""What a forked child renews in objects the parent made: a lock another thread of the parent held at
the fork stays held in the child for ever, and state about the parent's calls in flight is not the
child's. (gunicorn --preload forks a master whose threads may have made calls.)"""

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["ForkWaits", "renewed_in_forked_child"]

T = TypeVar("T")

_renewals: list[tuple["weakref.WeakSet[Any]", Callable[[Any], None]]] = []


def renewed_in_forked_child(renew: Callable[[T], None]) -> Callable[[T], None]:
    """A function that registers an instance: in every forked child, ``renew(instance)`` runs for each
    registered instance still alive (held weakly), before the child runs anything else."""
    instances: weakref.WeakSet[Any] = weakref.WeakSet()
    _renewals.append((instances, renew))
    return instances.add


def _after_fork_in_child() -> None:
    for instances, renew in _renewals:
        for instance in list(instances):
            renew(instance)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class ForkWaits:
    """A lock held around work a fork must not copy half done (an import, a database client's
    connect): ``os.fork()`` waits for it, at most ``wait`` seconds, and the child gets it anew, free.
    Use it as ``with guard:`` around the work."""

    def __init__(self, wait: float) -> None:
        self.wait = wait
        self._lock = threading.Lock()
        self._held = False
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(
                before=self._before, after_in_parent=self._after_in_parent, after_in_child=self._after_in_child
            )

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()

    def _before(self) -> None:
        self._held = self._lock.acquire(timeout=self.wait)

    def _after_in_parent(self) -> None:
        if self._held:
            self._held = False
            self._lock.release()

    def _after_in_child(self) -> None:
        self._lock, self._held = threading.Lock(), False
