"""Whether the transport may send an attempt's request once more by itself: the call's retry budget says.

The transport sends an idempotent request again on a fresh connection when the server closed the
kept-alive one as the request went out (transport/requests_transport.py). That is one more request
to the server, made below the strategy: a failing server that closed each kept-alive connection once
it had read the request got 2.6 requests a call with 3 sequential attempts, where the retry budget
allows at most 1.4 (2.0 with single attempts). So the call (core/client.py) names, for the attempt
running in this context, who to ask, and the budget pays for the resend as for any extra attempt.

This module imports no Django.
"""

import contextvars
from collections.abc import Callable

asker: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar(
    "aio_request_send_again", default=None
)


def may_send_again() -> bool:
    """Whether the attempt running in this context may send its request once more (always, outside
    a call whose client has a retry budget)."""
    ask = asker.get()
    return ask is None or ask()
