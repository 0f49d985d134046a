"""Mixed-precision options for 16-bit (bf16/fp16) parameters, shared by every gradfused optimizer:

- ``state_dtype=torch.float32``: optimizer states (momentum, moments) in fp32;
- ``master_weights=True``: an fp32 copy of each parameter in the state (``master_weight``), updated by the
  step and written back rounded to the parameter; the states are fp32 too;
- ``stochastic_rounding=True`` (bf16, without master weights): the fp32 result is rounded to bf16 at
  random, up with probability equal to the fraction cut off, so the rounding is unbiased and updates
  smaller than half a bf16 ulp are not lost. The bits come from a generator keyed by (seed, step,
  parameter index), so a run is reproducible and a resumed checkpoint continues the same stream.

NOTE: [mixed precision runs the fp32 kernel]
With any option on, a bucket of 16-bit parameters is stepped by the fp32 kernel on fp32 working copies
(the master weights themselves, or upcasts), then written back. The math is exactly that of a fused
16-bit kernel (every kernel computes in fp32 and rounds once on store), but the conversions are extra
passes over memory: fusing them into the kernels is future work.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._dtensor import local

DEFAULTS = dict(state_dtype=None, master_weights=False, stochastic_rounding=False)  # `seed`: _randomness.py
HALF = (torch.bfloat16, torch.float16)
_MASK64 = (1 << 64) - 1


def check(owner: str, group: dict) -> None:
    state_dtype = group["state_dtype"]
    if state_dtype not in (None, torch.float32, torch.float64, torch.bfloat16, torch.float16):
        raise ValueError(f"{owner}: invalid state_dtype={state_dtype!r} (expected None or a floating torch.dtype)")
    for name in ("master_weights", "stochastic_rounding"):
        if not isinstance(group[name], bool):
            raise ValueError(f"{owner}: invalid {name}={group[name]!r} (expected True or False)")
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


def uses_fp32_work(group: dict, dtype: torch.dtype) -> bool:
    return dtype in HALF and (group["master_weights"] or group["stochastic_rounding"]
                              or group["state_dtype"] == torch.float32)


def _mix(*words: int) -> int:
    """splitmix64 over the words: a 64-bit generator seed per (seed, step, parameter index)."""
    h = 0x9E3779B97F4A7C15
    for w in words:
        h = (h ^ (w & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 29
    return h & ((1 << 63) - 1)


def stochastic_round_(dst: Tensor, src: Tensor, key: tuple[int, ...]) -> None:
    """dst (bf16) = src (fp32) rounded at random: 16 random bits are added below the bf16 mantissa, then
    cut off. Unbiased for finite values; inf and NaN stay as they are."""
    gen = torch.Generator(device=src.device).manual_seed(_mix(*key))
    noise = torch.randint(0, 1 << 16, src.shape, dtype=torch.int32, device=src.device, generator=gen)
    bits = src.contiguous().view(torch.int32)
    rounded = ((bits + noise) & ~0xFFFF).view(torch.float32)
    dst.copy_(torch.where(torch.isfinite(src), rounded, src))


class Fp32Work:
    """The fp32 working copies of one bucket for the op (NOTE: [mixed precision runs the fp32 kernel])."""

    def __init__(self, group: dict, states: list[dict], lists: list[list[Tensor]]):
        """`lists` are the op's tensor lists (params, grads, states), local shards for DTensors."""
        self.group, self.states, self.targets = group, states, lists[0]
        if group["master_weights"]:
            params = [local(st["master_weight"]) for st in states]
        else:
            params = [p.float() for p in self.targets]
        grads = [g.float() for g in lists[1]]
        self.upcast_states = [(lst, [t.float() for t in lst]) if lst and lst[0].dtype != torch.float32 else (lst, lst)
                              for lst in lists[2:]]
        self.lists = [params, grads, *[work for _, work in self.upcast_states]]

    def write_back(self, param_indices: list[int]) -> None:
        params = self.lists[0]
        if self.group["stochastic_rounding"]:
            for p, work, st, index in zip(self.targets, params, self.states, param_indices):
                stochastic_round_(p, work, (self.group["seed"], int(st["step"].item()), index))
        else:
            torch._foreach_copy_(self.targets, params)
        for original, work in self.upcast_states:
            if work is not original:
                torch._foreach_copy_(original, work)
