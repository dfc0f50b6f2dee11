#!/usr/bin/env bash
# A Python virtual environment for the project's scripts and tests, in .cache/py-venv
# (git-ignored): the gateway tests' real clients (the `openai` package), and numpy and pyyaml,
# which the `gguf` package from llama.cpp's sources needs (scripts/synth-model.py,
# scripts/arch-reference.py). Runs once: does nothing when the packages are already importable.
# Prints the venv's python path on its last line.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${GENQ_PY_VENV:-$root/.cache/py-venv}"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv" >&2
fi
if ! "$venv/bin/python" -c 'import openai, numpy, yaml' 2>/dev/null; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'openai>=1.30,<3' 'numpy>=1.24,<3' 'pyyaml>=5.1,<7' >&2
fi
echo "$venv/bin/python"
