#!/usr/bin/env bash
# Regenerates worker/tests/fixtures/arch_reference/<arch>-<type>.json with llama.cpp (see
# scripts/arch-reference.py): random-weight models of each family written by
# scripts/synth-model.py, run through llama-cpp-python's ctypes bindings from the sdist. Uses the
# sdist and the CMake build dir that scripts/build-llamacpp.sh leaves in .cache/llamacpp/ (run that
# first); builds the `llama` shared library there if missing and links it with its ggml libraries
# into .cache/llamacpp/lib. Python: the project's venv (scripts/py-venv.sh) plus the bindings' own
# pure-Python dependencies. Extra arguments go to the Python script (--arch A, --type T, --seed N).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="$root/.cache/llamacpp"
src="$cache/src"
build="$cache/build"
lib="$cache/lib"
if [[ ! -d "$src/llama_cpp" || ! -f "$build/CMakeCache.txt" ]]; then
  echo "no llama.cpp sources/build dir in $cache: run scripts/build-llamacpp.sh first" >&2
  exit 1
fi
if [[ ! -e "$build/bin/libllama.so" ]]; then
  nice cmake --build "$build" --target llama -j "$(nproc)" >/dev/null
fi
mkdir -p "$lib"
for f in "$build"/bin/libllama.so* "$build"/bin/libggml*.so*; do
  ln -sf "$f" "$lib/$(basename "$f")"
done
python="$("$root/scripts/py-venv.sh" | tail -n 1)"
"$python" -c 'import diskcache, jinja2, typing_extensions' 2>/dev/null ||
  "$python" -m pip install --quiet --disable-pip-version-check diskcache jinja2 typing-extensions >&2
cd "$root"
PYTHONPATH="$src:$src/vendor/llama.cpp/gguf-py${PYTHONPATH:+:$PYTHONPATH}" LLAMA_CPP_LIB_PATH="$lib" \
  LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  "$python" "$root/scripts/arch-reference.py" "$@"
