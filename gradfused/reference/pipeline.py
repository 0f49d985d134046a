"""ALGORITHMS.md §1: the per-element pipeline around every rule, and the §4 alignment statistics."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor


def compute_dtype(t: Tensor) -> torch.dtype:
    """Math runs in float32 for fp32/bf16/fp16 parameters and in float64 for fp64 ones."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def upcast(t: Tensor) -> Tensor:
    """A working copy in the compute dtype; never an alias of `t` (written back by write_back)."""
    return t.to(compute_dtype(t), copy=True)


def write_back(dst: Tensor, src: Tensor) -> None:
    dst.copy_(src)  # a 16-bit tensor is rounded once, here


def as_float(x) -> float:
    return float(x.item()) if isinstance(x, Tensor) else float(x)


def step_is_skipped(found_inf: Tensor | None) -> bool:
    return found_inf is not None and found_inf.item() != 0


RuleFn = Callable[[Tensor, list, float], Tensor]  # (g, states, t) -> d, updating states in place


def run_pipeline(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    states: Sequence[Sequence[Tensor]],
    state_steps: Sequence[Tensor],
    rule: RuleFn,
    *,
    lr,
    weight_decay: float,
    decoupled_weight_decay: bool,
    maximize: bool,
    grad_scale: Tensor | None,
    found_inf: Tensor | None,
    alignment_scales: Tensor | None,
) -> None:
    """Applies ALGORITHMS.md §1 to each parameter; `states[k][i]` is state k of parameter i."""
    if step_is_skipped(found_inf):  # step 1: a skipped AMP step changes nothing at all
        return
    lr = as_float(lr)
    for i, (param, grad) in enumerate(zip(params, grads)):
        t = state_steps[i].item() + 1
        p = upcast(param)
        g = upcast(grad)
        if grad_scale is not None:  # 1. AMP unscale
            g = g / grad_scale.item()
        if alignment_scales is not None:  # 2. alignment scale s_T
            g = g * alignment_scales[i].item()
        if maximize:  # 3. maximize
            g = -g
        if weight_decay != 0 and not decoupled_weight_decay:  # 4. L2 weight decay
            g = g + weight_decay * p
        st = [upcast(s[i]) for s in states]
        d = rule(g, st, t)  # 7. the rule
        if weight_decay != 0 and decoupled_weight_decay:  # 9. apply
            p = p * (1 - lr * weight_decay) - lr * d
        else:
            p = p - lr * d
        write_back(param, p)
        for s, s_new in zip(states, st):
            write_back(s[i], s_new)
    for step in state_steps:  # NOTE: [the op owns the step increment]
        step += 1


def alignment_sums_(
    grads: Sequence[Tensor],
    alignment_emas: Sequence[Tensor],
    sums: Tensor,
    *,
    beta: float,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """ALGORITHMS.md §4: a = β a + (1-β) g on the unscaled gradient, then <g, a>, ‖g‖², ‖a‖² written to
    sums[i] (the scale is formed from them by gradfused.optim.alignment.scales_from_sums)."""
    if step_is_skipped(found_inf):
        return
    for i, (grad, ema) in enumerate(zip(grads, alignment_emas)):
        g = upcast(grad)
        if grad_scale is not None:
            g = g / grad_scale.item()
        a = upcast(ema)
        a = beta * a + (1 - beta) * g
        write_back(ema, a)
        # The sums (products included) run in float64, as the kernels': a float32 sum of a million
        # products would differ from any other order by more than the tolerance allows.
        g64, a64 = g.double(), a.double()
        sums[i, 0], sums[i, 1], sums[i, 2] = (g64 * a64).sum(), (g64 * g64).sum(), (a64 * a64).sum()
