"""docs/algorithms.md §1: the per-element pipeline around every rule, and the §4 wrappers' passes (alignment
statistics, Lookahead's slow weights)."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from .. import quantization
from .philox import element_draws


def compute_dtype(t: Tensor) -> torch.dtype:
    """Math runs in float32 for fp32/bf16/fp16 parameters and in float64 for fp64 ones."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def upcast(t: Tensor) -> Tensor:
    """A working copy in the compute dtype; never an alias of `t` (written back by write_back)."""
    return t.to(compute_dtype(t), copy=True)


def sqrt(x: Tensor) -> Tensor:
    """The correctly rounded square root, as the kernels' (IEEE) sqrt. torch's float32 sqrt on the CPU is
    sometimes one ulp off; the double square root of a float, rounded once, is exact."""
    return x.double().sqrt().to(x.dtype) if x.dtype == torch.float32 else x.sqrt()


def write_back(dst: Tensor, src: Tensor) -> None:
    dst.copy_(src)  # a 16-bit tensor is rounded once, here


def unscale(g: Tensor, grad_scale: Tensor) -> Tensor:
    """g / grad_scale, a true division as torch's fused kernels do. The scale goes in as a tensor on g's
    device: a Python number or a CPU scalar would let CUDA multiply by its reciprocal instead."""
    return g / grad_scale.to(device=g.device, dtype=g.dtype)


def as_float(x) -> float:
    return float(x.item()) if isinstance(x, Tensor) else float(x)


def step_is_skipped(found_inf: Tensor | None) -> bool:
    return found_inf is not None and found_inf.item() != 0


RuleFn = Callable[[Tensor, list, float, int], Tensor]  # (g, states, t, i) -> d, updating states in place


# NOTE: [one device per call]
# The native ops refuse a call whose tensors are on several devices before writing anything (check_lists in
# csrc/ops_shared.h). A call with a meta tensor among CPU ones dispatches to the fake implementation (meta
# outranks the CPU), and the reference would write the parameters before the odd one out: both check here
# first, as torch.optim raises on such a step.
def check_one_device(op: str, lists: dict[str, Sequence[Tensor]]) -> None:
    """Raises unless every tensor of `lists` (name -> tensors) is on the device of the first one."""
    first = next((t for tensors in lists.values() for t in tensors), None)
    for name, tensors in lists.items():
        for i, t in enumerate(tensors):
            if t.device != first.device:
                raise RuntimeError(f"{op}: {name}[{i}] is on {t.device} but {next(iter(lists))}[0] is on "
                                   f"{first.device}; all tensors of one step must be on one device")


def in_memory_order(values: Tensor, like: Tensor) -> Tensor:
    """`values` (flat, one per element) laid out like `like` in memory: element k of the flat list goes to
    the k-th memory position of torch.empty_like(like), which is where the kernels' element k lives
    (NOTE: [one stream per element] in csrc/cpu/kernels_impl.h)."""
    out = torch.empty_like(like, dtype=values.dtype)
    out.as_strided((like.numel(),), (1,)).copy_(values)
    return out


