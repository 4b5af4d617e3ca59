"""Gunicorn settings for serving the project with Prometheus metrics from several workers.

    PROMETHEUS_MULTIPROC_DIR=/run/metrics gunicorn -c testproject/gunicorn.conf.py testproject.wsgi

With ``PROMETHEUS_MULTIPROC_DIR`` set (an empty directory, emptied before each start), every worker
writes its metrics there and django-prometheus's ``/metrics`` view, answered by any worker, adds up
all of them. A worker that exits must be marked dead, or its live gauges stay (docs/metrics.md).
"""

import os
from typing import Any

workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
worker_class = "sync"


def child_exit(server: Any, worker: Any) -> None:
    legacy = os.environ.get("prometheus_multiproc_dir")  # noqa: SIM112 - the old name prometheus_client still reads
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") or legacy:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
