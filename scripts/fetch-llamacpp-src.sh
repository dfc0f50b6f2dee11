#!/usr/bin/env bash
# Unpacks llama.cpp's sources from the llama-cpp-python sdist on PyPI into .cache/llamacpp/src
# (git-ignored), once, and prints the path of its vendored llama.cpp. Nothing is built: the
# sdist is fetched as a file from PyPI's simple index (`pip download` of an sdist would prepare
# its metadata, building cmake from source on the way). The tests read the vocabulary-only GGUFs
# and their tokenizer cases (`models/ggml-vocab-*`) and the chat templates (`models/templates/`)
# from it; scripts/build-llamacpp.sh builds llama.cpp from it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
index="${PIP_INDEX_URL:-https://pypi.org/simple}"
src="$root/.cache/llamacpp/src"
if [[ ! -f "$src/vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf" ]]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  file="llama_cpp_python-$version.tar.gz"
  url="$(curl -fsSL "${index%/}/llama-cpp-python/" | grep -o "https://[^\"#]*/$file" | head -n 1)"
  if [[ -z "$url" ]]; then
    echo "fetch-llamacpp-src: $file not listed at ${index%/}/llama-cpp-python/" >&2
    exit 1
  fi
  curl -fsSL --retry 3 -o "$tmp/$file" "$url"
  rm -rf "$src"
  mkdir -p "$src"
  tar -xzf "$tmp/$file" -C "$src" --strip-components=1
fi
echo "$src/vendor/llama.cpp"
