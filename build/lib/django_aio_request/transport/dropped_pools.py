"""Connections of a pool its manager dropped are closed at once, not when the garbage collector runs.

A urllib3 ``PoolManager`` keeps pools for a bounded number of hosts (the transport: 16; calls reach
more through redirects) and, in urllib3 2.x, drops the least recently used one without closing it:
a finalizer closes its idle sockets when the garbage collector frees the pool, and a reference
cycle (an exception's traceback) can put that off until the next ``gc.collect()``. Closing the
dropped pool outright would fail a call that had just picked it (its next ``_get_conn`` raises
``ClosedPoolError``). So a dropped pool is *retired*: its idle connections are closed now, it stays
usable, and every connection given back to it later is closed instead of kept.
"""

import contextlib
import queue
from typing import Any

__all__ = ["RetiringPoolMixin", "retire_dropped_pools"]


class RetiringPoolMixin:
    """For a urllib3 connection pool class: :meth:`retire` closes its idle connections, and keeps none after."""

    _retired = False
    pool: Any  # urllib3's queue of connections (None in a free slot), or None once the pool is closed

    def retire(self) -> None:
        self._retired = True
        self._close_idle()

    def _put_conn(self, conn: Any) -> None:
        if self._retired:
            self._give_back_slot()
            if conn:
                conn.close()
            return
        super()._put_conn(conn)  # type: ignore[misc]
        if self._retired:  # retired while the connection went back: it may have missed the sweep
            self._close_idle()

    def _close_idle(self) -> None:
        waiting = self.pool
        if waiting is None:
            return
        taken = 0
        while True:
            try:
                conn = waiting.get(block=False)
            except queue.Empty:
                break
            taken += 1
            if conn:
                with contextlib.suppress(Exception):  # best effort: a socket already gone is fine
                    conn.close()
        for _ in range(taken):  # the slots stay, empty: a call that still uses the pool makes a new connection
            self._give_back_slot()

    def _give_back_slot(self) -> None:
        waiting = self.pool
        if waiting is not None:
            with contextlib.suppress(queue.Full):
                waiting.put(None, block=False)


def _retire(pool: Any) -> None:
    retire = getattr(pool, "retire", None)
    if retire is not None:
        retire()


def retire_dropped_pools(manager: Any) -> None:
    """Have ``manager`` (a urllib3 ``PoolManager`` or ``ProxyManager``) retire each pool it drops."""
    manager.pools.dispose_func = _retire
