"""prometheus-client, optional: metric families that are no-ops without it, and sharing with aio-request.

The metrics live on prometheus_client's default registry, so django-prometheus's ``/metrics`` view
(or ``prometheus_client.start_http_server``) exposes them. Without prometheus-client installed
(``pip install django-aio-request[metrics]``) every metric here is a no-op.

``aio_request_latency``, ``aio_request_transport_latency`` and ``aio_request_server_latency`` have
aio-request's names, help texts, labels and buckets, so a process running both libraries shares
one metric of each (whichever library is imported first creates it, the other uses it): see
:class:`_Shared`. The metrics themselves are defined by their users: ``client.py``, ``breaker.py``
and ``server.py`` beside this module.
"""

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from django_aio_request.metrics.deferred import flush_all


class Counter(Protocol):
    def labels(self, *values: str, **labels: str) -> "Counter": ...

    def inc(self, amount: float = 1) -> None: ...


class Child(Protocol):
    """One labelled series: a counter's, a gauge's or a histogram's."""

    def inc(self, amount: float = 1) -> None: ...

    def dec(self, amount: float = 1) -> None: ...

    def set(self, value: float) -> None: ...

    def observe(self, amount: float) -> None: ...


class _NoOpCounter:
    def labels(self, *values: str, **labels: str) -> "_NoOpCounter":
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass

    def clear(self) -> None:
        pass


_NO_OP = _NoOpCounter()


def counter(name: str, documentation: str, label: str | None = None, values: tuple[str, ...] = ()) -> Counter:
    if _prometheus is None:
        return _NoOpCounter()
    if label is None:
        unlabelled: Counter = _prometheus.Counter(name, documentation)
        return unlabelled
    counter: Counter = _prometheus.Counter(name, documentation, [label])
    for value in values:  # exported at 0 from the start, so rates and alerts work before the first event
        counter.labels(**{label: value})
    return counter


try:
    import prometheus_client

    _prometheus: Any = prometheus_client
except ImportError:  # the optional extra is not installed
    _prometheus = None

ENABLED = _prometheus is not None
#: prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set when it was imported):
#: each process has values of its own, and a forked child's start at 0 (see metrics/breaker.py).
MULTIPROCESS = ENABLED and _prometheus.values.ValueClass is not _prometheus.values.MutexValue


def _check_multiprocess_directory() -> None:
    """Fail with the cause, not with prometheus_client's ``FileNotFoundError .../counter_<pid>.db``
    from the first metric made, which ``manage.py check`` and every request died of."""
    if not MULTIPROCESS:
        return
    # As prometheus_client reads them: the upper-case name when it is set at all (even empty), else
    # the old lower-case one.
    name = "PROMETHEUS_MULTIPROC_DIR" if "PROMETHEUS_MULTIPROC_DIR" in os.environ else "prometheus_multiproc_dir"
    directory = os.environ.get(name)
    if directory is None:
        return
    if not directory:
        raise RuntimeError(
            f"{name} is set but empty: prometheus_client would write each process's metric files into the"
            " current directory. Set it to an empty directory made for them (docs/metrics.md, multiprocess mode)"
        )
    if not os.path.isdir(directory):
        raise RuntimeError(
            f"{name} is {directory!r}, which is not a directory: prometheus_client keeps each process's"
            " metrics in files there. Create it (empty) before the processes start (docs/metrics.md,"
            " multiprocess mode)"
        )


_check_multiprocess_directory()


logger = logging.getLogger(__name__)

_follow_lock = threading.Lock()  # a family starts following another collector once


def _after_fork_in_child() -> None:
    global _follow_lock
    _follow_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)

# Labelled metrics used on every call and request: children are cached by label values (a dict
# lookup instead of prometheus_client's locked labels()), which is safe because every label set is
# bounded. A caller's own keys (cached()/cache(): raw values it maps to labels) are at most MAX_KEYS,
# and their caller keeps them small (metrics/server.py caches no long raw header).

#: aio-request's buckets, for its three latency histograms.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.75,
           1.0, 5.0, 10.0, 15.0, 20.0)  # fmt: skip


