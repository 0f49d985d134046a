"""Builds gradfused. With torch importable (pip install --no-build-isolation .) the native extension is
compiled ahead of time; without it (plain pip install . in an isolated build) the package installs
as pure Python and compiles its kernels on first use (gradfused/_native.py)."""
import importlib.util
import json
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

    def extension(kind, name, sources, nvcc_flags=()):
        return kind(name, [os.path.join("csrc", s) for s in sources], include_dirs=[os.path.join(HERE, "csrc")],
                    extra_compile_args={"cxx": build_config.CXX_FLAGS, "nvcc": list(nvcc_flags)},
                    extra_link_args=build_config.LINK_FLAGS)

    ext_modules.append(extension(CppExtension, "gradfused._C", build_config.CPU_SOURCES))
    cuda_skipped = build_config.cuda_build_skipped(torch.version.cuda, getattr(torch.version, "hip", None), CUDA_HOME)
    if cuda_skipped is None:
        build_config.set_default_arch_list(gpu_present=torch.cuda.is_available())
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "this machine's GPUs")
        print(f"gradfused: building the CUDA engine for {arch} (CUDA_HOME={CUDA_HOME})")
        ext_modules.append(extension(CUDAExtension, "gradfused._C_cuda", build_config.CUDA_SOURCES,
                                     build_config.NVCC_FLAGS))
    else:
        print(f"gradfused: not building the CUDA engine: {cuda_skipped}")

    class BuildEngines(BuildExtension):
        """NOTE: [two engines]: a CUDA engine that fails to compile is reported, and the CPU engine installs.
        What was built, and why not, goes to gradfused/_build_record.json for `gradfused info`."""

        def build_extension(self, ext):
            if ext.name != "gradfused._C_cuda":
                return super().build_extension(ext)
            try:
                super().build_extension(ext)
            except Exception as e:  # noqa: BLE001  (any compiler or linker failure)
                self.cuda_failure = f"the CUDA engine failed to compile ({type(e).__name__}: {e})"
                print(f"gradfused: WARNING: {self.cuda_failure}; installing the CPU engine alone (CUDA tensors "
                      "will step with the pure-PyTorch reference)")

        def run(self):
            self.cuda_failure = None
            super().run()
            reason = cuda_skipped or self.cuda_failure
            record = {"torch": torch.__version__, "cuda_not_built": reason,
                      "cuda_arch_list": None if reason else os.environ.get("TORCH_CUDA_ARCH_LIST", "this machine's GPUs")}
            package_dir = os.path.dirname(self.get_ext_fullpath("gradfused._C"))
            with open(os.path.join(package_dir, build_config.BUILD_RECORD), "w") as f:
                json.dump(record, f)

    cmdclass["build_ext"] = BuildEngines.with_options(use_ninja=True)

setup(ext_modules=ext_modules, cmdclass=cmdclass)
