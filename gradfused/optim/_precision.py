"""Mixed-precision options for 16-bit (bf16/fp16) parameters, shared by every gradfused optimizer:

- ``state_dtype=torch.float32``: optimizer states (momentum, moments) in fp32;
- ``master_weights=True``: an fp32 copy of each parameter in the state (``master_weight``), updated by the
  step and written back rounded to the parameter; the states are fp32 too;
- ``stochastic_rounding=True`` (bf16, without master weights): the fp32 result is rounded to bf16 at
  random, up with probability equal to the fraction cut off, so the rounding is unbiased and updates
  smaller than half a bf16 ulp are not lost. The bits come from a generator keyed by (seed, step,
  parameter index), so a run is reproducible and a resumed checkpoint continues the same stream.

The native kernels, CPU and CUDA, fuse all three (NOTE: [mixed precision in one pass] in
csrc/common/hyper.h): one pass over memory at the ideal bytes, every value computed in fp32 and rounded
once on its store. The reference steps fp32 working copies instead (Fp32Work below: the master weights
themselves, or upcasts, written back afterwards); so does a native optimizer with `_fuse_precision =
False`, which runs the native fp32 kernel on them: the fused kernels' bitwise oracle.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..reference.philox import stochastic_rounding_bits
from ..reference.pipeline import in_memory_order
from . import _validation as V
from ._dtensor import local

DEFAULTS = dict(state_dtype=None, master_weights=False, stochastic_rounding=False)  # `seed`: _randomness.py
HALF = (torch.bfloat16, torch.float16)


def check(owner: str, group: dict) -> None:
    state_dtype = group["state_dtype"]
    if state_dtype not in (None, torch.float32, torch.float64, torch.bfloat16, torch.float16):
        raise V.invalid(owner, "state_dtype", state_dtype, "None or a floating torch.dtype")
    for name in ("master_weights", "stochastic_rounding"):
        V.check_bool(owner, name, group[name])
    if group["master_weights"] and state_dtype not in (None, torch.float32):
        raise ValueError(f"{owner}: master_weights=True keeps fp32 states; state_dtype must be None or torch.float32, "
                         f"got {state_dtype}")
    if group["master_weights"] and group["stochastic_rounding"]:
        raise ValueError(f"{owner}: stochastic_rounding is for bf16 parameters without master weights; "
                         "choose one of master_weights=True and stochastic_rounding=True")


def check_param(owner: str, group: dict, p: Tensor, where: str) -> None:
    """The options name dtypes that must fit the parameter's."""
    state_dtype = group["state_dtype"]
    if state_dtype is not None and state_dtype != p.dtype and not (p.dtype in HALF and state_dtype == torch.float32):
        raise ValueError(f"{owner}: state_dtype={state_dtype} does not fit {where} of dtype {p.dtype} (expected the "
                         "parameter's dtype, or torch.float32 for bfloat16/float16 parameters)")
    if group["stochastic_rounding"] and p.dtype != torch.bfloat16:
        raise ValueError(f"{owner}: stochastic_rounding=True needs bfloat16 parameters, but {where} has {p.dtype}")


def state_dtype(group: dict, p: Tensor) -> torch.dtype:
    if p.dtype in HALF and (group["state_dtype"] == torch.float32 or group["master_weights"]):
        return torch.float32
    return p.dtype


def fp32_grad_ok(p: Tensor, g: Tensor) -> bool:
    """A float32 gradient of a 16-bit parameter (torch's ``param.grad_dtype = torch.float32``) is read as
    such: by the native kernels directly, through the fp32 working copies by the reference."""
    return g.dtype == torch.float32 and p.dtype in HALF


def uses_fp32_work(group: dict, dtype: torch.dtype) -> bool:
    return dtype in HALF and (group["master_weights"] or group["stochastic_rounding"]
                              or group["state_dtype"] == torch.float32)


def stochastic_round_(dst: Tensor, src: Tensor, key: tuple[int, int, int]) -> None:
    """dst (bf16) = src (fp32) rounded at random: 16 random bits are added below the bf16 mantissa, then
    cut off. Unbiased for finite values; inf and NaN stay as they are. key = (seed, step t, parameter
    index): the bits are the CUDA kernels' (NOTE: [stochastic rounding bits] in csrc/common/philox.h)."""
    seed, step, index = key
    # element k of the stream is the one at memory position k, as in the kernels (a channels_last tensor's
    # memory order is not its logical one)
    noise = in_memory_order(stochastic_rounding_bits(src.numel(), seed=seed, param_index=index, step=step,
                                                     device=src.device), src)
    bits = src.view(torch.int32)
    rounded = ((bits + noise) & ~0xFFFF).view(torch.float32)
    dst.copy_(torch.where(torch.isfinite(src), rounded, src))


def fused_kwargs(group: dict, dtype: torch.dtype, states: list[dict]) -> dict:
    """The native op's mixed-precision arguments: the master weights (of `states`) and the stochastic-rounding
    switch. The states are already in their dtype (state_dtype below)."""
    if dtype not in HALF:
        return {}
    masters = [local(st["master_weight"]) for st in states] if group["master_weights"] else []
    return dict(master_weights=masters, stochastic_rounding=group["stochastic_rounding"])


class Fp32Work:
    """The fp32 working copies of one bucket for the op (the reference's way to mixed precision)."""

    def __init__(self, group: dict, states: list[dict], lists: list[list[Tensor]]):
        """`lists` are the op's tensor lists (params, grads, states), local shards for DTensors."""
        self.group, self.states, self.targets = group, states, lists[0]
        if group["master_weights"]:
            params = [local(st["master_weight"]) for st in states]
        else:
            params = [p.float() for p in self.targets]
        # the gradients, then the states (8-bit codes stay as they are: the op decodes them)
        self.upcast = [(lst, [t.float() for t in lst]) if lst and lst[0].is_floating_point() and lst[0].dtype != torch.float32
                       else (lst, lst) for lst in lists[1:]]
        self.lists = [params, *[work for _, work in self.upcast]]

    def write_back(self, param_indices: list[int], grads_written: bool) -> None:
        """`grads_written`: the op stored the unscaled gradients (NOTE: [GradScaler and .grad])."""
        params = self.lists[0]
        if self.group["stochastic_rounding"]:
            for p, work, st, index in zip(self.targets, params, self.states, param_indices):
                stochastic_round_(p, work, (self.group["seed"], int(st["step"].item()), index))
        else:
            torch._foreach_copy_(self.targets, params)
        for k, (original, work) in enumerate(self.upcast):
            if work is not original and (k > 0 or grads_written):
                torch._foreach_copy_(original, work)
