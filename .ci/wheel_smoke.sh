#!/usr/bin/env bash
# Build the wheel, install it into a fresh virtualenv outside the checkout, and try it as a user
# would (.ci/wheel_smoke.py: the wheel's contents, then a Django project using the installed package:
# manage.py check and migrate, and calls through a named client to a loopback server).
# Usage: .ci/wheel_smoke.sh  (PYTHON=python3.12 to use another interpreter; KEEP=1 keeps the work dir)
set -euo pipefail
cd "$(dirname "$0")/.."
checkout="$(pwd)"
PYTHON="${PYTHON:-python3}"
work="$(mktemp -d)"
if [ -z "${KEEP:-}" ]; then trap 'rm -rf "$work"' EXIT; else echo "work dir: $work"; fi

# Build from a copy of the files git knows (committed or not, ignored ones left out), so that
# nothing of a local .venv or build/ can slip into the wheel and the checkout stays clean.
mkdir -p "$work/src"
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$work/src"
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" "$work/src"

"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
# With the lowest release of each dependency pyproject.toml allows: the suite runs on the newest, and
# a declared minimum nothing tried was wrong (requests>=2.31, where every call raised below 2.32.3).
"$PYTHON" - "$work"/dist/*.whl > "$work/lowest.txt" <<'PY'
import re, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    metadata = next(wheel.read(n).decode() for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
for line in metadata.splitlines():
    found = re.fullmatch(r"Requires-Dist: ([A-Za-z0-9_.-]+)[^;]*?>=([0-9][0-9.]*)[^;]*", line)
    if found:  # a requirement of the package itself (no "; extra == ..." marker) with a lower bound
        print(f"{found[1]}=={found[2]}")
PY
echo "lowest allowed dependencies: $(tr '\n' ' ' < "$work/lowest.txt")"
"$work/venv/bin/python" -m pip install --quiet --constraint "$work/lowest.txt" "$work"/dist/*.whl
# pytest and pytest-django, to try the testing helpers' pytest plugin from the installed wheel.
"$work/venv/bin/python" -m pip install --quiet pytest pytest-django
# From the work dir, so that the checkout is not on sys.path: the installed wheel must do on its own.
cd "$work"
"$work/venv/bin/python" "$checkout/.ci/wheel_smoke.py" "$checkout" "$work"/dist/*.whl
