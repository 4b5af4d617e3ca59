"""Who may claim which priority: ``AIO_REQUEST["SHEDDING"]["PRIORITY_POLICY"]``.

``X-Request-Priority`` is set by the caller, so any caller can claim ``high`` and take the place
kept for high priority. The policy caps the priority a request is served (and calls on) with:

* ``"any"`` (the default): every caller's claim is honoured, as aio-request does;
* ``"known_services"``: callers whose ``X-Service-Name`` is in ``KNOWN_SERVICES`` keep their claim;
  any other caller gets at most ``UNTRUSTED_PRIORITY`` (default ``normal``);
* a callable (a dotted path in settings) given the request and the claimed priority, returning the
  priority to use; it may only lower the claim (a higher answer is capped at the claim).

``X-Service-Name`` is a header like any other: ``"known_services"`` trusts it, so it keeps out
callers that do not pretend (a batch job, a misconfigured client), not an attacker who can reach
the service and set headers. See docs/security.md.
"""

from collections.abc import Callable
from typing import Any

from django_aio_request.core.priority import Priority

__all__ = ["ANY", "KNOWN_SERVICES", "POLICY_NAMES", "RANK", "PriorityPolicy", "build_policy"]

ANY = "any"
KNOWN_SERVICES = "known_services"
POLICY_NAMES = (ANY, KNOWN_SERVICES)
META_SERVICE_NAME = "HTTP_X_SERVICE_NAME"
#: Priorities in the order they are served: high first (0).
RANK = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}

#: The policy as the middleware uses it: the request (an ``HttpRequest``) and the claimed priority
#: in, the priority to serve it with out; None for ``"any"`` (nothing to do on the request path).
PriorityPolicy = Callable[[Any, Priority], Priority]


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
            name = request.META.get(META_SERVICE_NAME)
            if name is not None and name.strip().lower() in known:
                return claimed
            return untrusted

        return known_only
    if not callable(policy):
        raise ValueError(f"unknown priority policy {policy!r}")
    custom = policy

    def checked(request: Any, claimed: Priority) -> Priority:
        answer = custom(request, claimed)
        if not isinstance(answer, Priority):
            raise TypeError(f"the priority policy {custom!r} returned {answer!r}, not a Priority")
        return lower(answer, claimed)

    return checked
