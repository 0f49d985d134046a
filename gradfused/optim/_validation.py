"""Hyperparameter checks shared by every optimizer: each error names the argument and what was expected."""
from __future__ import annotations

import contextlib
import math

import torch

_SKIP = object()
_reading_device_values = [True]


# NOTE: [no host synchronisation]
# Reading a GPU tensor's value (a tensor lr, say) on the host waits for the GPU. The checks of a group's
# hyperparameters read them when the group is made; the checks that every step repeats skip the values
# of tensors that live on a device, so step() never synchronises.
@contextlib.contextmanager
def without_device_reads():
    _reading_device_values[0] = False
    try:
        yield
    finally:
        _reading_device_values[0] = True


def _value(x):
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        if x.device.type != "cpu" and not _reading_device_values[0]:
            return _SKIP
        return x.item()
    return x


def check_nonneg(owner: str, name: str, value) -> None:
    v = _value(value)
    if v is _SKIP:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{owner}: invalid {name}={value!r} (expected a finite number >= 0)")


def check_unit_interval(owner: str, name: str, value, *, closed: bool = False) -> None:
    """[0, 1) by default; [0, 1] when closed."""
    v = _value(value)
    if v is _SKIP:
        return
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v
    ok = ok and (v <= 1 if closed else v < 1)
    if not ok:
        raise ValueError(f"{owner}: invalid {name}={value!r} (expected a finite number in [0, 1{']' if closed else ')'})")


def check_betas(owner: str, betas, count: int) -> None:
    if not isinstance(betas, (tuple, list)) or len(betas) != count:
        raise ValueError(f"{owner}: invalid betas={betas!r} (expected a tuple of {count} numbers in [0, 1))")
    for k, b in enumerate(betas):
        check_unit_interval(owner, f"betas[{k}]", b)


def check_bool(owner: str, name: str, value) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}: invalid {name}={value!r} (expected True or False)")


def check_lr(owner: str, lr) -> None:
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError(f"{owner}: invalid lr (a tensor lr must have one element, got shape {tuple(lr.shape)})")
    check_nonneg(owner, "lr", lr)
