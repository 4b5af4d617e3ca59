"""server/shedding/green_threads.py: whether threads are greenlets, asked as a server asks it, in a
process that gevent's or eventlet's monkey-patching went through (or not)."""

import pytest

from tests.support.child_python import run_script

ASK = "from django_aio_request.server.shedding.green_threads import green_threads; print(green_threads())"


def _asked(before: str) -> str:
    done = run_script(f"import warnings; warnings.simplefilter('ignore')\n{before}\n{ASK}")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize(
    ("before", "green"),
    [
        ("from gevent import monkey; monkey.patch_all()", "True"),  # what gunicorn's gevent worker does
        ("import eventlet; eventlet.monkey_patch()", "True"),  # and its eventlet worker
        ("import gevent, gevent.monkey, eventlet, eventlet.patcher", "False"),  # imported, nothing patched
        ("from gevent import monkey; monkey.patch_all(thread=False)", "False"),  # sockets only: threads are threads
        ("", "False"),
    ],
)
def test_threads_are_greenlets_only_where_threading_was_patched(before: str, green: str) -> None:
    assert _asked(before) == green
