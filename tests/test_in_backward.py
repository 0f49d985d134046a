"""gradfused.sequential (layer-wise updates in backward) and gradfused.step_in_backward."""
from __future__ import annotations

import copy
import os
import sys

import pytest
import torch
from torch import nn

import gradfused as gf
from gradfused.experiments.sequential import manual_step, mse, sigmoid_mlp
from optim_table import CASES, all_states

F64 = torch.float64


def _sgd(model, lr):
    return gf.PersistentSGD(model.parameters(), lr=lr, decay=0.0)


def _batches(steps, batch, features, classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.rand(batch, features, generator=g, dtype=F64)
        y = torch.nn.functional.one_hot(torch.randint(classes, (batch,), generator=g), classes).to(F64)
        yield x, y


# ---- sequential: the hand-written loop ----------------------------------------------------------------

@pytest.mark.parametrize("sizes", [[6, 5, 3], [6, 7, 5, 3]], ids=["2-layer", "3-layer"])
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("mode", ["sequential", "simultaneous"])
def test_sgd_equals_the_hand_written_loop(sizes, batch, mode):
    """gradfused.sequential with SGD is the original's sequential loop; plain autograd is its simultaneous one."""
    torch.manual_seed(0)
    model = sigmoid_mlp(sizes).to(F64)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    weights, biases = [m.weight.detach().clone() for m in linears], [m.bias.detach().clone() for m in linears]
    opt = _sgd(model, lr=0.7)
    for x, y in _batches(6, batch, sizes[0], sizes[-1]):
        manual_step(weights, biases, x, y, 0.7, sequential=mode == "sequential")
        if mode == "sequential":
            with gf.sequential(model, opt):
                mse(model(x), y).backward()
        else:
            mse(model(x), y).backward()
            opt.step()
            opt.zero_grad()
        for m, w, b in zip(linears, weights, biases):
            torch.testing.assert_close(m.weight, w)
            torch.testing.assert_close(m.bias, b)


def test_sequential_differs_from_simultaneous():
    """The two loops must not coincide, or the test above would not tell them apart."""
    torch.manual_seed(0)
    model = sigmoid_mlp([6, 5, 3]).to(F64)
    w = [m.weight.detach().clone() for m in model if isinstance(m, nn.Linear)]
    b = [m.bias.detach().clone() for m in model if isinstance(m, nn.Linear)]
    w2, b2 = copy.deepcopy(w), copy.deepcopy(b)
    x, y = next(_batches(1, 4, 6, 3))
    manual_step(w, b, x, y, 0.7, sequential=True)
    manual_step(w2, b2, x, y, 0.7, sequential=False)
    torch.testing.assert_close(w[1], w2[1])  # the last layer sees the same gradient either way
    assert (w[0] - w2[0]).abs().max() > 1e-6


def _conv_net():
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 4, 3, stride=2, padding="valid"),
                         nn.Tanh(), nn.Flatten(), nn.Linear(4 * 3 * 3, 5)).to(F64)


def _layerwise_by_autograd(model: nn.Sequential, x, loss_fn, lr):
    """A second transcription, for any nn.Sequential: walk the layers backwards with autograd, updating each
    Linear/Conv2d by SGD before its input gradient is formed."""
    inputs = []
    with torch.no_grad():
        for layer in model:
            inputs.append(x)
            x = layer(x)
    out = x.detach().requires_grad_()
    (grad,) = torch.autograd.grad(loss_fn(out), out)
    for layer, inp in zip(reversed(model), reversed(inputs)):
        inp = inp.detach().requires_grad_()
        params = list(layer.parameters())
        if params:
            grads = torch.autograd.grad(layer(inp), params, grad)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p -= lr * g
        (grad,) = torch.autograd.grad(layer(inp), inp, grad)
    return grad


def test_conv_net_equals_layerwise_autograd_transcription():
    torch.manual_seed(0)
    model = _conv_net()
    twin = copy.deepcopy(model)
    opt = _sgd(model, lr=0.3)
    loss_fn = lambda out: out.square().mean()  # noqa: E731
    for _ in range(3):
        x = torch.randn(2, 2, 8, 8, dtype=F64)
        xs = x.clone().requires_grad_()
        with gf.sequential(model, opt, strict=True):
            loss_fn(model(xs)).backward()
        grad_x = _layerwise_by_autograd(twin, x, loss_fn, 0.3)
        torch.testing.assert_close(xs.grad, grad_x)
        for p, q in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(p, q)


@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_lr_zero_gives_autograds_gradients(net):
    torch.manual_seed(0)
    model = sigmoid_mlp([6, 7, 5, 3]).to(F64) if net == "mlp" else _conv_net()
    twin = copy.deepcopy(model)
    x = torch.randn(4, 6, dtype=F64) if net == "mlp" else torch.randn(2, 2, 8, 8, dtype=F64)
    xs, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
    before = [p.detach().clone() for p in model.parameters()]
    with gf.sequential(model, _sgd(model, lr=0.0), keep_grads=True):
        model(xs).square().sum().backward()
    twin(xt).square().sum().backward()
    torch.testing.assert_close(xs.grad, xt.grad, rtol=0, atol=1e-12)
    for p, q, p0 in zip(model.parameters(), twin.parameters(), before):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-12)
        assert torch.equal(p, p0)


