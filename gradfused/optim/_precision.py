"""Mixed-precision options, shared by every gradfused optimizer:

- ``state_dtype=torch.float32`` (bf16/fp16 parameters): optimizer states (momentum, moments) in fp32;
- ``state_dtype=torch.bfloat16`` (fp32 parameters): states in bf16, half the memory, computed in fp32 and
  rounded once on their store (to nearest, or at random with ``stochastic_rounding=True``);
- ``master_weights=True``: an fp32 copy of each parameter in the state (``master_weight``), updated by the
  step and written back rounded to the parameter; the states are fp32 too;
- ``stochastic_rounding=True`` (bf16 parameters without master weights, or the bf16 states of fp32
  parameters): the fp32 result is rounded to bf16 at random, up with probability equal to the fraction
  cut off, so the rounding is unbiased and updates smaller than half a bf16 ulp are not lost. The bits come from a generator keyed by (seed, step,
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


def bf16_states(group: dict, p: Tensor) -> bool:
    """fp32 parameter, bf16 states (state_dtype=torch.bfloat16)."""
    return p.dtype == torch.float32 and group["state_dtype"] == torch.bfloat16


def check_param(owner: str, group: dict, p: Tensor, where: str) -> None:
    """The options name dtypes that must fit the parameter's."""
    state_dtype = group["state_dtype"]
    if (state_dtype is not None and state_dtype != p.dtype and not (p.dtype in HALF and state_dtype == torch.float32)
            and not bf16_states(group, p)):
        raise ValueError(f"{owner}: state_dtype={state_dtype} does not fit {where} of dtype {p.dtype} (expected the "
                         "parameter's dtype, torch.float32 for bfloat16/float16 parameters, or torch.bfloat16 for "
                         "float32 parameters)")
    if group["stochastic_rounding"] and p.dtype != torch.bfloat16 and not bf16_states(group, p):
        raise ValueError(f"{owner}: stochastic_rounding=True needs bfloat16 parameters, or float32 parameters with "
                         f"state_dtype=torch.bfloat16, but {where} has {p.dtype}")


def state_dtype(group: dict, p: Tensor) -> torch.dtype:
    if p.dtype in HALF and (group["state_dtype"] == torch.float32 or group["master_weights"]):
        return torch.float32
    if bf16_states(group, p):
        return torch.bfloat16
    return p.dtype


def fp32_grad_ok(p: Tensor, g: Tensor) -> bool:
    """A float32 gradient of a 16-bit parameter (torch's ``param.grad_dtype = torch.float32``) is read as
    such: by the native kernels directly, through the fp32 working copies by the reference."""
    return g.dtype == torch.float32 and p.dtype in HALF


def uses_fp32_work(group: dict, dtype: torch.dtype, eight_bit: bool = False) -> bool:
    """Whether the reference steps fp32 working copies of a bucket of `dtype` parameters (8-bit states
    are decoded by the op itself)."""
    if dtype == torch.float32:
        return group["state_dtype"] == torch.bfloat16 and not eight_bit
    return dtype in HALF and (group["master_weights"] or group["stochastic_rounding"]
                              or group["state_dtype"] == torch.float32)


def stochastic_round_(dst: Tensor, src: Tensor, key: tuple[int, int, int], word: int = 0) -> None:
    """dst (bf16) = src (fp32) rounded at random: 16 random bits are added below the bf16 mantissa, then
    cut off. Unbiased for finite values; inf and NaN stay as they are. key = (seed, step t, parameter
    index); `word`: 0 for a parameter, 1 + k for its state k. The bits are the kernels' (NOTE: [stochastic
    rounding bits] in csrc/common/philox.h)."""
    seed, step, index = key
    # element k of the stream is the one at memory position k, as in the kernels (a channels_last tensor's
    # memory order is not its logical one)
    noise = in_memory_order(stochastic_rounding_bits(src.numel(), seed=seed, param_index=index, step=step,
                                                     device=src.device, word=word), src)
    bits = src.view(torch.int32)
    rounded = ((bits + noise) & ~0xFFFF).view(torch.float32)
    dst.copy_(torch.where(torch.isfinite(src), rounded, src))


def fused_kwargs(group: dict, dtype: torch.dtype, states: list[dict]) -> dict:
    """The native op's mixed-precision arguments: the master weights (of `states`) and the stochastic-rounding
    switch. The states are already in their dtype (state_dtype below)."""
    if dtype == torch.float32:  # bf16 states, rounded at random (8-bit codes have no rounding to choose)
        if not (group["stochastic_rounding"] and group["state_dtype"] == torch.bfloat16) or len(states) == 0:
            return {}  # plain loops below: Dynamo before torch 2.13 cannot trace bool(list) or any(generator)
        for value in states[0].values():
            if isinstance(value, Tensor) and value.dtype == torch.bfloat16:
                return dict(stochastic_rounding=True)
        return {}
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
        stochastic = self.group["stochastic_rounding"]
        keys = [(self.group["seed"], int(st["step"].item()), index)
                for st, index in zip(self.states, param_indices)] if stochastic else []
        if stochastic and self.targets and self.targets[0].dtype == torch.bfloat16:
            for p, work, key in zip(self.targets, params, keys):
                stochastic_round_(p, work, key)
        elif any(work is not p for work, p in zip(params, self.targets)):
            torch._foreach_copy_(self.targets, params)
        word = 0  # the kernels' state k, counting the lists in use (an empty one is a state not kept)
        for k, (original, work) in enumerate(self.upcast):
            word += int(k > 0 and len(original) > 0)
            if work is original or (k == 0 and not grads_written):
                continue
            if k > 0 and stochastic and original[0].dtype == torch.bfloat16 and \
                    self.targets[0].dtype == torch.float32:  # the bf16 states of fp32 parameters
                for state, fp32, key in zip(original, work, keys):
                    stochastic_round_(state, fp32, key, word=word)  # state k: Philox word 1 + k
            else:
                torch._foreach_copy_(original, work)
