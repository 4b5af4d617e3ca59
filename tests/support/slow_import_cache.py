"""A cache backend module that takes a second to import, as a large library may: for the test of a
fork() during the import (tests/breaker/test_cache_store.py)."""

import time

from django.core.cache.backends.locmem import LocMemCache

time.sleep(1.0)


def make() -> LocMemCache:
    return LocMemCache("slow-import", {})
