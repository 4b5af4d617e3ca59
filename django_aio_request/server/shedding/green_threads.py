"""Whether this process's threads are greenlets: gevent's or eventlet's monkey-patching of ``threading``.

Then every request is a greenlet on one OS thread, and what load shedding reads as a request's own
CPU is that thread's: ``time.thread_time()`` and the thread's CPU clock count every greenlet's work.
Read as a request's, a 100 ms sleeping view under gunicorn's gevent worker took 14-28 ms of CPU
(0.2-0.5 ms under gthread), the limit learned that the views compute, and a light load was mostly
refused (tests/server/test_shedding_long_requests.py). Under green threads the limiter measures no
request's CPU, as for async views: the limit learns from latency, and lending from the process's CPU.
"""

import sys

__all__ = ["green_threads"]


def green_threads() -> bool:
    """Whether ``threading`` is gevent's or eventlet's here (patched by their ``monkey_patch()``).

    Asked when a limiter is made, at a worker's first request with shedding on: servers patch before
    they load the application (gunicorn's gevent and eventlet workers as their process starts)."""
    gevent_monkey = sys.modules.get("gevent.monkey")
    if gevent_monkey is not None and gevent_monkey.is_module_patched("threading"):
        return True
    eventlet_patcher = sys.modules.get("eventlet.patcher")
    return eventlet_patcher is not None and bool(eventlet_patcher.is_monkey_patched("thread"))
