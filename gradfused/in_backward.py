"""Optimizer updates made during backward.

- `sequential(model, optimizer)`: layer-wise *sequential* learning. Each `nn.Linear` / `nn.Conv2d` layer is
  updated as soon as its gradient is known, and the gradient passed further back is computed with the
  *updated* weights (standard backprop uses the old ones).
- `step_in_backward(model, optimizer)`: the standard math, with each parameter stepped (and its gradient
  freed) as soon as its gradient is accumulated, so all the gradients never exist at once.

Both need an optimizer with a per-parameter step: any gradfused optimizer, or GradientAlignment over one.
Neither works with GradScaler: the step runs before the scaler could unscale or check the gradients.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .optim import FusedOptimizer, GradientAlignment

__all__ = ["sequential", "step_in_backward", "StepInBackwardHandle"]


def _check_optimizer(optimizer, params: list[tuple[str, Tensor]], who: str) -> None:
    """`optimizer` must have a per-parameter step and own every trainable parameter in `params`."""
    base = optimizer.base if isinstance(optimizer, GradientAlignment) else optimizer
    if not isinstance(base, FusedOptimizer):
        raise TypeError(f"gradfused.{who}: the optimizer must be a gradfused optimizer (or GradientAlignment over "
                        f"one), which can step single parameters; got {type(optimizer).__name__}"
                        + (f" over {type(base).__name__}" if base is not optimizer else ""))
    owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for name, p in params:
        if p.requires_grad and id(p) not in owned:
            raise ValueError(f"gradfused.{who}: parameter {name!r} requires grad but is not in the optimizer's "
                             "param_groups")


# ---- step_in_backward -------------------------------------------------------------------------------

class StepInBackwardHandle:
    """Returned by `step_in_backward`; `remove()` restores the ordinary backward."""

    def __init__(self, hooks):
        self._hooks = hooks

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


def step_in_backward(model: nn.Module, optimizer) -> StepInBackwardHandle:
    """Steps each trainable parameter of `model` as soon as backward has accumulated its gradient, then
    frees that gradient (post-accumulate-grad hooks). The parameters end exactly as `backward(); step()`
    leaves them, but the peak memory holds one gradient rather than all of them. Do not call
    `optimizer.step()` as well; `zero_grad()` is unnecessary (the gradients are already freed)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    _check_optimizer(optimizer, named, "step_in_backward")

    def hook(p: Tensor) -> None:
        optimizer.step_parameters([p])
        p.grad = None

    return StepInBackwardHandle([p.register_post_accumulate_grad_hook(hook) for _, p in named])


# ---- sequential -------------------------------------------------------------------------------------
# A supported layer's forward becomes one autograd Function whose backward (1) computes the layer's
# weight and bias gradients, (2) steps the optimizer on them, and (3) returns the input gradient computed
# with the weights as they are now, i.e. updated. Forward activations are not recomputed.

@dataclass
class _Layer:
    module: nn.Module
    optimizer: object
    keep_grads: bool

    def update(self, grads: list[tuple[Tensor | None, Tensor]]) -> None:
        """Accumulates each gradient into `.grad` (as autograd would), steps those parameters, then frees
        the gradients unless `keep_grads`."""
        stepped = []
        for p, g in grads:
            if p is None or not p.requires_grad:
                continue
            p.grad = g if p.grad is None else p.grad + g
            stepped.append(p)
        self.optimizer.step_parameters(stepped)
        if not self.keep_grads:
            for p in stepped:
                p.grad = None


def _linear_param_grads(m: nn.Linear, x: Tensor, dy: Tensor) -> tuple[Tensor, Tensor | None]:
    dy2, x2 = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])
    return dy2.T @ x2, (dy2.sum(0) if m.bias is not None else None)


def _linear_input_grad(m: nn.Linear, x: Tensor, dy: Tensor) -> Tensor:
    return dy @ m.weight


