"""Loads the native extension: the ahead-of-time build (gradfused._C) when it is there and matches the
installed torch, else a just-in-time build of the shipped sources, compiled once and cached.

Nothing loads at `import gradfused`: the first native optimizer (or op call, or `gradfused info`) does,
so that the CLI's --help and argument errors never wait for a compile."""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time

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
    return "gradfused_C_torch" + torch.__version__.replace(".", "_").replace("+", "_") + "_" + where


def _jit_build() -> None:
    from torch.utils import cpp_extension

    src = _source_dir()
    with_cuda = _build.cuda_build_wanted(torch.version.cuda, cpp_extension.CUDA_HOME)
    sources = _build.CPU_SOURCES + (_build.CUDA_SOURCES if with_cuda else [])
    defines = _build.DEFINES_CUDA if with_cuda else []
    if with_cuda and not torch.cuda.is_available():
        _build.set_default_arch_list()
    name = jit_name(src)
    build_dir = cpp_extension._get_build_directory(name, verbose=False)
    _clear_stale_lock(build_dir)
    if not os.path.exists(os.path.join(build_dir, name + ".so")):
        print(
            f"gradfused: compiling native kernels for torch {torch.__version__} (first use only; cached in {build_dir})",
            file=sys.stderr,
            flush=True,
        )
    cpp_extension.load(
        name=name,
        sources=[os.path.join(src, s) for s in sources],
        extra_cflags=_build.CXX_FLAGS + defines,
        extra_cuda_cflags=_build.NVCC_FLAGS + defines,
        extra_ldflags=_build.LINK_FLAGS,
        extra_include_paths=[src],
        build_directory=build_dir,
        is_python_module=False,
        verbose=False,
    )


def load() -> None:
    """Registers torch.ops.gradfused.*; idempotent. On failure LOAD_ERROR says why."""
    global LOAD_ERROR
    if BUILD_KIND is not None or LOAD_ERROR is not None:
        return
    try:
        from . import _C  # noqa: F401  (importing it registers the ops)

        _loaded("ahead-of-time")
        return
    except ImportError as e:  # not built, or built against another torch
        aot_error = e
    try:
        _jit_build()
    except Exception as e:  # noqa: BLE001  (kept and reported by require())
        LOAD_ERROR = e
        LOAD_ERROR.__context__ = aot_error
        return
    _loaded("just-in-time")


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
