"""How the native extension is compiled: one list of sources and flags for both the ahead-of-time
build (setup.py) and the just-in-time build on first use (gradfused/_native.py).

Torch-free on purpose: setup.py loads this file by path, before torch may be importable."""
import os
import sys

# Split into several translation units so that ninja compiles them in parallel, and so that each
# instruction set's kernels get their own unit (NOTE: [one source, several instruction sets]).
CPU_SOURCES = [
    "gradfused.cpp",
    "cpu/ops_cpu.cpp",
    "cpu/cpu_features.cpp",
    "cpu/kernels_generic.cpp",
    "cpu/kernels_avx2.cpp",
    "cpu/kernels_avx512.cpp",
]

# -ffp-contract=off: no implicit FMA, so every instruction set rounds alike and matches the reference
# more closely. The step is memory-bound; the lost FMAs cost nothing measurable.
CXX_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno"]

# NOTE: [OpenMP in the extension]
# at::parallel_for is a header template whose OpenMP pragma is compiled into *our* library: without
# -fopenmp it silently runs every step on one thread. Linking libgomp.so.1 resolves to the copy torch
# has already loaded (same soname), so there is one OpenMP runtime and torch.set_num_threads applies.
if sys.platform.startswith("linux"):
    CXX_FLAGS.append("-fopenmp")
    LINK_FLAGS = ["-fopenmp"]
else:
    LINK_FLAGS = []

# The CUDA engine (csrc/cuda/): one .cu per rule so ninja compiles them in parallel and rebuilds only
# what changed. Built when torch is a CUDA build and a CUDA toolkit is found (cuda_build_wanted), never
# keyed on a GPU being present: a GPU-less machine (CI) builds and links it for GPUs it cannot see.
CUDA_SOURCES = [
    "cuda/ops_cuda.cpp",
    "cuda/alignment_lookahead.cu",
    "cuda/update_persistent_sgd.cu",
    "cuda/update_adam.cu",
    "cuda/update_radam.cu",
    "cuda/update_adema.cu",
    "cuda/update_nadam.cu",
    "cuda/update_rmsprop.cu",
    "cuda/update_gradient_ascent.cu",
]
# --fmad=false: no contraction into FMA, as -ffp-contract=off on the CPU (NOTE: [the kernels round as
# the reference does]). Division and sqrt stay IEEE (nvcc's defaults without --use_fast_math).
NVCC_FLAGS = ["-O3", "--fmad=false", "--expt-relaxed-constexpr", "-std=c++17", "-Werror", "all-warnings"]
DEFINES_CUDA = ["-DGRADFUSED_WITH_CUDA"]
# Without a GPU to detect, torch cannot pick the architectures (its build fails): A100, H100/H200, and
# PTX for later GPUs. TORCH_CUDA_ARCH_LIST, when set, wins.
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"


def cuda_build_wanted(torch_cuda_version, cuda_home) -> bool:
    """torch is a CUDA build and nvcc is found; GRADFUSED_NO_CUDA=1 forces the CPU build."""
    if os.environ.get("GRADFUSED_NO_CUDA") == "1":
        return False
    return bool(torch_cuda_version) and bool(cuda_home) and os.path.exists(os.path.join(cuda_home, "bin", "nvcc"))


def set_default_arch_list() -> None:
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCH_LIST)
