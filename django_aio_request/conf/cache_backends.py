"""Which of the cache backends the checks know a ``BACKEND`` is: named, or derived from.

The checks judge the breakers' shared cache by its backend (per process, a lossy ``incr``, its
socket timeouts' option names, its client library). Matched by the dotted path alone, a subclass
passed every one of them: django-prometheus's ``LocMemCache``, which counts in each process apart as
Django's does, had no W002, and a one-line ``class MyRedis(RedisCache)`` no W010 (a review).
"""

from collections.abc import Collection

from django.utils.module_loading import import_string

__all__ = ["nearest_known"]


def nearest_known(backend: object, known: Collection[str]) -> object:
    """The dotted path in ``known`` that ``backend`` (a ``BACKEND`` value) is, or the nearest of its
    base classes in ``known``; ``backend`` itself when it is neither, or cannot be imported (another
    check reports that: E008)."""
    if not isinstance(backend, str) or backend in known:
        return backend
    try:
        found = import_string(backend)
    except KeyboardInterrupt:
        raise
    except BaseException:  # whatever importing it raises: E008 (checks.py) names it
        return backend
    if not isinstance(found, type):
        return backend
    for base in found.__mro__[1:]:
        dotted = f"{base.__module__}.{base.__qualname__}"
        if dotted in known:
            return dotted
    return backend
