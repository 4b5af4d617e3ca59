"""``@timeout(seconds)``: a view's own default deadline, as aio-request's ``aiohttp_timeout``.

The deadline of a request comes from its ``X-Request-Timeout`` header when it has a valid one
(the caller knows how long it will wait), else from the view's ``@timeout``, else from
``AIO_REQUEST["TIMEOUT"]``. The middleware sets the header's or the default deadline before the
URL is resolved; the default one is a :class:`DefaultDeadline`, and that type is the flag the
decorator consults: running around the view, it replaces a ``DefaultDeadline`` (or no deadline at
all: no middleware) with the view's, and leaves any other deadline (the header's, an outer
``@timeout``'s) alone. No Django import here: the decorator only touches the context.
"""

import functools
import inspect
import math
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar, Token
from typing import Any, Protocol, TypeVar

from asgiref.sync import iscoroutinefunction

from django_aio_request.conf.reader import LARGEST, SMALLEST_SECONDS
from django_aio_request.core.context import Context, _context
from django_aio_request.core.deadline import Deadline
from django_aio_request.core.headers import X_DO_NOT_RETRY

__all__ = ["DefaultDeadline", "ViewDeadline", "timeout"]

View = TypeVar("View", bound=Callable[..., Any])


class DefaultDeadline(Deadline):
    """The deadline AioRequestMiddleware gives a request without a valid ``X-Request-Timeout``
    (``AIO_REQUEST["TIMEOUT"]`` from its arrival): a view's ``@timeout`` replaces it."""

    __slots__ = ()


class ClampedDeadline(Deadline):
    """The deadline of a request whose ``X-Request-Timeout`` was cut to ``MAX_TIMEOUT``: its caller
    has time left when it passes, and a retry would meet the same cut. Its 408 says so
    (:func:`deadline_answer_headers`)."""

    __slots__ = ()


#: Where ``PriorityThreadWorker`` keeps the ``X-Request-Timeout`` it received, before it took the
#: time the request queued off it (``request.META``).
RECEIVED_TIMEOUT = "django_aio_request.received_timeout"


def deadline_answer_headers(request: Any, deadline: Deadline | None) -> dict[str, str]:
    """The headers of the 408 answered when the request's own ``deadline`` ran out below the
    middleware: ``X-Do-Not-Retry`` when ``MAX_TIMEOUT`` cut it. Without, an aio-request caller given
    5 s retried a view cancelled at a ``MAX_TIMEOUT`` of 0.5 s, and the view ran three times for one
    call. A caller whose own deadline passed retries nothing anyway, and one that sent none (the
    ``TIMEOUT`` default applied) may try again, as with aio-request's servers.

    Under ``PriorityThreadWorker`` the header the middleware reads is the clamped value less the
    time queued, below ``MAX_TIMEOUT``: the value the worker received tells (looked at on a 408
    only, nothing on the way of other requests)."""
    if type(deadline) is ClampedDeadline:
        return {X_DO_NOT_RETRY: "1"}
    received = getattr(request, "META", {}).get(RECEIVED_TIMEOUT)
    if isinstance(received, str):
        # Here: the middleware imports this module, and @timeout works without Django (no settings read).
        from django_aio_request.conf.current import current
        from django_aio_request.server.middleware import parse_timeout

        seconds = parse_timeout(received)
        if seconds is not None and seconds > current.settings.max_timeout:  # cut, as the middleware cuts
            return {X_DO_NOT_RETRY: "1"}
    return {}


class ViewDeadline(Deadline):
    """A deadline set by ``@timeout``: ``seconds`` from when the view was called."""

    __slots__ = ()


class Canceller(Protocol):
    """Cancels an async view at its deadline (the middleware's, with CANCEL_ASYNC_VIEWS_ON_TIMEOUT)."""

    def reschedule(self, deadline: Deadline) -> None:
        """Cancel at ``deadline`` (the view's ``@timeout``, while the view runs)."""

    def view_returned(self, deadline: Deadline) -> None:
        """The view that ran under ``deadline`` returned (or raised): cancel at the request's own
        deadline again, or at ``deadline`` if that is later (the view was given more time)."""


