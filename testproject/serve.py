"""``python -m testproject.serve``: serve one demo service on 127.0.0.1.

The service is the settings module in ``DJANGO_SETTINGS_MODULE`` (``settings.demo_orders``, ...),
its port ``settings.DEMO_PORTS[settings.DEMO_SERVICE]`` unless ``--port`` says otherwise. The
server is Django's threaded WSGI server (the one behind ``runserver``, without the autoreloader),
with Nagle's algorithm off (headers and body leave in separate writes; with it on, a keep-alive
caller waits ~40 ms for a delayed ACK) and a listen backlog deep enough for hedging bursts.

SIGTERM and SIGINT stop it. With ``--exit-with-parent`` it also stops when its standard input
reaches end of file, which happens when the process that started it with a pipe there ends, however
it ends: a launcher killed with SIGKILL leaves no service behind.

``--freeze-gc`` moves every object the loaded application made to the permanent generation, so a
full garbage collection walks only what requests made since: on billing under ``benchmarks/load.py``
its pauses went from 33-74 ms to 4.5-24 ms (docs/benchmarks.md). The demo itself does not.
"""

import argparse
import gc
import io
import os
import signal
import sys
import threading
from types import FrameType

import django
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
from django.core.wsgi import get_wsgi_application


class Handler(WSGIRequestHandler):
    disable_nagle_algorithm = True


class Server(ThreadedWSGIServer):
    request_queue_size = 128  # Django's 10 drops connects when a burst of hedges arrives on a busy machine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--port", type=int, help="default: settings.DEMO_PORTS[settings.DEMO_SERVICE]")
    parser.add_argument("--exit-with-parent", action="store_true", help="stop when standard input closes")
    parser.add_argument(
        "--freeze-gc",
        action="store_true",
        help="once the application is loaded, move every object to the permanent generation (gc.freeze()),"
        " so that full collections walk only what requests made since",
    )
    args = parser.parse_args(argv)

    django.setup(set_prefix=False)
    try:
        call_command("check", stdout=io.StringIO())  # warnings go to stderr
    except SystemCheckError as error:  # the list of problems, without a traceback, as manage.py prints it
        print(error, file=sys.stderr, flush=True)
        return 1
    application = get_wsgi_application()
    if args.freeze_gc:
        gc.collect()
        gc.freeze()
    service = str(getattr(settings, "DEMO_SERVICE", "demo"))
    port = args.port or int(getattr(settings, "DEMO_PORTS", {}).get(service, 8000))
    try:
        server = Server(("127.0.0.1", port), Handler)
    except OSError as error:
        print(f"{service}: cannot listen on 127.0.0.1:{port}: {error.strerror}", file=sys.stderr, flush=True)
        return 2
    server.set_app(application)
    signal.signal(signal.SIGTERM, _stop)
    if args.exit_with_parent:
        threading.Thread(target=_stop_at_end_of_input, daemon=True, name="exit-with-parent").start()
    try:
        server.serve_forever(poll_interval=0.2)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()
    return 0


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _stop_at_end_of_input() -> None:
    # os.read, not sys.stdin: a daemon thread blocked in a buffered read holds the buffer's lock,
    # and the interpreter aborts at exit when it cannot take that lock.
    while os.read(0, 4096):
        pass
    os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(main())