class Family:
    """A labelled metric with a cache of its children (``labels(*values)``, positional only)."""

    __slots__ = ("_by_key", "_children", "_labelnames", "_name", "_own", "_shared", "_target")

    MAX_KEYS = 4096  # entries of the cache by caller's key (cached()/cache()); misses past it are not kept

    def __init__(self, own: Any, name: str, labelnames: tuple[str, ...], *, shared: bool = False) -> None:
        self._own = own
        self._name = name
        self._labelnames = labelnames
        self._shared = shared
        self._target = own
        self._children: dict[tuple[str, ...], Child] = {}
        self._by_key: dict[Any, Child] = {}

    def labels(self, *values: str) -> Child:
        if self._shared and _registered.get(self._name, self._own) is not self._target:
            self._follow()
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._target.labels(*values)
        return child

    def label_sets(self) -> list[tuple[str, ...]]:
        """The label values of every child this family has handed out (through :meth:`labels`)."""
        return list(self._children)

    def cached(self, key: Any) -> Child | None:
        """The child cached under the caller's own ``key`` (raw values a caller maps to labels), or None."""
        if self._shared and _registered.get(self._name, self._own) is not self._target:
            self._follow()
        return self._by_key.get(key)

    def cache(self, key: Any, child: Child) -> Child:
        if len(self._by_key) < self.MAX_KEYS:
            self._by_key[key] = child
        return child

    def clear(self) -> None:
        """Forget every series, as a new process starts with none (the tests: each calls servers of
        its own, and their series, labelled by endpoint, would pile up for the process's life)."""
        self._own.clear()
        if self._target is not self._own:
            self._target.clear()
        self._children = {}
        self._by_key = {}

    def _follow(self) -> None:
        """Record into aio-request's collector of the same name once one is registered (see _Shared),
        with what ours recorded until then added to it."""
        with _follow_lock:
            found = _registered.get(self._name)
            if found is None or found is self._target or not _compatible(found, self._own):
                return
            if self._target is self._own and not MULTIPROCESS:
                # Without this, the counts recorded before ``import aio_request`` were no longer
                # exported (ours is not, once the name is taken) and the series started again at 0.
                # In multiprocess mode they are not lost: values live in the process's file, keyed
                # by name and labels, and aio-request's series read ours from it when made.
                _add_into(found, self._own, self._children)
            self._target = found
            self._children = {}
            self._by_key = {}

    def follow(self) -> bool:
        """For a shared family, whether another collector holds its name: ours is then not exported,
        and records into that one from now on, what it recorded before added, when compatible."""
        if _registered.get(self._name) is None:
            return False
        if _registered[self._name] is not self._target:
            self._follow()
        return True


def _compatible(found: Any, own: Any) -> bool:
    return type(found) is type(own) and tuple(getattr(found, "_labelnames", ())) == tuple(own._labelnames)


def _add_into(found: Any, own: Any, children: Mapping[tuple[str, ...], Any]) -> None:
    """Add what the series of ``own`` (our histogram, its ``children``) recorded to the same series
    of ``found``: per bucket, and the sum (prometheus-client has no public way to add to a histogram)."""
    if list(getattr(found, "_upper_bounds", ())) != list(own._upper_bounds):
        logger.warning("another %s with other buckets took the name: what was recorded before is not in it", own._name)
        return
    for values, mine in list(children.items()):
        theirs = found.labels(*values)
        for bucket, into in zip(mine._buckets, theirs._buckets, strict=True):
            into.inc(bucket.get())
        theirs._sum.inc(mine._sum.get())


class _Shared:
    """Exports our histograms of aio-request's names unless another collector registered the name.

    Ours are not registered under their names: aio-request registers its own at import without a
    duplicate check, so claiming a name would make ``import aio_request`` fail after us. This
    collector claims no name (``describe()`` is empty) and collects ours while nobody else holds
    the name; from the moment aio-request does, :class:`Family` records into its collector instead,
    with what ours had recorded added to it (at the family's next record, or the next collection).
    """

    def __init__(self) -> None:
        self.families: list[Family] = []

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        # Collected before every collector registered after this module's import (ours, and
        # aio-request's when imported later), so a scrape sees every request that has finished,
        # and a family that had nothing to record since aio-request's import has handed what it
        # recorded to aio-request's collector, which is collected after this one.
        flush_all()
        for family in self.families:
            if not family.follow():
                yield from family._own.collect()


def family(kind: str, name: str, documentation: str, labelnames: tuple[str, ...], **options: Any) -> Family:
    if _prometheus is None:
        return _NO_OP  # type: ignore[return-value]
    factory = getattr(_prometheus, kind)
    existing = _registered.get(name)
    if existing is not None:  # registered already (aio-request was imported first): share it
        probe = factory(name, documentation, labelnames, registry=None, **options)
        if _compatible(existing, probe):
            return Family(existing, name, labelnames)
        raise ValueError(f"a different metric named {name} is registered already: {existing!r}")
    if name in _AIO_REQUEST_NAMES:
        shared = Family(
            factory(name, documentation, labelnames, registry=None, **options), name, labelnames, shared=True
        )
        _shared.families.append(shared)
        return shared
    return Family(factory(name, documentation, labelnames, **options), name, labelnames)


_AIO_REQUEST_NAMES = ("aio_request_latency", "aio_request_transport_latency", "aio_request_server_latency")
_shared = _Shared()
_registered: Mapping[str, Any] = {}
if _prometheus is not None:
    _registered = _prometheus.REGISTRY._names_to_collectors  # read only: name -> collector
    _prometheus.REGISTRY.register(_shared)
