"""How the native extension is compiled: one list of sources and flags for both the ahead-of-time
build (setup.py) and the just-in-time build on first use (gradfused/_native.py).

Torch-free on purpose: setup.py loads this file by path, before torch may be importable."""
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
