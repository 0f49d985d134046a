"""Loads the native extension: the ahead-of-time build (gradfused._C) when it is there and matches the
installed torch, else a just-in-time build of the shipped sources, compiled once and cached.

Nothing loads at `import gradfused`: the first native optimizer (or op call, or `gradfused info`) does,
so that the CLI's --help and argument errors never wait for a compile."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
import warnings

import torch

from . import _build

BUILD_KIND: str | None = None  # "ahead-of-time" or "just-in-time" once loaded
LOAD_ERROR: BaseException | None = None
_ON_LOAD: list = []  # called once the ops are registered (ops.py registers their fake implementations)


def on_load(fn) -> None:
    """Calls `fn()` once the native ops are registered: now, if they already are."""
    if BUILD_KIND is not None:
        fn()
    else:
        _ON_LOAD.append(fn)


def _loaded(kind: str) -> None:
    global BUILD_KIND
    BUILD_KIND = kind
    for fn in _ON_LOAD:
        fn()
    _ON_LOAD.clear()


def _source_dir() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(here, "_csrc"), os.path.join(os.path.dirname(here), "csrc")):
        if os.path.isfile(os.path.join(candidate, "gradfused.cpp")):
            return candidate
    raise RuntimeError("gradfused: no prebuilt extension and no C++ sources to build one from")


# torch's build lock: a file that a compiling process creates and removes. A process killed mid-compile
# leaves it behind, and every later import would wait for it forever. No compile of ours takes this long.
STALE_LOCK_SECONDS = 15 * 60


def _clear_stale_lock(build_dir: str) -> None:
    """Removes torch's build lock in `build_dir` when it is older than any compile; says so either way."""
    lock = os.path.join(build_dir, "lock")
    try:
        age = time.time() - os.path.getmtime(lock)
    except OSError:
        return  # no lock: nobody is compiling
    if age > STALE_LOCK_SECONDS:
        print(f"gradfused: removing a stale build lock ({lock}, {age / 60:.0f} min old; an earlier compile was "
              "interrupted)", file=sys.stderr, flush=True)
        with contextlib.suppress(FileNotFoundError):
            os.remove(lock)
    else:
        print(f"gradfused: waiting for another process compiling the kernels (lock {lock}; delete it if no "
              "compile is running)", file=sys.stderr, flush=True)


def jit_name(src: str) -> str:
    """The just-in-time build's name, which names its cache folder. It carries the torch build (an
    extension only runs against the torch it was built with) and the sources' location: the source tree and
    an installed copy each keep their own cache, where one shared folder made ninja rebuild everything at
    every switch between them."""
    where = hashlib.sha1(os.path.realpath(src).encode()).hexdigest()[:8]
    isas = _build.cpu_isas()  # a build of fewer instruction sets has its own folder (NOTE: [instruction sets built])
    fewer = "" if isas == _build.CPU_ISAS else "_" + "_".join(isas)
    return "gradfused_C_torch" + torch.__version__.replace(".", "_").replace("+", "_") + "_" + where + fewer


def _jit_build(name: str, sources: list[str], cuda: bool) -> None:
    from torch.utils import cpp_extension

    src = _source_dir()
    build_dir = cpp_extension._get_build_directory(name, verbose=False)
    _clear_stale_lock(build_dir)
    if not os.path.exists(os.path.join(build_dir, name + ".so")):
        engine = "CUDA" if cuda else "CPU"
        print(f"gradfused: compiling the {engine} kernels for torch {torch.__version__} (first use only; cached in "
              f"{build_dir})", file=sys.stderr, flush=True)
    cpp_extension.load(
        name=name,
        sources=[os.path.join(src, s) for s in sources],
        extra_cflags=_build.cxx_flags(),
        extra_cuda_cflags=_build.NVCC_FLAGS if cuda else None,
        extra_ldflags=_build.LINK_FLAGS,
        extra_include_paths=[src],
        build_directory=build_dir,
        is_python_module=False,
        verbose=False,
    )


