"""Builds gradfused. With torch importable (pip install --no-build-isolation .) the native extension is
compiled ahead of time; without it (plain pip install . in an isolated build) the package installs
as pure Python and compiles its kernels on first use (gradfused/_native.py)."""
import importlib.util
import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("_gf_build", os.path.join(HERE, "gradfused", "_build.py"))
build_config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_config)


class BuildPyWithSources(build_py):
    """Ships csrc/ inside the package (gradfused/_csrc) for the just-in-time build, and the commit it was
    built from (gradfused/_commit.txt, read by gradfused/environment.py), which an installed copy cannot
    ask git for."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "gradfused", "_csrc")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(os.path.join(HERE, "csrc"), target)
        try:
            commit = subprocess.run(["git", "-C", HERE, "describe", "--always", "--dirty"], capture_output=True,
                                    text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            commit = ""
        with open(os.path.join(self.build_lib, "gradfused", "_commit.txt"), "w") as f:
            f.write(commit or "unknown")


cmdclass = {"build_py": BuildPyWithSources}
ext_modules = []
try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:
    print("gradfused: torch is not importable at build time; the kernels will compile on first use")
else:
    too_old = build_config.torch_too_old(torch.__version__)
    if too_old:
        raise SystemExit(too_old)

    try:
        cxx_flags, cpu_sources = build_config.cxx_flags(), build_config.cpu_sources()
    except ValueError as e:
        raise SystemExit(f"gradfused: {e}") from None

    def extension(kind, name, sources, nvcc_flags=()):
        return kind(name, [os.path.join("csrc", s) for s in sources], include_dirs=[os.path.join(HERE, "csrc")],
                    extra_compile_args={"cxx": cxx_flags, "nvcc": list(nvcc_flags)},
                    extra_link_args=build_config.LINK_FLAGS)

    ext_modules.append(extension(CppExtension, build_config.CPU_EXTENSION, cpu_sources))
    cuda_skipped = build_config.cuda_build_skipped(torch.version.cuda, getattr(torch.version, "hip", None), CUDA_HOME)
    if cuda_skipped is None:
        build_config.set_default_arch_list(gpu_present=torch.cuda.is_available())
        print(f"gradfused: building the CUDA engine for {build_config.arch_list()} (CUDA_HOME={CUDA_HOME})")
        ext_modules.append(extension(CUDAExtension, build_config.CUDA_EXTENSION, build_config.CUDA_SOURCES,
                                     build_config.NVCC_FLAGS))
    else:
        print(f"gradfused: not building the CUDA engine: {cuda_skipped}")

    cmdclass["build_ext"] = build_config.engines_build_ext(BuildExtension, cuda_skipped).with_options(use_ninja=True)

setup(ext_modules=ext_modules, cmdclass=cmdclass)
