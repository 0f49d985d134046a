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


# NOTE: [CUDA graph capture]
# A captured step replays its kernels with the arguments they had at capture. Values on the GPU (the
# steps, a tensor lr on the device, GradScaler's scale and found_inf) are read by the kernels at each
# replay, so they follow; a value read on the host (a CPU tensor, a host-side counter) would be frozen.
# Where one would decide a captured step, the step refuses capture and names it. (A Python float lr is
# frozen too, as in torch's capturable optimizers: schedule a tensor lr on the device instead.)
def refuse_capture(owner: str, what: str) -> None:
    if not torch.compiler.is_compiling() and torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(f"{owner} cannot be captured in a CUDA graph: {what}")


def _value(x):
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        if x.device.type != "cpu" and not _reading_device_values[0]:
            return _SKIP
        return x.item()
    return x


# torch.optim's wording where it has one, so that torch's own error tests (common_optimizers) match ours.
_TORCH_PHRASES = {"lr": "Invalid learning rate", "eps": "Invalid epsilon value"}


def _shown(value) -> str:
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else repr(value)


def invalid(owner: str, name: str, value, expected: str, *, phrase: str | None = None) -> ValueError:
    """The error for a bad argument, in one format: torch's phrase, the value, and what was expected."""
    phrase = phrase or _TORCH_PHRASES.get(name, f"Invalid {name} value")
    return ValueError(f"{owner}: {phrase}: {_shown(value)} (expected {name} to be {expected})")


def is_finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_nonneg(owner: str, name: str, value) -> None:
    v = _value(value)
    if v is not _SKIP and not (is_finite_number(v) and v >= 0):
        raise invalid(owner, name, value, "a finite number >= 0")


def check_unit_interval(owner: str, name: str, value, *, closed: bool = False, phrase: str | None = None) -> None:
    """[0, 1) by default; [0, 1] when closed."""
    v = _value(value)
    if v is not _SKIP and not (is_finite_number(v) and 0 <= v and (v <= 1 if closed else v < 1)):
        raise invalid(owner, name, value, f"a finite number in [0, 1{']' if closed else ')'}", phrase=phrase)


def check_betas(owner: str, betas, count: int) -> None:
    if not isinstance(betas, (tuple, list)) or len(betas) != count:
        raise invalid(owner, "betas", betas, f"a tuple of {count} numbers in [0, 1)")
    if len({isinstance(b, torch.Tensor) for b in betas}) > 1:
        raise ValueError(f"{owner}: betas must be either both floats or both Tensors, got {betas!r}")
    for k, b in enumerate(betas):
        if isinstance(b, torch.Tensor) and b.numel() != 1:
            raise invalid(owner, f"betas[{k}]", b, "a number or a one-element tensor")
        check_unit_interval(owner, f"betas[{k}]", b, phrase=f"Invalid beta parameter at index {k}")


def check_bool(owner: str, name: str, value) -> None:
    if not isinstance(value, bool):
        raise invalid(owner, name, value, "True or False")


def check_switch(owner: str, name: str, value) -> None:
    """A torch.optim implementation switch (`fused`, `foreach`): None, True or False. 1 and 0 are refused:
    they would be stored as ints."""
    if not (value is None or isinstance(value, bool)):
        raise invalid(owner, name, value, "None, True or False")


def check_lr(owner: str, lr) -> None:
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError(f"{owner}: Tensor lr must be 1-element, got shape {tuple(lr.shape)}")
    check_nonneg(owner, "lr", lr)
