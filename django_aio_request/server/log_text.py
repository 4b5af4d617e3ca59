"""Text from a request (its path) made safe to put in a log line.

A path is the client's: percent-decoded by the server, it may hold a newline, which forged a log line
of its own after ours (``/x%0a9999 CRITICAL django.security: ...``), or terminal escapes. Escaped as
Django (5.2.2 on) escapes the path in its own ``django.request`` lines, so both say the same.
"""

__all__ = ["escaped"]


def escaped(text: str) -> str:
    """``text`` with control characters, backslashes and anything not ASCII written as Python escapes."""
    return text.encode("unicode_escape").decode("ascii")