# Set by AioRequestMiddleware around async views when CANCEL_ASYNC_VIEWS_ON_TIMEOUT is on.
_canceller: ContextVar[Canceller | None] = ContextVar("django_aio_request_canceller", default=None)


class _ViewDeadline:
    """Sets the view's deadline for a block, unless a deadline other than the default is in force."""

    __slots__ = ("_seconds", "_token", "deadline", "returned")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self.deadline: ViewDeadline | None = None
        # Whether the view is over when the block ends (False: a class's sync dispatch() returned the
        # coroutine of its async handler, which runs next under _await_within's own block).
        self.returned = True

    def __enter__(self) -> "_ViewDeadline":
        current = _context.get()
        if current.deadline is None or type(current.deadline) is DefaultDeadline:
            self.deadline = ViewDeadline(time.monotonic() + self._seconds)
            self._token: Token[Context] = _context.set(Context(self.deadline, current.priority))
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.deadline is None:
            return
        _context.reset(self._token)
        if not self.returned:
            return
        # The view returned (or raised); the middleware below it and the response's rendering are
        # still to run, under the request's own deadline again, or the view's if that is later: a
        # view given more time than TIMEOUT was answered 408 when the session middleware saved its
        # changes after it, at TIMEOUT, the view's work done.
        outer = _context.get()
        if outer.deadline is not None and outer.deadline.expires_at < self.deadline.expires_at:
            _context.set(Context(self.deadline, outer.priority))


async def _await_within(seconds: float, awaitable: Awaitable[Any]) -> Any:
    """Await an async view (or the coroutine of a class's async handler) under its deadline.

    With the middleware's canceller (CANCEL_ASYNC_VIEWS_ON_TIMEOUT), the cancellation moves to the
    view's deadline while the view runs, and back when it returned: the middleware below, still to
    run, must not be cancelled at a deadline that was the view's alone. Only from async code running
    on the request's event loop: the canceller's timer lives there.
    """
    with _ViewDeadline(seconds) as applied:
        deadline = applied.deadline
        if deadline is None or (canceller := _canceller.get()) is None:
            return _rendered_within(await awaitable, deadline)
        canceller.reschedule(deadline)
        try:
            response = await awaitable
        finally:
            canceller.view_returned(deadline)
    return _rendered_within(response, deadline)


def _rendered_within(response: Any, deadline: ViewDeadline | None) -> Any:
    """``response``, rendered (if it is a ``TemplateResponse`` not yet rendered) under the view's
    deadline, whenever Django renders it.

    Django renders a ``TemplateResponse`` after the view returned (after the template-response
    middleware): a generic ``ListView``'s queryset runs only then. Under the request's deadline, a
    ``ListView`` given 5 s by ``@timeout`` was answered 408 at ``TIMEOUT`` (1 s), and one given 0.3 s
    ran its 1.5 s query in full. The render is the view's work, under the view's deadline.
    """
    if deadline is None or getattr(response, "is_rendered", True):
        return response
    render = getattr(response, "render", None)
    if not callable(render) or iscoroutinefunction(render):
        return response

    @functools.wraps(render)
    def render_within() -> Any:
        # First: the render's post-render callbacks may pickle the response (cache_page stores it
        # from there), and this closure in its __dict__ failed every such request (PicklingError).
        vars(response).pop("render", None)
        token = _context.set(Context(deadline, _context.get().priority))
        try:
            return render()
        finally:
            _context.reset(token)

    response.render = render_within  # the instance's, as Django looks it up: response.render()
    return response


