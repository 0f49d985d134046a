"""How the native engines are compiled: one list of sources and flags for both the ahead-of-time
build (setup.py) and the just-in-time build on first use (gradfused/_native.py).

Torch-free on purpose: setup.py loads this file by path, before torch may be importable."""
import os
import re
import subprocess
import sys

# The oldest torch the project builds and tests (.ci/run); older ones are refused in one line.
MIN_TORCH = (2, 4)

# NOTE: [one C++ standard]
# torch 2.12 and older compile extensions as C++17, 2.13 and later as C++20. The project picks C++20 for
# g++ and nvcc alike, so the same sources compile the same way against every supported torch (torch's own
# default flag comes first on the command line and ours, later, wins).
CXX_STD = "-std=c++20"

# NOTE: [two engines]: the CPU engine (gradfused._C: every schema, the CPU kernels) and the CUDA engine
# (gradfused._C_cuda) are two libraries, so a CUDA build that fails never takes the CPU kernels down.
# Split into several translation units so that ninja compiles them in parallel: each instruction set's
# kernels in units of a few rules (NOTE: [kernel units]).
CPU_EXTENSION, CUDA_EXTENSION = "gradfused._C", "gradfused._C_cuda"
CPU_ISAS = ("generic", "avx2", "avx512")
KERNEL_UNITS = ("adam", "radam_nadam_rmsprop", "sgd")


# NOTE: [instruction sets built]
# GRADFUSED_CPU_ISAS=generic[,avx2][,avx512] compiles the kernels for fewer instruction sets: each one is
# about a third of the kernels' compile time. The CPU then runs the best one built (cpu_features.cpp).
# CI's later legs build the generic set only: the kernel units include no torch header, so the first leg's
# build of every set already compiled them for this compiler.
def cpu_isas() -> tuple[str, ...]:
    """The instruction sets whose kernels are compiled: all of CPU_ISAS unless GRADFUSED_CPU_ISAS names fewer."""
    value = os.environ.get("GRADFUSED_CPU_ISAS", "").strip()
    if not value:
        return CPU_ISAS
    named = {name.strip() for name in value.split(",")}
    if not named <= set(CPU_ISAS) or "generic" not in named:
        raise ValueError(f"GRADFUSED_CPU_ISAS={value!r}: expected a comma-separated subset of {', '.join(CPU_ISAS)} "
                         "that includes generic (the fallback every CPU runs)")
    return tuple(isa for isa in CPU_ISAS if isa in named)


def cpu_isa_cap_ignored() -> str | None:
    """Why GRADFUSED_CPU_ISA (the run-time cap, csrc/cpu/cpu_features.cpp) is not what it was meant to be,
    or None: the kernels read any other value than an instruction set's name as a cap to generic."""
    value = os.environ.get("GRADFUSED_CPU_ISA")
    if value is None or value in CPU_ISAS:
        return None
    return (f"GRADFUSED_CPU_ISA={value!r} is not one of {', '.join(CPU_ISAS)}: the CPU kernels run the generic "
            "instruction set (unset it for the best one this CPU has)")


def cpu_sources() -> list[str]:
    return ["gradfused.cpp", "cpu/ops_cpu.cpp", "cpu/cpu_features.cpp", "cpu/quantize_cpu.cpp"] + [
        f"cpu/kernels/{rules}_{isa}.cpp" for rules in KERNEL_UNITS for isa in cpu_isas()]


def cxx_flags() -> list[str]:
    """CXX_FLAGS, and a GF_WITHOUT_<ISA> define for each instruction set not built (cpu_features.cpp)."""
    built = cpu_isas()
    return CXX_FLAGS + [f"-DGF_WITHOUT_{isa.upper()}" for isa in CPU_ISAS if isa not in built]


# -ffp-contract=off: no implicit FMA, so every instruction set rounds alike and matches the reference
# more closely. The step is memory-bound; the lost FMAs cost nothing measurable.
# -g0: no debug info, which Python's own CFLAGS (-g) would add to the ahead-of-time build. For the kernel
# units' templates it took a fifth of the compile time (90 against 70 s for adam_avx2.cpp on 2 cores) and
# nine tenths of the library (121 against 11 MB). (-O2 would save 40 % more, but the bf16 steps ran 1.2-1.4
# times slower in 3 of 3 alternating runs; the fp32 ones did not move.)
CXX_FLAGS = [CXX_STD, "-O3", "-g0", "-ffp-contract=off", "-fno-math-errno"]

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
# what changed. Built where torch is a CUDA build and a suitable CUDA toolkit is found
# (cuda_build_skipped), never keyed on a GPU being present: a GPU-less machine (CI) builds and links it
# for GPUs it cannot see.
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
NVCC_FLAGS = [CXX_STD, "-O3", "--fmad=false", "--expt-relaxed-constexpr"]
# Warnings are errors where the project controls the toolkit (CI sets GRADFUSED_WERROR=1), never in a
# user's build: a newer nvcc warns about older architectures, which must not fail an install.
if os.environ.get("GRADFUSED_WERROR") == "1":
    NVCC_FLAGS += ["-Werror", "all-warnings"]
