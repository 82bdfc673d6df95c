#!/usr/bin/env bash
# Rewrites constraints.txt: the version of every package the test suite passed
# with, which `.ci/run` installs with. Run it to take newer releases in: a
# fresh virtualenv gets the newest releases pyproject.toml allows, the suite
# must pass with them, then their versions are recorded.
#
#     bash scripts/refresh_constraints.sh
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d)/venv
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --upgrade pip
"$venv/bin/pip" install -e ".[test]"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
"$venv/bin/python" -m pytest -n 2 tests
{
  echo "# The versions the test suite last passed with (scripts/refresh_constraints.sh)."
  "$venv/bin/pip" freeze --exclude-editable | grep -v '^resnet[-_]jax'
} > constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) packages"
