"""Who may claim which priority: ``AIO_REQUEST["SHEDDING"]["PRIORITY_POLICY"]``.

``X-Request-Priority`` is set by the caller, so any caller can claim ``high`` and take the place
kept for high priority. The policy caps the priority a request is served (and calls on) with:

* ``"any"`` (the default): every caller's claim is honoured, as aio-request does;
* ``"known_services"``: callers whose ``X-Service-Name`` is in ``KNOWN_SERVICES`` keep their claim;
  any other caller gets at most ``UNTRUSTED_PRIORITY`` (default ``normal``);
* a callable (a dotted path in settings) given the request and the claimed priority, returning the
  priority to use; it may only lower the claim (a higher answer is capped at the claim). It may be
  an ``async def`` function. Each runs where Django would run a view of its kind, so either may use
  the ORM: on the async path (ASGI) a plain function runs in a thread (``sync_to_async``, thread
  sensitive as Django's own adapters: on the event loop a database query raised
  ``SynchronousOnlyOperation``) and an ``async def`` one is awaited; on the sync path a plain
  function is called and an ``async def`` one runs through ``async_to_sync``.

``X-Service-Name`` is a header like any other: ``"known_services"`` trusts it, so it keeps out
callers that do not pretend (a batch job, a misconfigured client), not an attacker who can reach
the service and set headers. See docs/security.md.
"""

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import async_to_sync, iscoroutinefunction, sync_to_async

from django_aio_request.core.headers import service_name
from django_aio_request.core.priority import Priority

__all__ = [
    "ANY",
    "KNOWN_SERVICES",
    "POLICY_NAMES",
    "RANK",
    "AsyncPriorityPolicy",
    "PriorityPolicy",
    "build_async_policy",
    "build_policy",
]

ANY = "any"
KNOWN_SERVICES = "known_services"
POLICY_NAMES = (ANY, KNOWN_SERVICES)
META_SERVICE_NAME = "HTTP_X_SERVICE_NAME"
#: Priorities in the order they are served: high first (0).
RANK = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}

#: The policy as the middleware uses it: the request (an ``HttpRequest``) and the claimed priority
#: in, the priority to serve it with out; None for ``"any"`` (nothing to do on the request path).
PriorityPolicy = Callable[[Any, Priority], Priority]
#: The policy as the middleware's async path awaits it (a callable of the settings only).
AsyncPriorityPolicy = Callable[[Any, Priority], Awaitable[Priority]]


def lower(claimed: Priority, cap: Priority) -> Priority:
    """The lower of two priorities."""
    return claimed if RANK[claimed] >= RANK[cap] else cap


def build_policy(
    policy: str | Callable[..., Any], known_services: frozenset[str] | None, untrusted: Priority
) -> PriorityPolicy | None:
    """The policy named in settings as a function of (request, claimed priority); None for ``"any"``."""
    if policy == ANY:
        return None
    if policy == KNOWN_SERVICES:
        known = known_services or frozenset()

        def known_only(request: Any, claimed: Priority) -> Priority:
            if claimed is untrusted or RANK[claimed] > RANK[untrusted]:
                return claimed  # at or below the cap: nothing to check
            name = service_name(request.META.get(META_SERVICE_NAME))
            if name is not None and name in known:
                return claimed
            return untrusted

        return known_only
    if not callable(policy):
        raise ValueError(f"unknown priority policy {policy!r}")
    custom = async_to_sync(policy) if _is_async(policy) else policy

    def checked(request: Any, claimed: Priority) -> Priority:
        return _capped(policy, custom(request, claimed), claimed)

    return checked


def build_async_policy(policy: str | Callable[..., Any]) -> AsyncPriorityPolicy | None:
    """The policy as the async path awaits it, for a callable; None for ``"any"`` and
    ``"known_services"``, whose sync form only reads a header and is called on the event loop."""
    if not callable(policy):
        return None
    custom = policy
    if _is_async(custom):

        async def awaited(request: Any, claimed: Priority) -> Priority:
            return _capped(custom, await custom(request, claimed), claimed)

        return awaited

    def checked(request: Any, claimed: Priority) -> Priority:
        return _capped(custom, custom(request, claimed), claimed)

    # Thread sensitive, as Django runs a sync view or middleware under ASGI: the ORM's connection
    # is the request's, in the thread that runs its other sync code.
    return sync_to_async(checked, thread_sensitive=True)


def _is_async(policy: Callable[..., Any]) -> bool:
    """An ``async def`` function, or an object whose ``__call__`` is one (as asgiref tells them)."""
    return iscoroutinefunction(policy) or iscoroutinefunction(type(policy).__call__)


def _capped(policy: Callable[..., Any], answer: Any, claimed: Priority) -> Priority:
    if not isinstance(answer, Priority):
        raise TypeError(f"the priority policy {policy!r} returned {answer!r}, not a Priority")
    return lower(answer, claimed)
