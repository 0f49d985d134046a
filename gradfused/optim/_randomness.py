"""The random pipeline options of docs/algorithms.md §1, shared by every gradfused optimizer:

- ``grad_noise=(eta, gamma)``: adds N(0, eta / (1 + t)^gamma) noise to each gradient element (step 5);
- ``grad_dropout=q``: zeroes each gradient element with probability q, without rescaling (step 6);
- ``lr_dropout=q``: zeroes each element's update with probability q, without rescaling (step 8);
- ``seed``: the key of the counter-based generator (csrc/common/philox.h) those options and stochastic
  rounding draw from. ``None`` (the default) draws one from torch's global generator when a group that
  needs it is added, so ``torch.manual_seed`` governs it; the seed is then stored in the group, and a
  resumed checkpoint continues the same stream.

Each element draws from (seed, parameter index in the optimizer, step t, element index) alone, so a run
is bitwise reproducible for any number of threads. Options that are off cost nothing.
"""
from __future__ import annotations


import torch

from . import _validation as V

DEFAULTS = dict(grad_noise=None, grad_dropout=0.0, lr_dropout=0.0, seed=None)


def check(owner: str, group: dict) -> None:
    noise = group["grad_noise"]
    if noise is not None and not (isinstance(noise, (tuple, list)) and len(noise) == 2
                                  and all(V.is_finite_number(x) and x >= 0 for x in noise)):
        raise V.invalid(owner, "grad_noise", noise, "None or (eta, gamma), two finite numbers >= 0")
    for name in ("grad_dropout", "lr_dropout"):
        q = group[name]
        if not (V.is_finite_number(q) and 0 <= q < 1):
            raise V.invalid(owner, name, q, "a probability in [0, 1)")
    seed = group["seed"]
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64):
        raise V.invalid(owner, "seed", seed, "None or a whole number in [0, 2^64)")


def is_random(group: dict) -> bool:
    return group["grad_noise"] is not None or group["grad_dropout"] > 0 or group["lr_dropout"] > 0


def draws(group: dict) -> bool:
    """Whether the group's steps draw from the Philox streams (keyed by seed, parameter index, step and
    element): the random options, or stochastic rounding."""
    return is_random(group) or group["stochastic_rounding"]


def resolve_seed(group: dict, needed: bool) -> None:
    """Draws the group's seed from torch's global generator if it has none and `needed` (only then, so an
    optimizer without randomness leaves torch's random stream as torch.optim would)."""
    if group.get("seed") is None and needed:
        group["seed"] = int(torch.randint(0, 2**62, ()).item())


def op_kwargs(group: dict) -> dict:
    """The random options as the ops take them (the per-call `param_indices` are added by the caller)."""
    noise = group["grad_noise"]
    return dict(grad_noise=None if noise is None else [float(x) for x in noise],
                grad_dropout=float(group["grad_dropout"]), lr_dropout=float(group["lr_dropout"]),
                seed=group["seed"] or 0)
