"""Synthetic status codes, the same numbers aio-request uses on the wire."""

from typing import Final

#: The attempt ended by its deadline (or the deadline was too short to try).
TIMEOUT: Final = 408
#: More redirects than the request allows.
TOO_MANY_REDIRECTS: Final = 488
#: The network failed: refused, reset, DNS, garbage instead of HTTP.
NETWORK_ERROR: Final = 489
#: The attempt was abandoned by its strategy (another attempt won); never returned to callers.
CANCELLED: Final = 499
#: An open circuit breaker answered instead of the endpoint.
CIRCUIT_BREAKER_OPEN: Final = 502
