"""A WSGI app for gunicorn in tests: ``/head`` answers with ``Content-Length: 11`` and a body (which
a server must not send to ``HEAD``: gunicorn 23.0 sends it anyway, a moment after the head), any
other path ``answer for <path>``."""

from collections.abc import Callable, Iterable


def wsgi(environ: dict[str, object], start_response: Callable[..., object]) -> Iterable[bytes]:
    path = str(environ["PATH_INFO"])
    if path == "/head":
        start_response("200 OK", [("Content-Length", "11")])
        return [b"hello world"]
    body = b"answer for " + path.encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