def _wrap(view: Callable[..., Any], seconds: float) -> Callable[..., Any]:
    if iscoroutinefunction(view):

        @functools.wraps(view)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            return await _await_within(seconds, view(*args, **kwargs))

        async_wrapper.__aio_request_timeout__ = seconds  # type: ignore[attr-defined] # as aio-request marks views
        return async_wrapper

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _ViewDeadline(seconds) as applied:
            result = view(*args, **kwargs)
            # A class with async handlers: the view runs when its coroutine is awaited, below; had
            # this block kept its deadline as the view's after it, _await_within would find a
            # deadline other than the default in force and move no cancellation to the view's.
            applied.returned = not inspect.isawaitable(result)
        if inspect.isawaitable(result):
            # A class-based view with async handlers: dispatch() is sync and returns a coroutine,
            # which runs after dispatch() returned; give it the deadline while it runs.
            return _await_within(seconds, result)
        return _rendered_within(result, applied.deadline)

    wrapper.__aio_request_timeout__ = seconds  # type: ignore[attr-defined]
    return wrapper


def _check_seconds(seconds: object) -> float:
    if callable(seconds):
        raise TypeError("timeout() needs a number of seconds: write @timeout(5), not @timeout")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        # A Decimal or a Fraction is a number too, though not one taken (nor by AIO_REQUEST): say which are.
        raise TypeError(
            f"timeout() takes a positive, finite number of seconds (an int or a float), not {type(seconds).__name__}"
        )
    # repr() but for an int too large for one: 10**400 is no float (float() raises OverflowError,
    # math.isfinite() too) and 10**5000 has no repr (int max str digits).
    shown = (
        f"an int of {seconds.bit_length()} bits"
        if isinstance(seconds, int) and seconds.bit_length() > 64
        else repr(seconds)
    )
    if seconds <= 0 or (isinstance(seconds, float) and not math.isfinite(seconds)):
        raise ValueError(f"timeout() takes a positive, finite number of seconds, not {shown}")
    if not SMALLEST_SECONDS <= seconds <= LARGEST:
        # The range AIO_REQUEST's numbers take (conf/reader.py): 1e10 s overflow the clocks a deadline meets.
        raise ValueError(f"timeout() takes {SMALLEST_SECONDS} to {LARGEST} seconds, not {shown}")
    return float(seconds)


def timeout(seconds: float) -> Callable[[View], View]:
    """Give a view its own default deadline: ``seconds`` from when the view is called.

    Used when the request carries no valid ``X-Request-Timeout`` (a valid header's deadline wins,
    as in aio-request). Works on function views (sync and async), on view classes (it wraps their
    ``dispatch``, in place: decorating one again with another timeout raises TypeError), on methods
    of view classes, and in ``urls.py`` (a route's own timeout: decorate its ``as_view()``)::

        path("report/", timeout(30)(views.report)),
        path("items/", timeout(2)(ItemsView.as_view())),

    Nested ``@timeout`` (a decorated view decorated again in ``urls.py``, a decorated class and a
    decorated method): the outermost applies. Without ``AioRequestMiddleware`` it simply sets the
    deadline for the view.
    """
    checked = _check_seconds(seconds)

    def decorate(view: View) -> View:
        if isinstance(view, type):
            dispatch = getattr(view, "dispatch", None)
            if not callable(dispatch):
                raise TypeError(f"timeout() decorates views and view classes; {view.__name__} has no dispatch()")
            # In place, as Django's method_decorator does (a subclass changed view_class, broke
            # pickling and met __init_subclass__ and metaclass registries). So a class decorated
            # twice, with two timeouts (in urls.py, one per route), would take the last for every
            # route: that is refused, the same timeout again is nothing new.
            earlier = getattr(view.__dict__.get("dispatch"), "__aio_request_timeout__", None)
            if earlier is not None:
                if earlier == checked:
                    return view
                raise TypeError(
                    f"{view.__name__} is already decorated with @timeout({earlier:g}), and a class is decorated in"
                    f" place: @timeout({checked:g}) would apply to every route using {view.__name__}. For one"
                    f" route's timeout, decorate that route's view: timeout({checked:g})({view.__name__}.as_view())"
                )
            view.dispatch = _wrap(dispatch, checked)  # type: ignore[attr-defined]
            return view
        if not callable(view):
            raise TypeError(f"timeout() decorates views, not {type(view).__name__}")
        return _wrap(view, checked)  # type: ignore[return-value]

    return decorate
