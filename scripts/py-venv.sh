#!/usr/bin/env bash
# A Python virtual environment with the gateway tests' real clients (the `openai` package), in
# .cache/py-venv (git-ignored). Runs once: does nothing when the package is already importable.
# Prints the venv's python path on its last line.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${GENQ_PY_VENV:-$root/.cache/py-venv}"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv" >&2
fi
if ! "$venv/bin/python" -c 'import openai' 2>/dev/null; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'openai>=1.30,<3' >&2
fi
echo "$venv/bin/python"
