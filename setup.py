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
    import torch  # noqa: F401
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:
    print("gradfused: torch is not importable at build time; the kernels will compile on first use")
else:
    with_cuda = build_config.cuda_build_wanted(torch.version.cuda, CUDA_HOME)
    sources = build_config.CPU_SOURCES + (build_config.CUDA_SOURCES if with_cuda else [])
    if with_cuda:
        build_config.set_default_arch_list()
        print(f"gradfused: building the CUDA engine for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']} "
              f"(CUDA_HOME={CUDA_HOME})")
    Extension = CUDAExtension if with_cuda else CppExtension
    defines = build_config.DEFINES_CUDA if with_cuda else []
    ext_modules.append(
        Extension(
            "gradfused._C",
            [os.path.join("csrc", s) for s in sources],
            include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args={"cxx": build_config.CXX_FLAGS + defines, "nvcc": build_config.NVCC_FLAGS + defines},
            extra_link_args=build_config.LINK_FLAGS,
        )
    )
    cmdclass["build_ext"] = BuildExtension.with_options(use_ninja=True)

setup(ext_modules=ext_modules, cmdclass=cmdclass)
