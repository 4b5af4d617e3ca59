# The two commands a newcomer needs: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint typecheck check bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed, found " + sys.version)'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

## make demo: install, migrate and start the demo project
demo: $(STAMP)
	$(PY) -m testproject.demo

## make test: the whole suite (lint and type checks first: they take seconds)
test: $(STAMP) lint typecheck
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

## make bench: the benchmarks, each printing ratios against a baseline measured in the same run
bench: $(STAMP)
	$(PY) -m benchmarks.overhead
	$(PY) -m benchmarks.hedging

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache db.sqlite3
