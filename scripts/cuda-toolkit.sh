#!/usr/bin/env bash
# Installs the CUDA toolkit that `--features cuda` builds need (nvcc, headers, cudart, cuBLAS,
# cuRAND, NVRTC, CCCL) from NVIDIA's PyPI wheels into .cache/cuda/ (git-ignored), once, with no root,
# no apt and no GPU. Prints the environment to use it, one `export` per line:
#
#   eval "$(scripts/cuda-toolkit.sh)"       # then: cargo build --release --features genq-worker/cuda,...
#
# CUDA 13.4 (the newest cudarc 0.19 accepts; the CUDA 12 nvcc wheel has no nvcc binary), pinned
# to the versions of the `cuda-toolkit==13.4.3` meta-package. Building needs no driver, but the
# linker wants a `libcuda.so`: the script compiles a stub exporting the driver API's names
# (taken from cudarc's bindings) with soname `libcuda.so.1`, so the binary loads the real driver
# at run time. The stub lives in `stubs/`, which is only on LIBRARY_PATH, never LD_LIBRARY_PATH.
#
# Settings: GENQ_CUDA_DIR (default <repo>/.cache/cuda), CUDA_COMPUTE_CAP (default 90 = H100/H200).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${GENQ_CUDA_DIR:-$root/.cache/cuda}"
cap="${CUDA_COMPUTE_CAP:-90}"
cuda="$cache/nvidia/cu13"

# name==version of each wheel: cuda-toolkit 13.4.3's pins (cccl: libcu++ headers such as <nv/target>).
wheels=(
  nvidia-cuda-nvcc==13.4.92
  nvidia-nvvm==13.4.92
  nvidia-cuda-crt==13.4.92
  nvidia-cuda-runtime==13.4.92
  nvidia-cuda-nvrtc==13.4.92
  nvidia-cublas==13.8.0.4
  nvidia-curand==10.4.4.72
  nvidia-cuda-cccl==13.3.4.3.1
)

log() { echo "cuda-toolkit: $*" >&2; }

missing=()
for w in "${wheels[@]}"; do
  [[ -f "$cache/.installed/$w" ]] || missing+=("$w")
done
if (( ${#missing[@]} )); then
  mkdir -p "$cache/wheels" "$cache/.installed"
  log "downloading ${#missing[@]} wheels into $cache/wheels (about 650 MB, 1.2 GB unpacked, once)"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$cache/wheels" "${missing[@]}" >&2
  for w in "${missing[@]}"; do
    name="${w%%==*}"
    version="${w##*==}"
    file="$(ls "$cache/wheels/${name//-/_}-$version"*.whl | head -n 1)"
    # Wheels are zip files; every one of these unpacks under nvidia/cu13/.
    python3 -m zipfile -e "$file" "$cache" >&2
    touch "$cache/.installed/$w"
  done
  chmod +x "$cuda"/bin/* "$cuda"/nvvm/bin/* 2>/dev/null || true
  rm -rf "$cache/wheels"
fi

# Unversioned names for the linker (`-lcublas` wants libcublas.so).
for lib in "$cuda"/lib/lib*.so.*; do
  [[ -e "$lib" ]] || continue
  base="$(basename "$lib")"
  plain="${base%%.so.*}.so"
  [[ -e "$cuda/lib/$plain" ]] || ln -s "$base" "$cuda/lib/$plain"
done
# Some build scripts look in lib64/.
[[ -e "$cuda/lib64" ]] || ln -s lib "$cuda/lib64"

# The libcuda.so stub: every cu* function cudarc declares, as an empty exported symbol. Only the
# link uses it; at run time the driver's libcuda.so.1 is found by its soname.
stub="$cache/stubs/libcuda.so"
if [[ ! -f "$stub" ]]; then
  cargo_home="${CARGO_HOME:-${HOME:-/root}/.cargo}"
  bindings="$(ls -d "$cargo_home"/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs 2>/dev/null | sort -V | tail -n 1 || true)"
  if [[ -z "$bindings" ]]; then
    log "fetching crates to find cudarc's driver bindings"
    (cd "$root" && cargo fetch --quiet >&2)
    bindings="$(ls -d "$cargo_home"/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs | sort -V | tail -n 1)"
  fi
  mkdir -p "$cache/stubs"
  src="$cache/stubs/libcuda-stub.c"
  {
    echo "/* Link-time stand-in for the NVIDIA driver's libcuda.so.1; never loaded at run time. */"
    grep -oE '\bfn cu[A-Za-z0-9_]+' "$bindings" | sed 's/^fn //' | sort -u | sed 's/.*/int &(void) { return 999; }/'
  } >"$src"
  "${CC:-cc}" -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub" "$src"
  log "built $stub ($(grep -c '^int ' "$src") symbols)"
fi

# nvcc must report a version cudarc knows, or its build script panics later with less context.
version="$("$cuda/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')"
if [[ "$version" != "13.4" ]]; then
  log "nvcc reports CUDA '$version', expected 13.4 (cudarc 0.19 accepts 11.4..13.4)"
  exit 1
fi

cat <<EOF
export CUDA_ROOT="$cuda"
export CUDA_PATH="$cuda"
export CUDA_HOME="$cuda"
export NVCC="$cuda/bin/nvcc"
export PATH="$cuda/bin:\$PATH"
export LIBRARY_PATH="$cuda/lib:$cache/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
export LD_LIBRARY_PATH="$cuda/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export CUDA_COMPUTE_CAP="$cap"
EOF
