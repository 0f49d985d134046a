"""What a timing needs beside it to be read: the code (version, commit, build kind), the machine (CPU
model, SIMD level, threads, GPU) and the software. Written into `bench --json` and compare's
results.json."""
from __future__ import annotations

import os
import platform
import subprocess

import torch

import gradfused

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
COMMIT_FILE = os.path.join(_PACKAGE, "_commit.txt")  # written by setup.py when installing from a checkout


def commit() -> str:
    """The git commit of this gradfused: from the checkout it runs in, else as recorded at install time."""
    try:
        out = subprocess.run(["git", "-C", os.path.dirname(_PACKAGE), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open(COMMIT_FILE) as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(device: str = "cpu") -> dict:
    """The environment of a measurement. Loads the native kernels (their build kind and SIMD level)."""
    from . import _native

    _native.load()
    native = _native.BUILD_KIND is not None
    info = {
        "gradfused": gradfused.__version__,
        "commit": commit(),
        "build": _native.BUILD_KIND or f"unavailable ({_native.LOAD_ERROR})",
        "simd": gradfused.ops.cpu_isa() if native else None,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info
