"""A WSGI app for gunicorn in tests. ``/head`` answers with ``Content-Length: 11`` and a body, and
``/redirect`` with a 302 to ``/ok/redirected`` and a page: bodies a server must not send to ``HEAD``,
which gunicorn 23.0 sends anyway, a moment after the head. Any other path: ``answer for <path>``."""

from collections.abc import Callable, Iterable


def wsgi(environ: dict[str, object], start_response: Callable[..., object]) -> Iterable[bytes]:
    path = str(environ["PATH_INFO"])
    if path == "/head":
        start_response("200 OK", [("Content-Length", "11")])
        return [b"hello world"]
    if path == "/redirect":
        page = b"<p>Moved to <a href='/ok/redirected'>/ok/redirected</a></p>"
        start_response("302 Found", [("Location", "/ok/redirected"), ("Content-Length", str(len(page)))])
        return [page]
    body = b"answer for " + path.encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
