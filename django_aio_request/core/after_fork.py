"""What a forked child renews in objects the parent made: a lock another thread of the parent held at
the fork stays held in the child for ever, and state about the parent's calls in flight is not the
child's. (gunicorn --preload forks a master whose threads may have made calls.)"""

import os
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["renewed_in_forked_child"]

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
