"""Every op and overload passes torch.library.opcheck: schema (mutation annotations), fake
implementation, autograd registration and AOT dispatch, on the CPU and (with a GPU) on CUDA."""
import pytest
import torch

import gradfused  # noqa: F401  (registers the ops and their fakes)
from devices import DEVICES
from torch_versions import needs_compile


def lists(n_states, device, sizes=(7, 33, 1)):
    params = [torch.randn(s, device=device) for s in sizes]
    grads = [torch.randn(s, device=device) for s in sizes]
    states = [[torch.rand(s, device=device) for s in sizes] for _ in range(n_states)]
    steps = [torch.zeros((), device=device) for _ in sizes]
    return params, grads, states, steps


def op_samples(device):
    p, g, (m, v, vmax), steps = lists(3, device)
    adam_kw = dict(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, decoupled_weight_decay=True)
    yield "persistent_sgd_", (p, g, m, steps), dict(decay=0.9, dampening=0.0, weight_decay=0.0,
                                                     decoupled_weight_decay=False, nesterov=True, maximize=True)
    yield "adam_", (p, g, m, v, vmax, steps), dict(adam_kw, amsgrad=True)
    yield "radam_", (p, g, m, v, steps), adam_kw
    yield "adema_", (p, g, m, v, vmax, steps), dict(beta1=0.9, beta2=0.999, beta3=0.9999, alpha=5.0, eps=1e-8,
                                                      weight_decay=0.0, t_alpha_beta3=10.0)
    mu_products = [torch.ones((), device=device) for _ in p]
    yield "nadam_", (p, g, m, v, mu_products, steps), dict(adam_kw, momentum_decay=4e-3)
    yield "rmsprop_", (p, g, m, v, vmax, steps), dict(alpha=0.99, eps=1e-8, weight_decay=0.1, momentum=0.9,
                                                        centered=True)
    # with the random pipeline steps on, and param_indices given
    yield "gradient_ascent_", (p, g, m, v, steps), dict(momentum=0.9, beta=0.999, eps=1e-8, momentum_ema=True,
                                                         nesterov=True, clip_value=1.0, lr_decay=0.99,
                                                         warmup_steps=3, grad_noise=[0.01, 0.55], grad_dropout=0.1,
                                                         lr_dropout=0.5, seed=7, param_indices=[4, 5, 6])


NAMES = [name for name, _, _ in op_samples("cpu")]


@needs_compile
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tensor_lr", [False, True], ids=["default", "tensor_lr"])
@pytest.mark.parametrize("name", NAMES)
def test_opcheck_update_ops(name, tensor_lr, device):
    _, args, kwargs = next(s for s in op_samples(device) if s[0] == name)
    packet = getattr(torch.ops.gradfused, name)
    op = packet.tensor_lr if tensor_lr else packet.default
    lr = torch.tensor(1e-2, device=device) if tensor_lr else 1e-2
    scales = torch.rand(len(args[0]), dtype=torch.float64, device=device)
    torch.library.opcheck(op, args, dict(kwargs, lr=lr, grad_scale=torch.tensor(2.0, device=device),
                                         alignment_scales=scales))


@needs_compile
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_alignment_sums(device):
    _, g, (emas,), _ = lists(1, device)
    sums = torch.zeros(len(g), 3, dtype=torch.float64, device=device)
    torch.library.opcheck(torch.ops.gradfused.alignment_sums_.default, (g, emas, sums),
                          dict(beta=0.9, grad_scale=torch.tensor(4.0, device=device)))


@needs_compile
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_lookahead(device):
    p, _, (slow,), _ = lists(1, device)
    torch.library.opcheck(torch.ops.gradfused.lookahead_.default, (p, slow), dict(alpha=0.5))


@needs_compile
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_fused_mixed_precision(device):
    """master_weights and stochastic_rounding, the arguments the kernels fuse."""
    p, g, (m, v), steps = lists(2, device)
    p16, g16 = [x.bfloat16() for x in p], [x.bfloat16() for x in g]
    kw = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, decoupled_weight_decay=True,
              amsgrad=False)
    torch.library.opcheck(torch.ops.gradfused.adam_.default, (p16, g16, m, v, [], steps),
                          dict(kw, master_weights=[x.clone() for x in p]))
    torch.library.opcheck(torch.ops.gradfused.adam_.default, (p16, g16, m, v, [], steps),
                          dict(kw, stochastic_rounding=True, seed=3))
