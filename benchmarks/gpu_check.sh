#!/usr/bin/env bash
# All of the GPU work in one device call of at most about 9 minutes (each phase has a timeout), on a
# fresh GPU machine with no network (an H100 or H200: Python 3.12, torch + CUDA 13, nvcc, ninja, pytest,
# pytest-xdist, pytest-benchmark): build the CUDA engine, the GPU benchmarks on real layouts, the
# end-to-end GPT-2 training step, every CUDA test (the conformance tests included), pytest-benchmark on
# CUDA, and the AVX-512 CPU parity tests where this CPU has AVX-512; a summary table ends it. Writes
# logs, JSON and text to $OUT (default ./gpu-check-out). Commit the results under benchmarks/results/
# with the device, the date and the commit.
#   GRADFUSED_COMMIT=$(git rev-parse --short HEAD) bash benchmarks/gpu_check.sh   # from the repository root
# (name the commit: the device tool's copy of the tree may carry stale git metadata)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
status=0
step() { echo; echo "== $* ($(date +%T))"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv | tee "$OUT/machine.txt"
"$PY" -c "import torch, platform; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', platform.python_version())" | tee -a "$OUT/machine.txt"
grep -m1 "model name" /proc/cpuinfo | tee -a "$OUT/machine.txt"
echo "commit ${GRADFUSED_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null)}" | tee -a "$OUT/machine.txt"

# torch's optimizer test inputs (tests/test_torch_conformance.py) import expecttest, and the 8-bit
# comparison (gpu_bench.py's gpt2-124M-8bit) bitsandbytes, which the GPU machine lacks and cannot fetch:
# carry their wheels in .whl/, untracked (pip download expecttest==0.3.0 -d .whl; pip download --no-deps
# bitsandbytes==0.50.2 -d .whl). Without bitsandbytes the case runs without it.
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --target /tmp/gf-site .whl/*.whl && export PYTHONPATH="/tmp/gf-site${PYTHONPATH:+:$PYTHONPATH}"
fi

step "build (TORCH_CUDA_ARCH_LIST=9.0)"
start=$(date +%s)
GRADFUSED_WERROR=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}" \
  "$PY" setup.py build_ext --inplace >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1; }
echo "built in $(( $(date +%s) - start )) s" | tee -a "$OUT/machine.txt"
"$PY" -m gradfused info | tee "$OUT/info.txt"
# a CUDA compile error leaves the CPU engine built (NOTE: [two engines]): here it is a failed build
grep -q "CPU+CUDA" "$OUT/info.txt" || { grep -m 20 -A 10 "error" "$OUT/build.log"; echo "CUDA BUILD FAILED"; exit 1; }

# each phase: name, status and seconds, for the summary at the end
summary=()
phase() {  # phase NAME SECONDS CMD...: runs CMD under a timeout, records its outcome
  local name="$1" limit="$2"; shift 2
  step "$name (at most $limit s)"
  local start=$(date +%s)
  timeout "$limit" "$@"
  local rc=$?
  [ $rc = 0 ] || status=1
  summary+=("$(printf '%-44s %-8s %4d s' "$name" "$([ $rc = 0 ] && echo ok || ([ $rc = 124 ] && echo TIMEOUT || echo FAILED))" $(( $(date +%s) - start )))")
}

phase "GPU step benchmarks (real layouts)" "${GF_BENCH_SECONDS:-120}" \
  bash -c "PYTHONPATH=. '$PY' benchmarks/gpu_bench.py --out '$OUT' 2>&1 | tail -90; exit \${PIPESTATUS[0]}"
phase "GPT-2 training step, bf16 autocast" "${GF_TRAIN_SECONDS:-60}" \
  bash -c "PYTHONPATH=. '$PY' benchmarks/train_bench.py --out '$OUT' 2>&1 | tail -8; exit \${PIPESTATUS[0]}"

# one torch thread per pytest worker: the CPU reference runs beside 16 workers
export OMP_NUM_THREADS=1
phase "CUDA tests (pytest -m cuda, conformance included)" "${GF_TEST_SECONDS:-180}" \
  bash -c "'$PY' -m pytest -q -m cuda -n 16 -p no:cacheprovider -rfE -W ignore tests 2>&1 | tee '$OUT/cuda_tests.txt' | tail -30; exit \${PIPESTATUS[0]}"
phase "pytest-benchmark on CUDA (real layouts)" "${GF_PYTEST_BENCH_SECONDS:-60}" \
  bash -c "cd benchmarks && GRADFUSED_BENCH_ROUNDS=5 '$PY' -m pytest -q -p no:cacheprovider --benchmark-json '$OUT/bench_step_cuda.json' \
    -k 'cuda and (AdamW or SGD) and (d-gpt2-small or f-resnet50 or g-10000x1000) and (gradfused/ or torch_fused)' 2>&1 | tail -40; exit \${PIPESTATUS[0]}"

if [ "${GF_SKIP_AVX512:-0}" != 1 ] && grep -q avx512f /proc/cpuinfo && grep -q avx512bw /proc/cpuinfo; then
  phase "AVX-512 CPU kernels against the reference" "${GF_AVX512_SECONDS:-50}" \
    bash -c "GRADFUSED_CPU_ISA=avx512 '$PY' -m pytest -q -n 16 -p no:cacheprovider -rfE -W ignore \
      tests/test_parity.py tests/test_behaviour.py -k 'float32 or bfloat16 or instruction_set or thread' 2>&1 \
      | tee '$OUT/avx512_tests.txt' | tail -15; exit \${PIPESTATUS[0]}"
fi

{ echo; echo "== summary (commit ${GRADFUSED_COMMIT:-unknown})"; printf '%s\n' "${summary[@]}"; } | tee "$OUT/summary.txt"
echo; echo "gpu_check: $([ $status = 0 ] && echo OK || echo FAILURES) ; results in $OUT"
exit $status
