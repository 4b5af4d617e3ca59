import gc
import sys
from collections.abc import Callable, Iterator

import pytest

from django_aio_request import Client, RequestsTransport
from tests.support import postgres
from tests.support.loopback import LoopbackServer, clients

_ports_used: set[int] = set()


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    """A real HTTP server on loopback, new for each test, on a port no earlier test's server had.

    Metrics are labelled by endpoint and live for the whole process: a port reused by the OS would
    let one test see another's series.
    """
    srv = LoopbackServer()
    held = []
    while srv.port in _ports_used:
        held.append(srv)  # keep it open so the OS cannot hand out the same port again at once
        srv = LoopbackServer()
    for old in held:
        old.close()
    _ports_used.add(srv.port)
    yield srv
    srv.close()


@pytest.fixture
def gc_off() -> Iterator[None]:
    """The garbage collector off for the test: what the code must close or free, it frees itself,
    not the collector (descriptors, answers kept by reference cycles)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.fixture(autouse=True)
def _switch_interval() -> Iterator[None]:
    """Load shedding sets the interpreter's switch interval (SHEDDING["SWITCH_INTERVAL"]): each test
    starts from the interpreter's own, and what one test's limiter set does not leak into the next."""
    interval = sys.getswitchinterval()
    yield
    sys.setswitchinterval(interval)


@pytest.fixture(autouse=True)
def _no_cache_marked_unanswered() -> None:
    """A cache whose rounds failed in one test (or whose first read a build gave up waiting for) is not
    waited for by the builds of the next ones until a round of it reads (breaker/cache_store.py): each
    test starts with none so marked, as a new process does."""
    from django_aio_request.breaker import cache_store

    cache_store._late_aliases.clear()


@pytest.fixture(autouse=True)
def _no_earlier_endpoints_series() -> None:
    """Each test starts with none of the client series earlier tests made, as a new process does.

    The client's metrics are labelled by endpoint, and almost every test calls a server of its own:
    a worker of the suite gathered 76,000 exported lines (12 MB), and every scrape of ``/metrics``
    took about 3.5 s to make and parse. The server side's series and the breaker's are kept: their
    labels do not grow with the tests."""
    from django_aio_request.metrics import client as client_metrics

    for family in client_metrics.FAMILIES:
        family.clear()


@pytest.fixture
def make_client(server: LoopbackServer) -> Iterator[Callable[..., Client]]:
    """Builds clients (``django_aio_request.setup`` keywords) for the test's ``server``; closes them after."""
    with clients(server.url) as make:
        yield make


@pytest.fixture
def transport() -> Iterator[RequestsTransport]:
    """A default transport, closed after the test."""
    made = RequestsTransport()
    yield made
    made.close()


# The files whose tests take longest (seconds, summed over a file, `--durations=0` on 2026-12-06),
# longest first. `make test` runs the suite with pytest-xdist's `--dist loadfile`, which hands whole
# files to its workers in collection order: test_shedding_servers.py, 130 s alone, was collected
# near the end and could start when the others were nearly done, idle while it ran (the suite took
# 345 s where its tests' time over 4 workers was 297 s). Run first, the long files overlap and the
# short ones fill in after them. A file not listed runs in its usual place (tests/test_suite_order.py
# checks that every one listed exists).
LONGEST_FIRST = (
    "tests/server/test_shedding_servers.py",  # 130 s
    "tests/server/test_priority_worker.py",  # 59
    "tests/app/test_breaker_publisher.py",  # 53
    "tests/benchmarks/test_benchmarks_run.py",  # 52
    "tests/strategies/test_parallel_strategy.py",  # 48
    "tests/conf/test_settings_checks.py",  # 32
    "tests/docs/test_references.py",  # 31
    "tests/server/test_priority_worker_releases.py",  # 30
    "tests/end_to_end/test_demo_browser.py",  # 30
    "tests/server/test_database.py",  # 30
    "tests/app/test_named_clients.py",  # 29
    "tests/breaker/test_cache_store.py",  # 25
    "tests/transport/test_requests_transport.py",  # 25
    "tests/metrics/test_metrics.py",  # 24
    "tests/end_to_end/test_demo_chain.py",  # 22
    "tests/server/test_database_servers.py",  # 22
    "tests/end_to_end/test_demo_ports.py",  # 22
)


@pytest.hookimpl(trylast=True)  # after pytest-django's own ordering, which this keeps within a file
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    postgres.collection_modifyitems(items)
    rank = {path: number for number, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.partition("::")[0], len(rank)))  # stable: the rest as collected


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    postgres.runtest_setup(item)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop this process's breaker publisher before the test's fixtures are torn down. A test that
    built a client with a breaker started it, and its rounds write to the test database from their
    own thread: SQLite's shared-cache memory database (the tests' default) refuses a flush at once
    while one writes ("database table is locked", where a real database waits), and the failed flush
    left pytest-django's blocks in place for the rest of the worker's tests. The next client built
    starts it again."""
    from django_aio_request import breaker_publisher

    breaker_publisher.publisher.stop()
