#!/usr/bin/env bash
# Compiles every .cu file under csrc/cuda for sm_80 and sm_90 with nvcc, without torch (the .cu files
# include only CUDA headers and csrc/common/). Any compile error fails CI.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
if [ ! -x "$NVCC" ]; then
  echo "cuda compile check: nvcc not found" >&2
  exit 1
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
shopt -s nullglob
files=(csrc/cuda/*.cu)
[ ${#files[@]} -gt 0 ] || { echo "cuda compile check: no .cu files" >&2; exit 1; }
for f in "${files[@]}"; do
  "$NVCC" -std=c++17 -O3 --expt-relaxed-constexpr -Werror all-warnings \
    -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
    -Icsrc -c "$f" -o "$out/$(basename "$f").o"
  echo "cuda compile check: $f OK (sm_80, sm_90)"
done