def _build_record() -> dict:
    """What setup.py made of the CUDA engine (NOTE: [two engines]); {} where it did not run."""
    try:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), _build.BUILD_RECORD)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _load_cuda(kind: str) -> str | None:
    """Loads the CUDA engine next to the CPU one of build `kind`; returns why not, or None."""
    if kind == "ahead-of-time":
        not_built = _build_record().get("cuda_not_built")
        if not_built:
            return f"the ahead-of-time build made no CUDA engine: {not_built}"
        try:
            from . import _C_cuda  # noqa: F401  (importing it registers the CUDA kernels)
        except ImportError as e:
            return f"gradfused._C_cuda did not load ({e})"
        return None
    from torch.utils import cpp_extension

    skipped = _build.cuda_build_skipped(torch.version.cuda, getattr(torch.version, "hip", None),
                                         cpp_extension.CUDA_HOME)
    if skipped:
        return skipped
    if not torch.cuda.is_available():  # a first-use build compiles for the GPUs it can run on
        return "no CUDA device is visible, so the just-in-time build compiled no CUDA kernels"
    try:
        _jit_build(jit_name(_source_dir()) + "_cuda", _build.CUDA_SOURCES, cuda=True)
    except Exception as e:  # noqa: BLE001  (reported by kernels_missing and `gradfused info`)
        return f"the CUDA engine failed to compile ({type(e).__name__}: {e})"
    return None


CUDA_NOT_LOADED: str | None = "not loaded yet"  # why the CUDA engine is not there; None once it is


def load() -> None:
    """Registers torch.ops.gradfused.*; idempotent. On failure LOAD_ERROR (the CPU engine) and
    CUDA_NOT_LOADED (the CUDA engine) say why."""
    global LOAD_ERROR, CUDA_NOT_LOADED
    if BUILD_KIND is not None or LOAD_ERROR is not None:
        return
    too_old = _build.torch_too_old(torch.__version__)
    if too_old:
        LOAD_ERROR = RuntimeError(too_old)
        CUDA_NOT_LOADED = too_old
        return
    try:
        from . import _C  # noqa: F401  (importing it registers the schemas and the CPU kernels)

        kind = "ahead-of-time"
    except ImportError as e:  # not built, or built against another torch
        aot_error = e
        try:
            _jit_build(jit_name(_source_dir()), _build.cpu_sources(), cuda=False)
        except Exception as e:  # noqa: BLE001  (kept and reported by require())
            LOAD_ERROR = e
            LOAD_ERROR.__context__ = aot_error
            CUDA_NOT_LOADED = "the CPU engine, which holds the schemas, did not load"
            return
        kind = "just-in-time"
    CUDA_NOT_LOADED = _load_cuda(kind)
    _loaded(kind)
    cap_ignored = _build.cpu_isa_cap_ignored()
    if cap_ignored:
        warnings.warn(f"gradfused: {cap_ignored}", stacklevel=2)


def require() -> None:
    """Raises a clear error when the native kernels are unavailable."""
    load()
    if BUILD_KIND is None:
        raise RuntimeError(
            "gradfused: the native kernels could not be loaded or compiled "
            f"({LOAD_ERROR}); pass fused=False to use the pure-PyTorch reference implementation"
        ) from LOAD_ERROR


def available() -> bool:
    load()
    return BUILD_KIND is not None


_MISSING: dict[str, str | None] = {}  # per device type, once known


def kernels_missing(device: torch.device) -> str | None:
    """Why gradfused has no native kernels for `device`, or None where it has them."""
    if device.type not in _MISSING:
        _MISSING[device.type] = _why_no_kernels(device.type)
    return _MISSING[device.type]


def _why_no_kernels(device_type: str) -> str | None:
    load()
    if device_type == "meta":  # shapes only: the ops' fake implementations
        return None
    if BUILD_KIND is None:
        return f"the native kernels could not be loaded or compiled ({LOAD_ERROR})"
    if device_type == "cpu":
        return None
    if device_type != "cuda":
        return f"gradfused has no kernels for {device_type} tensors"
    if CUDA_NOT_LOADED:
        return CUDA_NOT_LOADED
    version = torch.ops.gradfused.cuda_driver_version()
    if version < _build.MIN_DRIVER:
        return (f"the NVIDIA driver supports CUDA {version // 1000}.{version % 1000 // 10}; gradfused's CUDA kernels "
                "need 12.1 (driver 530) or later")
    return None