def run_pipeline(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    states: Sequence[Sequence[Tensor]],
    state_steps: Sequence[Tensor],
    rule: RuleFn,
    *,
    lr,
    weight_decay: float = 0.0,
    decoupled_weight_decay: bool = False,
    maximize: bool = False,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
    alignment_scales: Tensor | None = None,
    grad_noise: Sequence[float] | None = None,
    grad_dropout: float = 0.0,
    lr_dropout: float = 0.0,
    seed: int = 0,
    param_indices: Sequence[int] | None = None,
    state_absmax: Sequence[Tensor] | None = None,
    state_signed: Sequence[int] | None = None,
) -> None:
    """Applies docs/algorithms.md §1 to each parameter; `states[k][i]` is state k of parameter i. With
    `state_signed`, the states are 8-bit codes and `state_absmax[k * n + i]` their absmax (docs/low-bit-states.md):
    decoded before the rule, and encoded again from the new states, which the parameter's update uses."""
    check_one_device("gradfused.reference", {"params": params, "grads": grads, "state_steps": state_steps,
                                             **{f"states[{k}]": s for k, s in enumerate(states)},
                                             "state_absmax": state_absmax or []})
    if step_is_skipped(found_inf):  # step 1: a skipped AMP step changes nothing at all
        return
    n = len(params)
    lr = as_float(lr)
    noise = grad_noise is not None and grad_noise[0] > 0
    random = noise or grad_dropout > 0 or lr_dropout > 0
    for i, (param, grad) in enumerate(zip(params, grads)):
        t = state_steps[i].item() + 1
        p = upcast(param)
        g = upcast(grad)
        if random:
            index = i if param_indices is None else param_indices[i]
            normal, grad_u, lr_u = (in_memory_order(x, param) for x in
                                    element_draws(param.numel(), seed=seed, param_index=index, step=int(t)))
        if grad_scale is not None:  # 1. AMP unscale (NOTE: [GradScaler and .grad] in csrc/common/pipeline.h)
            g = unscale(g, grad_scale)
            write_back(grad, g)
        if alignment_scales is not None:  # 2. alignment scale s_T
            g = g * alignment_scales[i].item()
        if maximize:  # 3. maximize
            g = -g
        if weight_decay != 0 and not decoupled_weight_decay:  # 4. L2 weight decay
            g = g + weight_decay * p
        if noise:  # 5. gradient noise, sigma_t = sqrt(eta / (1 + t)^gamma), formed in double
            eta, gamma = grad_noise
            g = g + (math.sqrt(eta / (1 + t) ** gamma) * normal).to(g.dtype)
        if grad_dropout > 0:  # 6. gradient dropout
            g = g * (grad_u >= grad_dropout).to(g.dtype)
        if state_signed is None:
            st = [upcast(s[i]) for s in states]
        else:
            st = [quantization.dequantize_blockwise(s[i], state_absmax[k * n + i], bool(state_signed[k]),
                                                    compute_dtype(param)) for k, s in enumerate(states)]
        d = rule(g, st, t, i)  # 7. the rule
        if lr_dropout > 0:  # 8. learning-rate dropout
            d = d * (lr_u >= lr_dropout).to(d.dtype)
        if weight_decay != 0 and decoupled_weight_decay:  # 9. apply
            p = p * (1 - lr * weight_decay) - lr * d
        else:
            p = p - lr * d
        write_back(param, p)
        for k, (s, s_new) in enumerate(zip(states, st)):
            if state_signed is None:
                write_back(s[i], s_new)
            else:
                codes, absmax = quantization.quantize_blockwise(s_new, bool(state_signed[k]))
                s[i].copy_(codes)
                state_absmax[k * n + i].copy_(absmax)
    for step in state_steps:  # NOTE: [the op owns the step increment]
        step += 1


def lookahead_(params: Sequence[Tensor], slow_weights: Sequence[Tensor], *, alpha: float) -> None:
    """docs/algorithms.md §4: slow = slow + alpha (param - slow), then param = slow."""
    check_one_device("gradfused.reference.lookahead_", {"params": params, "slow_weights": slow_weights})
    for param, slow in zip(params, slow_weights):
        phi = upcast(slow)
        phi = phi + alpha * (upcast(param) - phi)
        write_back(slow, phi)
        write_back(param, phi)


def alignment_sums_(
    grads: Sequence[Tensor],
    alignment_emas: Sequence[Tensor],
    sums: Tensor,
    *,
    beta: float,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """docs/algorithms.md §4: a = β a + (1-β) g on the unscaled gradient, then <g, a>, ‖g‖², ‖a‖² written to
    sums[i] (the scale is formed from them by gradfused.optim.alignment.scales_from_sums)."""
    check_one_device("gradfused.reference.alignment_sums_", {"grads": grads, "alignment_emas": alignment_emas,
                                                              "sums": [sums]})
    if step_is_skipped(found_inf):
        return
    for i, (grad, ema) in enumerate(zip(grads, alignment_emas)):
        g = upcast(grad)
        if grad_scale is not None:
            g = unscale(g, grad_scale)
        a = upcast(ema)
        a = beta * a + (1 - beta) * g
        write_back(ema, a)
        # The sums (products included) run in float64, as the kernels': a float32 sum of a million
        # products would differ from any other order by more than the tolerance allows.
        g64, a64 = g.double(), a.double()
        sums[i, 0], sums[i, 1], sums[i, 2] = (g64 * a64).sum(), (g64 * g64).sum(), (a64 * a64).sum()
