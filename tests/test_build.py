"""The build's decisions (gradfused/_build.py) and what a device without native kernels gets: the
reference, with one warning (NOTE: [two engines])."""
import json
import os
import stat
import warnings

import pytest
import torch

import gradfused as gf
from gradfused import _build, _native, ops


def test_an_older_torch_is_refused_in_one_line():
    assert _build.torch_too_old("2.13.0+cpu") is None
    assert _build.torch_too_old(".".join(map(str, _build.MIN_TORCH)) + ".0") is None
    message = _build.torch_too_old("2.3.1+cu121")
    need = ".".join(map(str, _build.MIN_TORCH))
    assert message == f"gradfused needs torch>={need}; this is torch 2.3.1+cu121 (pip install 'torch>={need}')"
    assert _build.torch_too_old("1.13.1") and "\n" not in _build.torch_too_old("1.13.1")


def test_pyproject_declares_the_minimum_that_the_build_enforces():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml")) as f:
        assert f'"torch>={".".join(map(str, _build.MIN_TORCH))}"' in f.read()


def fake_cuda_home(tmp_path, release: str) -> str:
    """A CUDA_HOME whose bin/nvcc reports `release`."""
    nvcc = tmp_path / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.1'\n")
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    return str(tmp_path)


@pytest.mark.parametrize("torch_cuda, torch_hip, release, reason", [
    (None, None, "13.0", "CPU-only build"),
    ("12.1", "6.2.4", "12.4", "ROCm build"),
    ("11.8", None, "11.8", "nvcc 11.8 is older than 12.1"),
    ("12.1", None, "12.0", "nvcc 12.0 is older than 12.1"),
    ("12.1", None, "13.0", "differ in major version"),
    ("13.0", None, "13.0", None),
    ("12.4", None, "12.1", None),
])
def test_the_cuda_engine_is_built_only_where_it_can_be(tmp_path, monkeypatch, torch_cuda, torch_hip, release, reason):
    monkeypatch.delenv("GRADFUSED_NO_CUDA", raising=False)
    skipped = _build.cuda_build_skipped(torch_cuda, torch_hip, fake_cuda_home(tmp_path, release))
    assert skipped is None if reason is None else reason in skipped


def test_no_toolkit_or_the_switch_skips_the_cuda_engine(tmp_path, monkeypatch):
    monkeypatch.delenv("GRADFUSED_NO_CUDA", raising=False)
    assert "no CUDA toolkit" in _build.cuda_build_skipped("13.0", None, None)
    assert "no CUDA toolkit" in _build.cuda_build_skipped("13.0", None, str(tmp_path))
    monkeypatch.setenv("GRADFUSED_NO_CUDA", "1")
    assert _build.cuda_build_skipped("13.0", None, fake_cuda_home(tmp_path, "13.0")) == "GRADFUSED_NO_CUDA=1"


def test_one_cxx_standard_for_gcc_and_nvcc():
    assert _build.CXX_STD in _build.CXX_FLAGS and _build.CXX_STD in _build.NVCC_FLAGS
    assert not any(f.startswith("-std=") and f != _build.CXX_STD for f in _build.CXX_FLAGS + _build.NVCC_FLAGS)


def test_fewer_instruction_sets_build_fewer_kernel_units(monkeypatch):
    """NOTE: [instruction sets built]: GRADFUSED_CPU_ISAS drops units and defines what cpu_features.cpp
    leaves out; a JIT build of fewer sets has its own cache folder; nonsense is refused by name."""
    monkeypatch.delenv("GRADFUSED_CPU_ISAS", raising=False)
    every = _build.cpu_sources()
    assert _build.cpu_isas() == ("generic", "avx2", "avx512") and not any("GF_WITHOUT" in f for f in _build.cxx_flags())
    default_name = _native.jit_name("/src")
    monkeypatch.setenv("GRADFUSED_CPU_ISAS", "avx2, generic")
    assert _build.cpu_isas() == ("generic", "avx2")
    assert set(every) - set(_build.cpu_sources()) == {f"cpu/kernels/{u}_avx512.cpp" for u in _build.KERNEL_UNITS}
    assert [f for f in _build.cxx_flags() if "GF_WITHOUT" in f] == ["-DGF_WITHOUT_AVX512"]
    assert _native.jit_name("/src") == default_name + "_generic_avx2"
    for nonsense in ("avx2", "generic,sse9"):
        monkeypatch.setenv("GRADFUSED_CPU_ISAS", nonsense)
        with pytest.raises(ValueError, match="GRADFUSED_CPU_ISAS=.*includes generic"):
            _build.cpu_sources()


@pytest.mark.parametrize("value, ignored", [(None, False), ("avx2", False), ("best", True), ("AVX2", True)])
def test_an_unknown_instruction_set_cap_is_named(monkeypatch, value, ignored):
    """GRADFUSED_CPU_ISA caps the kernels at run time; any other value than a name caps them to generic,
    which the load warns of, naming the variable."""
    monkeypatch.delenv("GRADFUSED_CPU_ISA", raising=False)
    if value is not None:
        monkeypatch.setenv("GRADFUSED_CPU_ISA", value)
    message = _build.cpu_isa_cap_ignored()
    assert (message is not None) == ignored
    if ignored:
        assert f"GRADFUSED_CPU_ISA={value!r}" in message and "generic, avx2, avx512" in message


