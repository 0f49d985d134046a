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


def _all_tensors(args):
    return [t for lst in args for t in lst]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_found_inf_as_a_cpu_tensor_skips_the_op(name, device):
    """GradScaler keeps found_inf on the device, but a CPU tensor is a valid argument on every device, and
    a set one skips the step there too: nothing written, no step counted."""
    _, args, kwargs = next(s for s in op_samples(device) if s[0] == name)
    before = [t.clone() for t in _all_tensors(args)]
    getattr(torch.ops.gradfused, name)(*args, **dict(kwargs, lr=1e-2, grad_scale=torch.tensor(2.0),
                                                     found_inf=torch.tensor(1.0)))
    for a, b in zip(_all_tensors(args), before, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_found_inf_as_a_cpu_tensor_skips_the_alignment_sums(device):
    _, g, (emas,), _ = lists(1, device)
    sums = torch.zeros(len(g), 3, dtype=torch.float64, device=device)
    before = [t.clone() for t in emas]
    torch.ops.gradfused.alignment_sums_(g, emas, sums, beta=0.9, found_inf=torch.tensor(1.0))
    assert all(torch.equal(a, b) for a, b in zip(emas, before)) and not sums.any()


@pytest.mark.parametrize("scale_device", ["cpu", "same"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_grad_scale_divides_and_stores_the_unscaled_gradient(name, device, scale_device):
    """NOTE: [GradScaler and .grad]: the gradients are divided by grad_scale (the correctly rounded
    quotient, not a product with 1/scale: 3 is not a power of two) and left so; the update is the one an
    unscaled call makes from those gradients, bit for bit."""
    _, args, kwargs = next(s for s in op_samples(device) if s[0] == name)
    twin = [[t.clone() for t in lst] for lst in args]
    quotient = [(g.double() / 3.0).float() for g in args[1]]
    op = getattr(torch.ops.gradfused, name)
    op(*args, **dict(kwargs, lr=1e-2, grad_scale=torch.tensor(3.0, device=device if scale_device == "same" else "cpu")))
    twin[1] = [q.clone() for q in quotient]
    op(*twin, **dict(kwargs, lr=1e-2))
    for g, q in zip(args[1], quotient):
        assert torch.equal(g, q)
    for a, b in zip(_all_tensors(args), _all_tensors(twin), strict=True):  # bitwise; the samples make some NaN
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@needs_compile
def test_opcheck_quantization_ops():
    x = torch.randn(3, 100)
    torch.library.opcheck(torch.ops.gradfused.quantize_blockwise.default, (x, True))
    codes, absmax = torch.ops.gradfused.quantize_blockwise(x, False)
    torch.library.opcheck(torch.ops.gradfused.dequantize_blockwise.default, (codes, absmax, False, torch.float64))
