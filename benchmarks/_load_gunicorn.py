"""Gunicorn settings for ``benchmarks/load.py``'s caller service (the command line sets the rest).

The arbiter stops itself (SIGTERM: a graceful shutdown) when its standard input reaches end of file,
which happens when the benchmark that started it with a pipe there ends, however it ends, and after
``LOAD_MAX_SECONDS`` at the latest: a benchmark killed with SIGKILL leaves no server behind.
With ``PROMETHEUS_MULTIPROC_DIR`` set, ``/metrics`` of any worker reports all of them.
"""

import os
import signal
import threading
from typing import Any

graceful_timeout = 3
# gunicorn 27's control socket is one path per user (~/.gunicorn/gunicorn.ctl): off, so that runs
# and other servers do not share it (older versions ignore the unknown setting).
control_socket_disable = True


def when_ready(server: Any) -> None:
    arbiter = os.getpid()

    def stop() -> None:
        os.kill(arbiter, signal.SIGTERM)

    def wait_for_end_of_input() -> None:
        while os.read(0, 4096):
            pass
        stop()

    threading.Thread(target=wait_for_end_of_input, daemon=True, name="exit-with-parent").start()
    timer = threading.Timer(float(os.environ.get("LOAD_MAX_SECONDS", "300")), stop)
    timer.daemon = True
    timer.start()


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