def _conv2d_padding(m: nn.Conv2d) -> tuple[int, int] | None:
    """The symmetric zero padding the layer applies, or None when it is not expressible so."""
    if m.padding_mode != "zeros":
        return None
    if m.padding == "valid":
        return (0, 0)
    if m.padding == "same":
        totals = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]
        return None if any(t % 2 for t in totals) else tuple(t // 2 for t in totals)
    return tuple(m.padding)


def _conv2d_backward(m: nn.Conv2d, x: Tensor, dy: Tensor, mask: list[bool]):
    batched = x.dim() == 4
    x4, dy4 = (x, dy) if batched else (x.unsqueeze(0), dy.unsqueeze(0))
    gx, gw, gb = torch.ops.aten.convolution_backward(
        dy4, x4, m.weight, [m.out_channels] if m.bias is not None else None, list(m.stride),
        list(_conv2d_padding(m)), list(m.dilation), False, [0, 0], m.groups, mask)
    if gx is not None and not batched:
        gx = gx.squeeze(0)
    return gx, gw, gb


def _conv2d_param_grads(m: nn.Conv2d, x: Tensor, dy: Tensor) -> tuple[Tensor, Tensor | None]:
    _, gw, gb = _conv2d_backward(m, x, dy, [False, True, m.bias is not None])
    return gw, gb


def _conv2d_input_grad(m: nn.Conv2d, x: Tensor, dy: Tensor) -> Tensor:
    return _conv2d_backward(m, x, dy, [True, False, False])[0]


# type -> (forward, parameter gradients, input gradient with the current weights)
_RULES = {
    nn.Linear: (lambda m, x: F.linear(x, m.weight, m.bias), _linear_param_grads, _linear_input_grad),
    nn.Conv2d: (lambda m, x: m._conv_forward(x, m.weight, m.bias), _conv2d_param_grads, _conv2d_input_grad),
}


def _supported(m: nn.Module) -> bool:
    return type(m) in _RULES and (type(m) is not nn.Conv2d or _conv2d_padding(m) is not None)


class _SequentialUpdate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, layer: _Layer) -> Tensor:
        # weight and bias are inputs only so that the output requires grad; their gradients are applied
        # here, in backward, and never flow out. They are not saved: backward must see them updated.
        ctx.layer = layer
        ctx.save_for_backward(x)
        return _RULES[type(layer.module)][0](layer.module, x)

    @staticmethod
    def backward(ctx, dy: Tensor):
        (x,) = ctx.saved_tensors
        layer = ctx.layer
        m = layer.module
        _, param_grads, input_grad = _RULES[type(m)]
        gw, gb = param_grads(m, x, dy)
        layer.update([(m.weight, gw), (m.bias, gb)])
        dx = input_grad(m, x, dy) if ctx.needs_input_grad[0] else None
        return dx, None, None, None


def _sequential_forward(layer: _Layer, x: Tensor) -> Tensor:
    m = layer.module
    return _SequentialUpdate.apply(x, m.weight, m.bias, layer)


@contextlib.contextmanager
def sequential(model: nn.Module, optimizer, *, strict: bool = False, keep_grads: bool = False) -> Iterator[None]:
    """Inside the block, a forward pass and `loss.backward()` update `model`'s `nn.Linear` and `nn.Conv2d`
    layers (zero padding) sequentially, last layer first: each layer computes its weight and bias gradients,
    steps `optimizer` on its parameters at once, and passes back the input gradient computed with its
    *updated* weights. With SGD this is, per layer l from the last to the first::

        dZ = dA * f'(z_l);  W_l -= lr dZ^T a_{l-1};  b_l -= lr sum(dZ);  dA = dZ @ W_l (updated)

    Other layers behave normally: their gradients accumulate in `.grad` for an ordinary `optimizer.step()`.
    The sequential layers' gradients are freed after their update (`keep_grads=True` keeps them, for
    inspection). `strict=True` rejects a model holding trainable parameters in any other layer type.
    Run the forward inside the block; `optimizer` must own every trainable parameter of those layers.
    """
    layers = [(name, m) for name, m in model.named_modules() if _supported(m)]
    if strict:
        for name, m in model.named_modules():
            if not _supported(m) and any(p.requires_grad for p in m.parameters(recurse=False)):
                kind = f"{type(m).__name__}" + (" (non-zero padding_mode or asymmetric 'same' padding)"
                                                if type(m) is nn.Conv2d else "")
                raise ValueError(f"gradfused.sequential(strict=True): layer {name!r} is a {kind} with trainable "
                                 "parameters; only nn.Linear and nn.Conv2d layers are updated sequentially")
    named = [(f"{name}.{pn}" if name else pn, p) for name, m in layers for pn, p in m.named_parameters(recurse=False)]
    _check_optimizer(optimizer, named, "sequential")
    patched = []
    try:
        for _, m in layers:
            if any(p.requires_grad for p in m.parameters(recurse=False)):
                m.forward = functools.partial(_sequential_forward, _Layer(m, optimizer, keep_grads))
                patched.append(m)
        yield
    finally:
        for m in patched:
            del m.forward  # the instance attribute; the class's forward shows through again

