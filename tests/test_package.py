"""django_aio_request/__init__.py: every public name is imported when first asked for."""

import ast
import subprocess
import sys
from pathlib import Path

import django_aio_request

INIT = Path(django_aio_request.__file__)


def test_every_public_name_resolves_from_the_module_the_type_checker_reads() -> None:
    """The names are listed twice, for mypy (the TYPE_CHECKING imports) and for the lazy look-up
    (_LAZY): a name in one and not the other type-checked and then raised AttributeError."""
    checked: dict[str, str] = {}
    for node in ast.walk(ast.parse(INIT.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("django_aio_request."):
            for alias in node.names:
                checked[alias.asname or alias.name] = node.module
    checked.pop("ClientsHandler")  # an annotation only
    lazy = django_aio_request._LAZY
    assert set(lazy) == set(django_aio_request.__all__) == set(checked) | {"clients"}
    assert {name: module for name, module in lazy.items() if name != "clients"} == checked
    for name in django_aio_request.__all__:
        assert getattr(django_aio_request, name) is not None


_LOADED = "import sys, django_aio_request; print(sorted(m for m in sys.modules if m.startswith(LOADED)))"


def test_importing_the_package_imports_nothing_else() -> None:
    script = _LOADED.replace("LOADED", repr(("django_aio_request.", "requests", "prometheus_client")))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True, cwd=INIT.parents[1]
    )
    assert done.stdout.strip() == "[]"


# A thread per public name, all asking at once, in a fresh interpreter: each thread's import of the
# name's module must not deadlock with another's import of the package holding it.
_AT_ONCE = """
import threading, django_aio_request as package
names = sorted(package.__all__)
barrier, failed = threading.Barrier(len(names)), []
def use(name):
    barrier.wait()
    try:
        getattr(package, name)
    except BaseException as error:
        failed.append(f"{name}: {type(error).__name__}: {error}")
threads = [threading.Thread(target=use, args=(name,)) for name in names]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(failed or "ok")
"""


def test_public_names_first_used_by_many_threads_at_once_all_import() -> None:
    # Before: the strategies package and its delays / deadline_providers modules were imported from
    # two threads in opposite orders, and one thread got _DeadlockError (15 runs of 20).
    for _ in range(6):
        command = [sys.executable, "-c", _AT_ONCE]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True, cwd=INIT.parents[1])
        assert done.stdout.strip() == "ok", done.stdout
