"""A Django cache backend whose every call hangs (for ``seconds``, OPTIONS, default 30), as a
blackholed Redis without socket timeouts does: for tests of what a hanging cache costs a caller.
``release()`` ends every hang at once (at teardown)."""

import threading
from typing import Any

from django.core.cache.backends.base import BaseCache

_released = threading.Event()
calls: list[str] = []  # every method called, in order


def release() -> None:
    _released.set()


def arm() -> None:
    _released.clear()
    calls.clear()


class HangingCache(BaseCache):
    def __init__(self, location: str, params: dict[str, Any]) -> None:
        super().__init__(params)
        self.seconds = float(params.get("OPTIONS", {}).get("seconds", 30))

    def _hang(self, name: str) -> None:
        calls.append(name)
        _released.wait(self.seconds)

    def add(self, key: Any, value: Any, timeout: Any = None, version: Any = None) -> bool:
        self._hang("add")
        return False

    def get(self, key: Any, default: Any = None, version: Any = None) -> Any:
        self._hang("get")
        return default

    def set(self, key: Any, value: Any, timeout: Any = None, version: Any = None) -> None:
        self._hang("set")

    def touch(self, key: Any, timeout: Any = None, version: Any = None) -> bool:
        self._hang("touch")
        return False

    def delete(self, key: Any, version: Any = None) -> bool:
        self._hang("delete")
        return False

    def get_many(self, keys: Any, version: Any = None) -> dict[str, Any]:
        self._hang("get_many")
        return {}

    def delete_many(self, keys: Any, version: Any = None) -> None:
        self._hang("delete_many")

    def incr(self, key: Any, delta: int = 1, version: Any = None) -> int:
        self._hang("incr")
        raise ValueError(key)

    def clear(self) -> None:
        self._hang("clear")
