"""Builds gradfused. With torch importable (pip install --no-build-isolation .) the native extension is
compiled ahead of time; without it (plain pip install . in an isolated build) the package installs
as pure Python and compiles its kernels on first use (gradfused/_native.py)."""
import importlib.util
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("_gf_build", os.path.join(HERE, "gradfused", "_build.py"))
build_config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_config)


class BuildPyWithSources(build_py):
    """Ships csrc/ inside the package (gradfused/_csrc) for the just-in-time build."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "gradfused", "_csrc")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(os.path.join(HERE, "csrc"), target)


cmdclass = {"build_py": BuildPyWithSources}
ext_modules = []
try:
    import torch  # noqa: F401
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError:
    print("gradfused: torch is not importable at build time; the kernels will compile on first use")
else:
    sources = [os.path.join("csrc", s) for s in build_config.CPU_SOURCES]
    ext_modules.append(
        CppExtension(
            "gradfused._C",
            sources,
            include_dirs=[os.path.join(HERE, "csrc")],
            extra_compile_args={"cxx": build_config.CXX_FLAGS},
            extra_link_args=build_config.LINK_FLAGS,
        )
    )
    cmdclass["build_ext"] = BuildExtension.with_options(use_ninja=True)

setup(ext_modules=ext_modules, cmdclass=cmdclass)
