"""pytest fixtures for testing code that calls ``clients["name"]`` (see docs/testing.md).

Loaded automatically through the ``pytest11`` entry point when django-aio-request is installed,
so in every project of that environment. It imports nothing of the package, nor Django, requests or
prometheus_client, until a fixture is used (the package's names are imported when first asked for),
so it is harmless in projects that do not use them
(``tests/app/test_testing_helpers.py::test_the_plugin_leaves_a_project_that_does_not_use_the_package_alone``).
"""

import contextlib
import inspect
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Literal

import pytest

if TYPE_CHECKING:
    from django_aio_request.core.client import Client
    from django_aio_request.core.context import Context
    from django_aio_request.core.priority import Priority
    from django_aio_request.testing import FakeDownstream


# The item's attribute holding the exception its call phase failed with (pytest_runtest_makereport),
# for the fixture's end; set only on an item whose test set up this plugin's fixture (a project's own
# fixture of the same name kept every failing test's frames for the session: 1 GB over 1,000 tests,
# a review). Attributes, not pytest's stash: the plugin loads in every project of an environment
# where the package is installed, whatever its pytest.
_FAILED_WITH = "_django_aio_request_failed_with"
_WANTS_FAILURE = "_django_aio_request_wants_failure"


class AioRequestFixture:
    """What the ``aio_request`` fixture gives; everything it changes is undone after the test."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self._stack = stack
        self._fakes: list[FakeDownstream] = []

    def fake(self, name: str, *, allow_unexpected: bool = False) -> "FakeDownstream":
        """Point ``clients[name]`` at a new scripted fake (:func:`django_aio_request.testing.fake_client`):
        a call no route answers fails the test, at its end if the code under test caught the error,
        unless ``allow_unexpected``."""
        from django_aio_request.testing import fake_client

        fake = self._stack.enter_context(fake_client(name, allow_unexpected=allow_unexpected))
        self._fakes.append(fake)
        return fake

    def _test_failed_with(self, failure: BaseException) -> None:
        """The test failed with ``failure``: an unexpected call's error it holds is not repeated at
        the end (a test that failed with one was failed again at its teardown, a review)."""
        for fake in self._fakes:
            fake._seen(failure)

    def force_breaker(self, name_or_client: "str | Client", state: Literal["open", "closed"]) -> "Client":
        """Force a client's circuit open or closed (:func:`django_aio_request.testing.force_breaker`)."""
        from django_aio_request.testing import force_breaker

        return self._stack.enter_context(force_breaker(name_or_client, state))

    def serving(self, *, timeout: float | None = None, priority: "str | Priority | None" = None) -> "Context":
        """Set the deadline and priority until the end of the test (:func:`django_aio_request.testing.serving`)."""
        from django_aio_request.testing import _serve_until_undone

        # Not the serving() block: the test may call this from async code or another thread, and
        # the block's exit at teardown, in the test's own context, failed there (_serve_until_undone).
        context, undo = _serve_until_undone(timeout=timeout, priority=priority, until_the_test_ends=True)
        self._stack.callback(undo)
        return context

    @staticmethod
    def headers(*, timeout: float | None = None, priority: "str | Priority | None" = None) -> dict[str, str]:
        """Headers for Django's test client (:func:`django_aio_request.testing.request_headers`)."""
        from django_aio_request.testing import request_headers

        return request_headers(timeout=timeout, priority=priority)


@pytest.fixture
def aio_request(request: pytest.FixtureRequest) -> Iterator[AioRequestFixture]:
    """Fake named clients, force breakers, set deadlines and priorities; all undone after the test."""
    if "_django_db_helper" in request.fixturenames:
        # The test uses pytest-django's database (db, transactional_db, live_server...), whose
        # teardown (rollback or flush) must not run under a deadline set here: set it up first, so
        # that it is torn down after this fixture, whatever the order the test names them in. Only
        # when the test asked for the database: requesting it otherwise would give it access.
        request.getfixturevalue("_django_db_helper")
    setattr(request.node, _WANTS_FAILURE, True)
    undo: list[Callable[[], None]] = []
    try:
        with contextlib.ExitStack() as stack:
            fixture = AioRequestFixture(stack)
            yield fixture
            failure = getattr(request.node, _FAILED_WITH, None)
            if failure is not None:
                fixture._test_failed_with(failure)
            test = getattr(request, "function", None)
            # The test's own code, inside a decorator's functools.wraps (its wrapper's was named).
            code = getattr(inspect.unwrap(test) if callable(test) else None, "__code__", None)
            if code is not None and fixture._fakes:
                # The blocks end below, at the stack's end: a warning of theirs (FakeReplacedWarning)
                # names the test's line, not this file's (a review), as for a decorated test.
                from django_aio_request.testing import _decorated

                undo.append(_decorated.set_until_undone((code.co_filename, code.co_firstlineno)))
    finally:
        for set_back in undo:
            set_back()
        # The failure's traceback holds the test's frames: not kept for the session.
        for name in (_WANTS_FAILURE, _FAILED_WITH):
            if hasattr(request.node, name):
                delattr(request.node, name)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep the exception the test itself failed with, for the ``aio_request`` fixture's end, and for
    a ``fake_client()`` block a project's own fixture ends (``testing._test_failure``, until the end
    of the test's teardown; only once the package's testing helpers are in use)."""
    yield
    if call.when == "call" and call.excinfo is not None:
        if getattr(item, _WANTS_FAILURE, False):
            setattr(item, _FAILED_WITH, call.excinfo.value)
        testing = sys.modules.get("django_aio_request.testing")
        if testing is not None:
            testing._test_failure = call.excinfo.value  # type: ignore[attr-defined]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    """The test's failure is known to ``fake_client()`` blocks until its fixtures are torn down."""
    try:
        yield
    finally:
        testing = sys.modules.get("django_aio_request.testing")
        if testing is not None:
            testing._test_failure = None  # type: ignore[attr-defined]