def test_default_architectures_only_without_a_gpu(monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    _build.set_default_arch_list(gpu_present=True)  # torch then compiles for the GPUs it sees
    assert "TORCH_CUDA_ARCH_LIST" not in os.environ
    _build.set_default_arch_list(gpu_present=False)
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == _build.DEFAULT_CUDA_ARCH_LIST


@pytest.fixture
def cpu_without_kernels(monkeypatch):
    """The CPU as a device without native kernels, as a ROCm GPU or a failed CUDA build leaves CUDA."""
    monkeypatch.setitem(_native._MISSING, "cpu", "simulated: no kernels for this device")
    monkeypatch.setattr(ops, "_FALLBACK_WARNED", set())


def steps(make, n=3):
    torch.manual_seed(0)
    params = [torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True)]
    opt = make(params)
    for _ in range(n):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    return params


@pytest.mark.parametrize("make", [
    lambda ps: gf.AdamW(ps, lr=1e-2),
    lambda ps: gf.Lookahead(gf.AdamW(ps, lr=1e-2), k=2),
    lambda ps: gf.GradientAlignment(gf.AdamW(ps, lr=1e-2)),
], ids=["AdamW", "Lookahead", "GradientAlignment"])
def test_a_device_without_kernels_steps_with_the_reference_and_warns_once(cpu_without_kernels, make):
    with pytest.warns(UserWarning, match="simulated: no kernels for this device") as record:
        fallback = steps(make)
    assert len([w for w in record if "no native kernels" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = steps(make)  # warned once per device and reason, not per step or optimizer
    expected = steps(lambda ps: make(ps) if False else _reference(make, ps))
    for a, b, c in zip(fallback, again, expected):
        assert torch.equal(a, b) and torch.equal(a, c)


def _reference(make, params):
    """`make`'s optimizer with fused=False everywhere (the base and the wrapper)."""
    opt = make(params)
    for group in opt.param_groups:
        group["fused"] = False
    if hasattr(opt, "fused"):
        opt.fused = False
    return opt


def test_fused_true_refuses_a_device_without_kernels(cpu_without_kernels):
    with pytest.raises(RuntimeError, match=r"gradfused.AdamW: fused=True, but simulated: no kernels"):
        gf.AdamW([torch.randn(4, requires_grad=True)], fused=True)  # at construction, as torch.optim
    p = torch.randn(4, requires_grad=True)
    p.grad = torch.randn(4)
    before = p.detach().clone()
    opt = gf.AdamW([p])
    opt.param_groups[0]["fused"] = True  # set later: the step refuses, having written nothing
    with pytest.raises(RuntimeError, match=r"gradfused.AdamW: fused=True, but simulated: no kernels"):
        opt.step()
    assert torch.equal(p, before) and opt.state[p]["step"] == 0 and not opt.state[p]["exp_avg"].any()


def test_kernels_are_there_for_the_cpu_and_meta_not_for_other_devices():
    assert _native.kernels_missing(torch.device("cpu")) is None
    assert _native.kernels_missing(torch.device("meta")) is None
    assert "no kernels for mps" in _native.kernels_missing(torch.device("mps"))


CPU_STUB = """#include <Python.h>
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
"""


def test_a_cuda_engine_that_fails_to_compile_leaves_the_cpu_engine(tmp_path, monkeypatch):
    """setup.py's build_ext on a stand-in CPU engine and a CUDA engine that cannot compile: the build goes
    on, the CPU engine is there, and the record says why there is no CUDA engine."""
    from setuptools import Distribution
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME is None:
        pytest.skip("needs a CUDA toolkit, to fail a CUDA compile with")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cpu.cpp").write_text(CPU_STUB)
    (tmp_path / "broken.cu").write_text("this is not CUDA C++\n")
    cuda = cpp_extension.CUDAExtension("gradfused._C_cuda", ["broken.cu"])
    dist = Distribution({"name": "gradfused", "ext_modules": [cpp_extension.CppExtension("gradfused._C", ["cpu.cpp"]),
                                                               cuda],
                         "cmdclass": {"build_ext": _build.engines_build_ext(cpp_extension.BuildExtension, None)}})
    build = dist.get_command_obj("build_ext")
    build.build_lib, build.build_temp = str(tmp_path / "lib"), str(tmp_path / "temp")
    dist.run_command("build_ext")
    package = tmp_path / "lib" / "gradfused"
    assert [f.name for f in package.glob("_C.*")] and not list(package.glob("_C_cuda.*"))
    record = json.loads((package / _build.BUILD_RECORD).read_text())
    assert record["cuda_not_built"].startswith("the CUDA engine failed to build")
    assert record["torch"] == torch.__version__ and record["cuda_arch_list"] is None


def test_why_there_is_no_cuda_engine(monkeypatch):
    """An ahead-of-time build says why it made none; a first-use build compiles none without a GPU to run it."""
    monkeypatch.setattr(_native, "_build_record", lambda: {"cuda_not_built": "torch is a CPU-only build"})
    assert _native._load_cuda("ahead-of-time") == ("the ahead-of-time build made no CUDA engine: torch is a "
                                                   "CPU-only build")
    monkeypatch.setattr(_build, "cuda_build_skipped", lambda *args: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "no CUDA device is visible" in _native._load_cuda("just-in-time")
