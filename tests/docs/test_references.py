"""README.md and docs/ point at things that exist: every file path, test (``path::test_name``) and
dotted name of the package they mention, so that a move or a rename cannot leave them behind."""

import ast
import functools
import importlib
import re
from pathlib import Path

import pytest

from django_aio_request.checks import CODES as OTHER_CODES
from django_aio_request.conf.reader import CODES

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# `some/path.py`, `some/path.py::test_name` or `some/path.py::TestClass::test_name` (also .md, .json,
# .yml, .yaml, .toml), in backticks or a link
PATH = re.compile(r"[`(]((?:[\w.-]+/)+[\w.-]+\.(?:py|md|json|ya?ml|toml|png))(?:::((?:\w+::)?[\w\[\].-]+))?[`)]")
DOTTED = re.compile(r"`(django_aio_request(?:\.\w+)+)")


def _exists(path: str, page: Path) -> Path | None:
    for base in (ROOT, ROOT / "django_aio_request", page.parent):
        candidate = (base / path).resolve()
        if candidate.exists():
            return candidate
    return None


@functools.cache
def _runnable(path: Path) -> set[str]:
    """The ids pytest runs in ``path`` (``name`` and ``Class::name``); for any other file, its words.
    Read once a run: usage.md alone names test files hundreds of times (4.5 s a page before)."""
    text = path.read_text()
    if path.suffix != ".py":
        return set(re.findall(r"\w+", text))
    names = set()
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names.update(f"{node.name}::{inner.name}" for inner in node.body if hasattr(inner, "name"))
    return names


def _references(page: Path) -> list[tuple[str, str | None]]:
    return [(m.group(1), m.group(2)) for m in PATH.finditer(page.read_text())]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_path_and_test_named_exists(page: Path) -> None:
    missing = []
    for path, test in _references(page):
        if path.startswith(("http", "/")):
            continue
        found = _exists(path, page)
        if found is None:
            missing.append(path)
        elif test is not None and test.split("[")[0] not in _runnable(found):
            # As pytest takes it: a test inside a class is ``path::TestClass::test_name`` (34 ids
            # without their class named tests that existed, and ``pytest <id>`` found none of them).
            missing.append(f"{path}::{test}")
    assert not missing, f"{page.name} names what does not exist: {missing}"


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            if not hasattr(found, name):
                return False
            found = getattr(found, name)
        return True
    return False


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_dotted_name_of_the_package_imports(page: Path) -> None:
    names = set(DOTTED.findall(page.read_text()))
    permissions = {n for n in names if n.count(".") == 1 and n.endswith("_circuit_breaker")}  # "app.codename"
    check_ids = {n for n in names if re.fullmatch(r"django_aio_request\.[EW]\d{3}", n)}  # manage.py check's ids
    known = {*CODES, *OTHER_CODES}
    assert {n.split(".")[1] for n in check_ids} <= known, f"{page.name} names check ids that do not exist"
    missing = sorted(n for n in names - permissions - check_ids if not _resolves(n))
    assert not missing, f"{page.name} names what does not import: {missing}"
