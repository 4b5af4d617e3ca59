"""Header names of the wire format shared with aio-request."""

from typing import Final

X_REQUEST_TIMEOUT: Final = "X-Request-Timeout"
X_REQUEST_PRIORITY: Final = "X-Request-Priority"
X_SERVICE_NAME: Final = "X-Service-Name"
#: The longest X-Service-Name a server running this app keeps as a metric label (metrics/server.py):
#: a longer name is counted as "other" there, so neither setup() nor the settings take one.
MAX_SERVICE_NAME_LENGTH: Final = 64
X_DO_NOT_RETRY: Final = "X-Do-Not-Retry"
X_CIRCUIT_BREAKER: Final = "X-Circuit-Breaker"
CONTENT_TYPE: Final = "Content-Type"
LOCATION: Final = "Location"


def service_name(raw: str | None) -> str | None:
    """The calling service an ``X-Service-Name`` value names, as the server side compares it with
    ``KNOWN_SERVICES`` and labels metrics by it: blanks (space, tab) around it removed, lower-cased;
    None when absent, empty or not ASCII. One rule for the priority policy, the metrics and
    ``PriorityThreadWorker``: the policy stripped Unicode whitespace and separators (``billing\\xa0``,
    ``billing\\x1c``) and trusted the name the metrics labelled ``other``."""
    if raw is None:
        return None
    name = raw.strip(" \t")
    return name.lower() if name and name.isascii() else None