# With no GPU to detect, torch cannot pick the architectures (its build fails): A100, H100/H200, and PTX
# for later GPUs. With a GPU present torch compiles for it; TORCH_CUDA_ARCH_LIST, when set, wins.
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"
# The kernels pass their chunk tables (up to about 21.5 KB) as kernel arguments: nvcc 12.1 and a driver
# for CUDA 12.1 (530 or later) allow 32 KB, older ones 4 KB.
MIN_NVCC = (12, 1)
MIN_DRIVER = 12010  # cudaDriverGetVersion's encoding of 12.1


def torch_too_old(torch_version: str) -> str | None:
    """One line refusing a torch older than MIN_TORCH, or None."""
    found = tuple(int(x) for x in re.findall(r"\d+", torch_version)[:2])
    if found >= MIN_TORCH:
        return None
    need = ".".join(map(str, MIN_TORCH))
    return f"gradfused needs torch>={need}; this is torch {torch_version} (pip install 'torch>={need}')"


def nvcc_version(cuda_home: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+)\.(\d+)", out)
    return (int(match[1]), int(match[2])) if match else None


def cuda_build_skipped(torch_cuda: str | None, torch_hip: str | None, cuda_home: str | None) -> str | None:
    """Why the CUDA engine is not built here, or None to build it."""
    if os.environ.get("GRADFUSED_NO_CUDA") == "1":
        return "GRADFUSED_NO_CUDA=1"
    if torch_hip:
        return f"torch is a ROCm build (HIP {torch_hip}); gradfused has CUDA kernels only"
    if not torch_cuda:
        return "torch is a CPU-only build"
    if not cuda_home or not os.path.exists(os.path.join(cuda_home, "bin", "nvcc")):
        return "no CUDA toolkit found (set CUDA_HOME to one with bin/nvcc)"
    nvcc = nvcc_version(cuda_home)
    if nvcc is None:
        return f"could not read the version of {os.path.join(cuda_home, 'bin', 'nvcc')}"
    if nvcc < MIN_NVCC:
        return f"nvcc {nvcc[0]}.{nvcc[1]} is older than 12.1, which the kernels' 32 KB arguments need"
    if str(nvcc[0]) != torch_cuda.split(".")[0]:
        return f"nvcc {nvcc[0]}.{nvcc[1]} and torch's CUDA {torch_cuda} differ in major version (torch refuses the mix)"
    return None


def set_default_arch_list(gpu_present: bool) -> None:
    if not gpu_present:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCH_LIST)


def arch_list() -> str:
    """The architectures the CUDA engine is built for, as the build log and BUILD_RECORD say them."""
    return os.environ.get("TORCH_CUDA_ARCH_LIST", "this machine's GPUs")

# What an ahead-of-time build made of the CUDA engine, and why not (written by setup.py beside gradfused._C).
BUILD_RECORD = "_build_record.json"


def engines_build_ext(base, cuda_skipped: str | None):
    """setup.py's build_ext: `base` (torch's BuildExtension), except that a CUDA engine that fails to compile
    is reported and the CPU engine installs (NOTE: [two engines]). What was built, and why not, goes to
    BUILD_RECORD beside gradfused._C for `gradfused info`; `cuda_skipped` says why no CUDA engine was tried."""

    class BuildEngines(base):
        def build_extensions(self):
            try:
                super().build_extensions()
            except Exception as e:  # noqa: BLE001  (a compiler, linker or toolkit-check failure)
                cuda = [ext for ext in self.extensions if ext.name == CUDA_EXTENSION]
                if not cuda:
                    raise
                self.cuda_failure = f"the CUDA engine failed to build ({type(e).__name__}: {e})"
                print(f"gradfused: WARNING: {self.cuda_failure}; building the CPU engine alone (CUDA tensors will "
                      "step with the pure-PyTorch reference)")
                self.extensions = [ext for ext in self.extensions if ext not in cuda]
                super().build_extensions()  # what was built already is not compiled again

        def _build_extensions_serial(self):
            """The CUDA engine in a second thread, beside the CPU engine: each is a ninja build of its own (in
            its own folder), so a many-core machine compiles both sets of sources at once."""
            import copy
            from concurrent.futures import ThreadPoolExecutor

            cuda = [ext for ext in self.extensions if ext.name == CUDA_EXTENSION]
            if not cuda or len(cuda) == len(self.extensions):
                return super()._build_extensions_serial()
            beside = copy.copy(self)
            beside.build_temp = os.path.join(self.build_temp, "cuda")
            with ThreadPoolExecutor(max_workers=1) as pool:
                cuda_built = pool.submit(beside.build_extension, cuda[0])
                for ext in self.extensions:
                    if ext not in cuda:
                        self.build_extension(ext)
                cuda_built.result()  # its failure, if any, reaches build_extensions above

        def run(self):
            import json

            import torch

            self.cuda_failure = None
            super().run()
            reason = cuda_skipped or self.cuda_failure
            record = {"torch": torch.__version__, "cuda_not_built": reason,
                      "cuda_arch_list": None if reason else arch_list()}
            package_dir = os.path.dirname(self.get_ext_fullpath(CPU_EXTENSION))
            with open(os.path.join(package_dir, BUILD_RECORD), "w") as f:
                json.dump(record, f)

    return BuildEngines