def test_other_layers_behave_normally_and_forward_is_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    opt = gf.AdamW(model.parameters(), lr=1e-2)
    with gf.sequential(model, opt):
        model(torch.randn(3, 4)).sum().backward()
    assert model[0].weight.grad is None and model[2].weight.grad is None  # applied and freed
    assert model[1].weight.grad is not None  # left for an ordinary step
    assert int(opt.state[model[0].weight]["step"]) == 1 and model[1].weight not in opt.state
    opt.step()
    assert int(opt.state[model[1].weight]["step"]) == 1 and int(opt.state[model[0].weight]["step"]) == 1
    assert "forward" not in vars(model[0])
    with pytest.raises(RuntimeError, match="inside"):
        with gf.sequential(model, opt):
            raise RuntimeError("inside")
    assert "forward" not in vars(model[0])


def test_sequential_with_gradient_alignment_and_adam():
    """Any gradfused optimizer: here Align(AdamW) on the last layer gets exactly one step per backward."""
    torch.manual_seed(0)
    model = sigmoid_mlp([4, 5, 2])
    opt = gf.GradientAlignment(gf.AdamW(model.parameters(), lr=1e-2))
    for _ in range(3):
        with gf.sequential(model, opt):
            model(torch.randn(3, 4)).sum().backward()
    assert all(int(opt.base.state[p]["step"]) == 3 for p in model.parameters())
    assert all("alignment_ema" in opt.state[p] for p in model.parameters())


# ---- bad use -----------------------------------------------------------------------------------------

def test_strict_rejects_unsupported_layers_by_name():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    with pytest.raises(ValueError, match=r"'1' is a LayerNorm"):
        with gf.sequential(model, gf.AdamW(model.parameters()), strict=True):
            pass
    conv = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="padding_mode"):
        with gf.sequential(conv, gf.AdamW(conv.parameters()), strict=True):
            pass


@pytest.mark.parametrize("api", ["sequential", "step_in_backward"])
def test_optimizer_must_own_the_parameters(api):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    opt = gf.AdamW(model[0].parameters())
    with pytest.raises(ValueError, match=r"'1.weight' requires grad but is not in the optimizer"):
        if api == "sequential":
            with gf.sequential(model, opt):
                pass
        else:
            gf.step_in_backward(model, opt)
    with pytest.raises(TypeError, match="must be a gradfused optimizer"):
        gf.step_in_backward(model, torch.optim.AdamW(model.parameters()))
    with pytest.raises(TypeError, match="got GradientAlignment over AdamW"):
        gf.step_in_backward(model, gf.GradientAlignment(torch.optim.AdamW(model.parameters())))
    assert "forward" not in vars(model[0])


def test_step_parameters_rejects_foreign_parameters_and_torch_bases():
    model = nn.Linear(3, 3)
    opt = gf.AdamW(model.parameters())
    with pytest.raises(ValueError, match=r"params\[0\] is not a parameter of this optimizer"):
        opt.step_parameters([torch.nn.Parameter(torch.zeros(3))])
    with pytest.raises(TypeError, match="needs a gradfused base"):
        gf.GradientAlignment(torch.optim.SGD(model.parameters(), lr=0.1)).step_parameters(list(model.parameters()))


# ---- step_in_backward --------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=str)
def test_step_in_backward_equals_backward_then_step(case):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 2))
    twin = copy.deepcopy(model)
    opt, opt_twin = case.make(list(model.parameters()), True), case.make(list(twin.parameters()), True)
    handle = gf.step_in_backward(model, opt)
    for _ in range(4):
        x = torch.randn(3, 5)
        model(x).square().mean().backward()
        twin(x).square().mean().backward()
        opt_twin.step()
        opt_twin.zero_grad()
        assert all(p.grad is None for p in model.parameters())
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    for (_, s), (_, t) in zip(all_states(opt), all_states(opt_twin)):
        torch.testing.assert_close(s, t, rtol=0, atol=0)
    handle.remove()
    model(torch.randn(3, 5)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())  # ordinary backward again


def test_step_in_backward_lowers_peak_memory():
    """4 x Linear(2048, 2048) fp32: 64 MiB of gradients, of which at most one layer's (16 MiB) is alive at once."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    from step_in_backward_memory import measure

    step = measure("step", 4, 2048, "adamw")
    in_backward = measure("step_in_backward", 4, 2048, "adamw")
    saved = step["peak_rise_bytes"] - in_backward["peak_rise_bytes"]
    mib = {k: r["peak_rise_bytes"] / 2**20 for k, r in (("step", step), ("step_in_backward", in_backward))}
    assert saved >= 0.6 * step["grad_bytes"], f"peak rise over the step in MiB: {mib}"
