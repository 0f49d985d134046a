"""Typed entry points to the fused ops (torch.ops.gradfused.*), with a fake implementation of each
for torch.compile and FakeTensor tracing.

The reference implementations (gradfused.reference) have the same names and signatures, so an
optimizer picks its backend with one attribute lookup."""
from __future__ import annotations

import sys
import warnings

import torch

from . import _native, quantization, reference
from .reference.pipeline import check_one_device

# Update ops in the order of their schemas in csrc/gradfused.cpp; each has a `.tensor_lr` overload
# (NOTE: [lr as a float or a Tensor]).
UPDATE_OPS = ("persistent_sgd_", "adam_", "radam_", "adema_", "nadam_", "rmsprop_", "gradient_ascent_")
ALL_OPS = UPDATE_OPS + ("alignment_sums_", "lookahead_")


def _update_op(name: str):
    def call(*tensor_lists, lr, **hyperparameters) -> None:
        _native.require()
        packet = getattr(torch.ops.gradfused, name)
        overload = packet.tensor_lr if isinstance(lr, torch.Tensor) else packet.default
        overload(*tensor_lists, lr=lr, **hyperparameters)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"torch.ops.gradfused.{name}: in-place fused update; see csrc/gradfused.cpp for the schema."
    return call


def run_plan(name: str, plan, bucket: int, *, lr, **hyperparameters) -> None:
    """Runs update op `name` on bucket `bucket` of a StepPlan, after `plan.gather()` returned True
    (NOTE: [the step plan in C++] in csrc/step_plan.h)."""
    packet = getattr(torch.ops.gradfused, name)
    overload = packet.plan_tensor_lr if isinstance(lr, torch.Tensor) else packet.plan
    overload(plan, bucket, lr=lr, **hyperparameters)


persistent_sgd_ = _update_op("persistent_sgd_")
adam_ = _update_op("adam_")
radam_ = _update_op("radam_")
adema_ = _update_op("adema_")
nadam_ = _update_op("nadam_")
rmsprop_ = _update_op("rmsprop_")
gradient_ascent_ = _update_op("gradient_ascent_")


def alignment_sums_(grads, alignment_emas, sums, *, beta, grad_scale=None, found_inf=None) -> None:
    """Updates each gradient EMA in place and writes each tensor's <g,a>, ‖g‖², ‖a‖² into `sums[i]`."""
    _native.require()
    torch.ops.gradfused.alignment_sums_(grads, alignment_emas, sums, beta=beta, grad_scale=grad_scale,
                                        found_inf=found_inf)


def lookahead_(params, slow_weights, *, alpha) -> None:
    """Lookahead's slow-weight pass, in place: slow = slow + alpha (param - slow); param = slow."""
    _native.require()
    torch.ops.gradfused.lookahead_(params, slow_weights, alpha=alpha)


_FALLBACK_WARNED: set[tuple[str, str]] = set()


def backend_for(name: str, fused: bool | None, device: torch.device, warn: bool = True):
    """The module whose ops step `device`'s tensors: this one (the native kernels) or gradfused.reference.
    fused=False asks for the reference; fused=None falls back to it, with one warning, on a device that has no
    native kernels (NOTE: [two engines]); fused=True refuses."""
    if fused is False:
        return reference
    missing = _native.kernels_missing(device)
    if missing is None:
        return sys.modules[__name__]
    if fused:
        raise RuntimeError(f"{name}: fused=True, but {missing}")
    if warn and (device.type, missing) not in _FALLBACK_WARNED:
        _FALLBACK_WARNED.add((device.type, missing))
        warnings.warn(f"gradfused: no native kernels for {device.type} tensors ({missing}); {name} steps them with "
                      "the pure-PyTorch reference, which gives the same numbers more slowly (fused=False silences "
                      "this)", stacklevel=3)
    return reference


def cpu_isa() -> str:
    """The instruction set the CPU kernels run with: "avx512", "avx2" or "generic"."""
    _native.require()
    return torch.ops.gradfused.cpu_isa()


def cuda_architectures() -> str:
    """The sm list the CUDA engine was compiled for (nvcc's, e.g. "800,900"); empty without it."""
    _native.require()
    return "" if _native.CUDA_NOT_LOADED else torch.ops.gradfused.cuda_architectures()


def quantize_blockwise(x: torch.Tensor, signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 codes laid out like x, one float32 absmax per 256 elements in memory order): the CPU engine's
    twin of gradfused.quantization.quantize_blockwise (docs/low-bit-states.md), bit for bit. CPU tensors only:
    on CUDA the update kernel encodes, and gradfused.quantization serves every device."""
    _native.require()
    return torch.ops.gradfused.quantize_blockwise(x, signed)


def dequantize_blockwise(codes: torch.Tensor, absmax: torch.Tensor, signed: bool,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The values `codes` stand for, in `dtype`: the CPU engine's twin of
    gradfused.quantization.dequantize_blockwise (CPU tensors only)."""
    _native.require()
    return torch.ops.gradfused.dequantize_blockwise(codes, absmax, signed, dtype)


_PER_TENSOR_KWARGS = ("master_weights", "state_absmax")  # lists beside the positional ones, one device too


def _fake_in_place(op) -> None:
    """The fake implementation of in-place op `op` (an OpOverload): shapes never change and nothing is
    returned, but a call with tensors on several devices is refused, as the kernels refuse it (a real meta
    tensor among CPU ones lands here: NOTE: [one device per call] in gradfused/reference/pipeline.py)."""
    names = [argument.name for argument in op._schema.arguments]

    def fake(*args, **kwargs) -> None:
        lists = {name: arg for name, arg in zip(names, args) if isinstance(arg, (list, tuple))}
        lists.update({name: kwargs[name] for name in _PER_TENSOR_KWARGS if kwargs.get(name)})
        check_one_device(f"torch.ops.gradfused.{op._schema.name.split('::')[-1]}", lists)

    return fake


def _register_fakes() -> None:
    for name in ALL_OPS:
        packet = getattr(torch.ops.gradfused, name)
        for overload in packet.overloads():
            if overload.startswith("plan"):  # eager only, composite (NOTE: [the step plan in C++])
                continue
            torch.library.register_fake(f"gradfused::{name}.{overload}" if overload != "default" else f"gradfused::{name}")(
                _fake_in_place(getattr(packet, overload))
            )
    torch.library.register_fake("gradfused::quantize_blockwise")(
        lambda x, is_signed: (torch.empty_like(x, dtype=torch.uint8),
                              x.new_empty((quantization.num_blocks(x.numel()),), dtype=torch.float32)))
    torch.library.register_fake("gradfused::dequantize_blockwise")(
        lambda codes, absmax, is_signed, dtype=torch.float32: torch.empty_like(codes, dtype=dtype))


_native.on_load(_register_fakes)
