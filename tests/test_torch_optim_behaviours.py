"""torch.optim's generic behaviours, those PyTorch's own test/test_optim.py (TestOptimRenewed) checks of
every optimizer, tested here in our own words on gradfused's six torch-named optimizers.

Each test loops over torch's configurations for the optimizer (`optim_inputs_func` of optim_db), each run
with the native kernels (fused=None), with the reference (fused=False) and, where torch's test does, with
differentiable=True. Where gradfused differs on purpose, docs/torch-optim-differences.md
says so; none of the behaviours below is such a difference.
"""
import copy
import io
import pickle

import pytest
import torch

import gradfused as gf
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest (requirements-dev.txt)")
from torch.testing._internal.common_optimizers import optim_db  # noqa: E402

OURS = {"Adam": gf.Adam, "AdamW": gf.AdamW, "RAdam": gf.RAdam, "NAdam": gf.NAdam, "RMSprop": gf.RMSprop,
        "SGD": gf.SGD}
INFOS = {info.optim_cls.__name__: info for info in optim_db if info.optim_cls.__name__ in OURS}
NAMES = sorted(OURS)
# fused=None and fused=True run the same kernels on the CPU (True differs only in refusing a device
# without them, and in GradScaler's flag): the native kernels and the reference
IMPLEMENTATIONS = ({}, {"fused": False})


def configs(name, *, differentiable=False):
    """(description, kwargs) for each of torch's CPU configurations of `name` and each implementation,
    and with differentiable=True where asked (torch's tests add it to the hooks, no-op and printing tests)."""
    out = []
    for oi in INFOS[name].optim_inputs_func(device="cpu"):
        for impl in IMPLEMENTATIONS + (({"differentiable": True},) if differentiable else ()):
            out.append((f"{oi.desc} {impl}", {**copy.deepcopy(oi.kwargs), **impl}))
    return out


def weight_and_bias(dtype=torch.float32):
    return torch.nn.Parameter(torch.randn(10, 5, dtype=dtype)), torch.nn.Parameter(torch.randn(10, dtype=dtype))


def loss_of(weight, bias, x):
    return (weight.mv(x) + bias).pow(2).sum()


def fresh_grads(params):
    for p in params:
        p.grad = torch.randn_like(p)


# ---- steps that change nothing -------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_step_without_gradients_changes_nothing(name):
    params = [torch.randn(2, 3) for _ in range(2)]  # no requires_grad, no .grad
    before = [p.clone() for p in params]
    for desc, kwargs in configs(name, differentiable=True):
        opt = OURS[name](params, **kwargs)
        assert opt.step(lambda: torch.tensor([1])) == torch.tensor([1]), desc  # the closure's loss
        assert all(torch.equal(p, q) for p, q in zip(params, before)), desc
        assert len(opt.state) == 0, desc


@pytest.mark.parametrize("name", NAMES)
def test_zero_gradients_without_weight_decay_change_nothing(name):
    for desc, kwargs in configs(name, differentiable=True):
        if kwargs.get("weight_decay", 0) != 0:
            continue
        if name == "AdamW":
            kwargs["weight_decay"] = 0  # its default decays the weights even with zero gradients
        param = torch.randn(5, 1, requires_grad=True)
        old = param.detach().clone()
        params = [param.detach()] if kwargs.get("differentiable") else [param]
        params[0].grad = torch.zeros_like(param)
        OURS[name](params, **kwargs).step()
        assert torch.equal(params[0], old), desc


@pytest.mark.parametrize("name", NAMES)
def test_gradients_are_never_written(name):
    """.grad is the user's: no step writes it in place (maximize, weight decay and the like work on a copy);
    only GradScaler's unscale writes it, as torch's fused optimizers do (test_behaviour.py)."""
    param = torch.randn(5, 1, requires_grad=True)
    for desc, kwargs in configs(name, differentiable=True):
        params = [param.detach()] if kwargs.get("differentiable") else [param]
        params[0].grad = torch.rand_like(param)
        grad = params[0].grad.clone()
        version = params[0].grad._version
        opt = OURS[name](params, **kwargs)
        for _ in range(3):  # the third step runs through the C++ step plan (NOTE: [the step plan in C++])
            opt.step()
            assert params[0].grad._version == version and torch.equal(params[0].grad, grad), desc


@pytest.mark.parametrize("name", NAMES)
def test_every_state_made_by_a_step_is_filled(name):
    for desc, kwargs in configs(name):
        model = torch.nn.Linear(5, 5, bias=False)
        opt = OURS[name](model.parameters(), **kwargs)
        model(torch.rand(2, 5)).sum().backward()
        opt.step()
        assert all(len(st) > 0 for st in opt.state.values()), desc  # SGD without momentum keeps none at all
        assert len(opt.state) == (0 if name == "SGD" and not kwargs.get("momentum") else 1), desc


@pytest.mark.parametrize("name", NAMES)
def test_optimizer_prints(name):
    for desc, kwargs in configs(name, differentiable=True):
        text = repr(OURS[name]([torch.nn.Parameter(torch.randn(2, 3))], **kwargs))
        assert text.startswith(f"{name} (") and "Parameter Group 0" in text, desc


# ---- the direction of a step, param groups, tensor lr ---------------------------------------------------
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_steps_go_the_right_way_under_schedulers(name, contiguous):
    """20 closure steps under torch's scheduler inputs (StepLR and ReduceLROnPlateau) lower the loss, or
    raise it with maximize; non-contiguous parameters too."""
    for scheduler_makers in INFOS[name].scheduler_inputs:
        for desc, kwargs in configs(name):
            if contiguous:
                weight, bias = weight_and_bias()
            else:
                weight = torch.nn.Parameter(torch.randn(10, 5, 2)[..., 0])
                bias = torch.nn.Parameter(torch.randn(10, 2)[..., 0])
            x = torch.randn(5)
            opt = OURS[name]([weight, bias], **kwargs)
            schedulers = [make(opt) for make in scheduler_makers]

            def closure():
                opt.zero_grad()
                loss = loss_of(weight, bias, x)
                loss.backward()
                return loss

            initial = closure().item()
            for _ in range(20):
                loss = opt.step(closure)
                for s in schedulers:
                    s.step(loss) if isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau) else s.step()
            final = closure().item()
            assert (final > initial) if kwargs.get("maximize") else (final < initial), desc


@pytest.mark.parametrize("name", NAMES)
def test_each_group_uses_its_own_lr_and_weight_decay(name):
    for desc, kwargs in configs(name):
        kwargs.setdefault("lr", 1e-3)
        weight, bias = weight_and_bias()
        irrelevant = torch.nn.Parameter(torch.randn(2, 2))
        irrelevant_before = irrelevant.detach().clone()
        x = torch.randn(5)
        # the defaults say lr=1e-28: a group that fell back to them would not move `weight`
        opt = OURS[name]([dict(params=[weight, bias], **kwargs), dict(params=[irrelevant], weight_decay=0.0)],
                         lr=1e-28)
        initial = loss_of(weight, bias, x).item()
        for _ in range(20):
            opt.zero_grad()
            loss = loss_of(weight, bias, x)
            loss.backward()
            irrelevant.grad = torch.rand_like(irrelevant)
            opt.step()
        assert (loss.item() > initial) if kwargs.get("maximize") else (loss.item() < initial), desc
        torch.testing.assert_close(irrelevant, irrelevant_before, msg=desc)
        assert opt.param_groups[1]["lr"] == 1e-28 and opt.param_groups[1]["weight_decay"] == 0.0


@pytest.mark.parametrize("num_dim", [0, 1, 2])
@pytest.mark.parametrize("name", NAMES)
def test_a_tensor_lr_of_any_shape_steps_as_the_float(name, num_dim):
    for desc, kwargs in configs(name):
        kwargs.pop("lr", None)
        weight, bias = weight_and_bias()
        weight_c, bias_c = (p.detach().clone().requires_grad_() for p in (weight, bias))
        x = torch.randn(5)
        with_float = OURS[name]([weight, bias], lr=1e-3, **kwargs)
        with_tensor = OURS[name]([weight_c, bias_c], lr=torch.tensor(1e-3).reshape([1] * num_dim), **kwargs)
        for _ in range(5):
            for opt, (w, b) in ((with_float, (weight, bias)), (with_tensor, (weight_c, bias_c))):
                opt.zero_grad()
                loss_of(w, b, x).backward()
                opt.step()
            torch.testing.assert_close(weight, weight_c, msg=desc)
            torch.testing.assert_close(bias, bias_c, msg=desc)


# ---- complex parameters (NOTE: [complex parameters] in gradfused/optim/base.py) ---------------------------
@pytest.mark.parametrize("name", NAMES)
def test_complex_parameters_step_as_their_real_view(name):
    """A complex parameter steps bit for bit as torch.view_as_real of it, and as torch.optim's does."""
    for desc, kwargs in configs(name):
        complex_params = [torch.randn(10, 5, dtype=torch.complex64), torch.randn(10, dtype=torch.complex64),
                          torch.randn(10, 5)]  # the last one real, in the same group
        as_real = [torch.view_as_real(p) if p.is_complex() else p for p in complex_params]
        ours = [p.clone().requires_grad_() for p in complex_params]
        real = [p.clone().requires_grad_() for p in as_real]
        theirs = [p.clone().requires_grad_() for p in complex_params]
        opt, opt_real = OURS[name](ours, **kwargs), OURS[name](real, **kwargs)
        opt_torch = INFOS[name].optim_cls(theirs, **{k: v for k, v in kwargs.items() if k != "fused"})
        for _ in range(3):
            grads = [torch.randn_like(p) for p in complex_params]
            for p, q, t, g in zip(ours, real, theirs, grads):
                p.grad, t.grad = g.clone(), g.clone()
                q.grad = torch.view_as_real(g).clone() if g.is_complex() else g.clone()
            for o in (opt, opt_real, opt_torch):
                o.step()
            for p, q, t in zip(ours, real, theirs):
                assert torch.equal(torch.view_as_real(p) if p.is_complex() else p, q), desc
                torch.testing.assert_close(p, t, msg=desc)
        for key, value in opt_torch.state[theirs[0]].items():  # states are complex, as torch's (they cross-load)
            assert value.dtype == opt.state[ours[0]][key].dtype, (desc, key)


@pytest.mark.parametrize("name", NAMES)
def test_a_complex_parameter_steps_as_its_real_and_imaginary_parts(name):
    """One complex tensor against its real and imaginary parts as two real tensors, on torch's Rosenbrock."""
    def rosenbrock(t):
        x, y = t
        return (1 - x) ** 2 + 100 * (y - x**2) ** 2

    for desc, kwargs in configs(name):
        a = torch.randn(2, dtype=torch.complex64, requires_grad=True)
        re, im = (a.real.detach().clone().requires_grad_(), a.imag.detach().clone().requires_grad_())
        opt, opt_parts = OURS[name]([a], **kwargs), OURS[name]([re, im], **kwargs)
        for _ in range(3):
            opt.zero_grad()
            opt_parts.zero_grad()
            rosenbrock(a).abs().backward()
            rosenbrock(torch.complex(re, im)).abs().backward()
            torch.testing.assert_close(a.grad.real, re.grad)
            torch.testing.assert_close(a.grad.imag, im.grad)
            opt.step()
            opt_parts.step()
            torch.testing.assert_close(a.real, re, msg=desc)
            torch.testing.assert_close(a.imag, im, msg=desc)


def test_complex_parameters_with_8_bit_states_keep_full_precision_states():
    p = torch.randn(4096, dtype=torch.complex64, requires_grad=True)
    q = torch.randn(4096, requires_grad=True)
    opt = gf.AdamW([p, q], state_bits=8)
    p.grad, q.grad = torch.randn_like(p), torch.randn_like(q)
    opt.step()
    assert opt.state[p]["exp_avg"].dtype == torch.complex64 and opt.state[q]["exp_avg"].dtype == torch.uint8


# ---- differentiable=True (NOTE: [differentiable steps] in gradfused/optim/base.py) ------------------------
DIFFERENTIABLE_CASES = {  # torch's TestDifferentiableOptimizer settings: optimizer -> (kwargs, state keys)
    "SGD": ({"momentum": 0.9, "nesterov": True}, ["momentum_buffer"]),
    "Adam": ({"amsgrad": True, "weight_decay": 0.1}, ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]),
    "AdamW": ({"amsgrad": True}, ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"]),
    "RMSprop": ({"maximize": True, "momentum": 0.9, "centered": True, "weight_decay": 0.1},
                ["square_avg", "momentum_buffer", "grad_avg"]),
    "NAdam": ({"decoupled_weight_decay": True, "weight_decay": 0.1}, ["exp_avg", "exp_avg_sq"]),
    "RAdam": ({"weight_decay": 0.1, "decoupled_weight_decay": True}, ["exp_avg", "exp_avg_sq"]),
}


@pytest.mark.parametrize("name", NAMES)
def test_differentiable_step_has_torchs_gradients(name):
    """The gradient of a function of the stepped parameter and states with respect to the parameter, its
    gradient and the states before the step: equal to torch.optim's differentiable step, in float64."""
    kwargs, keys = DIFFERENTIABLE_CASES[name]
    p0 = torch.rand(10, dtype=torch.float64, requires_grad=True)
    g0 = torch.rand(10, dtype=torch.float64, requires_grad=True)
    states = {k: torch.rand(10, dtype=torch.float64, requires_grad=True) for k in keys}
    if "grad_avg" in states:  # centred RMSprop needs square_avg > grad_avg² (as torch's test arranges)
        states["grad_avg"] = (1e-2 * torch.rand(10, dtype=torch.float64)).requires_grad_()
    scalars = {"step": torch.tensor(10.0, dtype=torch.float64)}
    if name == "NAdam":
        scalars["mu_product"] = torch.tensor(1.0, dtype=torch.float64)
    inputs = [p0, g0, *states.values()]

    def gradients(cls):
        p = p0.clone()
        p.grad = g0
        opt = cls([p], lr=0.9, differentiable=True, **kwargs)
        opt.state[p].update({k: v.clone() for k, v in {**states, **scalars}.items()})
        opt.step()
        out = (p * 1).sum() + sum((opt.state[p][k] * (i + 2)).sum() for i, k in enumerate(keys))
        return torch.autograd.grad(out, inputs)

    for ours, theirs in zip(gradients(OURS[name]), gradients(INFOS[name].optim_cls), strict=True):
        torch.testing.assert_close(ours, theirs)
    assert torch.autograd.gradcheck(lambda p, g: _differentiable_step(OURS[name], kwargs, p, g), (p0, g0))


@pytest.mark.parametrize("name", [n for n in NAMES if n != "SGD"])
def test_a_first_differentiable_step_has_torchs_gradients(name):
    """From an empty state. Not SGD: torch starts its momentum buffer at a detached copy of the gradient,
    so its gradient through the first step misses the buffer's part; gradfused's passes gradcheck (above;
    docs/torch-optim-differences.md). Under a float64 default dtype, so that torch's new `step` tensor is float64 too: its differentiable Adam
    forms the bias corrections from it, and a float32 one puts a float64 step 6e-6 off."""
    kwargs, _ = DIFFERENTIABLE_CASES[name]
    p0 = torch.rand(10, dtype=torch.float64, requires_grad=True)
    g0 = torch.rand(10, dtype=torch.float64, requires_grad=True)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ours, theirs = (torch.autograd.grad(_differentiable_step(cls, kwargs, p0, g0).pow(2).sum(), (p0, g0))
                        for cls in (OURS[name], INFOS[name].optim_cls))
    finally:
        torch.set_default_dtype(default)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)


def test_wrappers_refuse_a_differentiable_base():
    base = gf.AdamW([torch.nn.Parameter(torch.randn(3))], differentiable=True)
    for wrap in (gf.GradientAlignment, gf.Lookahead):
        with pytest.raises(ValueError, match="differentiable=True, which .* does not support"):
            wrap(base)


def _differentiable_step(cls, kwargs, p0, g0):
    p = p0.clone()
    p.grad = g0
    cls([p], lr=0.9, differentiable=True, **kwargs).step()
    return p


def test_differentiable_refuses_fused_and_8_bit_states():
    p = [torch.nn.Parameter(torch.randn(3))]
    with pytest.raises(RuntimeError, match="`fused` does not support `differentiable`"):
        gf.AdamW(p, fused=True, differentiable=True)
    with pytest.raises(ValueError, match="differentiable=True needs full-precision states"):
        gf.AdamW(p, differentiable=True, state_bits=8)


# ---- hooks --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_state_dict_hooks_see_and_shape_the_dict(name):
    def pre(optimizer):
        optimizer.state["test"] = 1

    def post(optimizer, state_dict):
        state_dict["ran_pre_hook"] = state_dict["state"].pop("test", None) == 1
        return state_dict

    for desc, kwargs in configs(name, differentiable=True):
        opt = OURS[name]([torch.rand(2, 3, requires_grad=True)], **kwargs)
        opt.register_state_dict_pre_hook(pre)
        assert opt.state_dict()["state"]["test"] == 1, desc  # a key that is no parameter's is carried along
        opt.register_state_dict_post_hook(post)
        sd = opt.state_dict()
        assert sd["ran_pre_hook"] is True and "test" not in sd["state"], desc


@pytest.mark.parametrize("name", NAMES)
def test_load_state_dict_hooks_run_in_torchs_order(name):
    """User pre-hooks run on the dict as given, before gradfused checks it (one may repair an old
    checkpoint); `prepend` puts a hook first; a returned dict is the one loaded; post-hooks run on the
    loaded optimizer. NOTE: [our part of load_state_dict and state_dict]."""
    def set_lr(optimizer, state_dict):
        state_dict["param_groups"][0]["lr"] = 0.002

    def copy_with_lr(optimizer, state_dict):
        state_dict = copy.deepcopy(state_dict)
        state_dict["param_groups"][0]["lr"] = 0.003
        return state_dict

    def post(optimizer):
        optimizer.state["loaded_lr"] = optimizer.param_groups[0]["lr"]

    for desc, kwargs in configs(name, differentiable=True):
        p = torch.rand(2, 3)  # no requires_grad: a differentiable step updates it in place
        opt = OURS[name]([p], **kwargs)
        p.grad = torch.rand_like(p)
        opt.step()
        sd = opt.state_dict()
        opt.register_load_state_dict_pre_hook(set_lr)
        opt.load_state_dict(sd)
        assert opt.param_groups[0]["lr"] == 0.002, desc
        opt.register_load_state_dict_pre_hook(copy_with_lr, prepend=True)  # runs first: set_lr has the last word
        opt.register_load_state_dict_post_hook(post)
        opt.load_state_dict(sd)
        assert opt.param_groups[0]["lr"] == 0.002 and opt.state["loaded_lr"] == 0.002, desc
        # a key that is no parameter's (the post-hook's) survives another round trip, and steps ignore it
        opt.load_state_dict(opt.state_dict())
        opt.step()


def test_a_pre_hook_can_repair_a_checkpoint_before_it_is_checked():
    p = torch.nn.Parameter(torch.randn(3))
    p.grad = torch.randn(3)
    old = gf.Adam([p])
    old.step()
    sd = old.state_dict()
    sd["state"][0]["m"] = sd["state"][0].pop("exp_avg")  # an older layout, say
    opt = gf.Adam([p])
    with pytest.raises(ValueError, match="does not use"):
        opt.load_state_dict(sd)
    opt.register_load_state_dict_pre_hook(
        lambda optimizer, sd: {**sd, "state": {0: {("exp_avg" if k == "m" else k): v for k, v in sd["state"][0].items()}}})
    opt.load_state_dict(sd)
    assert torch.equal(opt.state[p]["exp_avg"], old.state[p]["exp_avg"])


@pytest.mark.parametrize("name", NAMES)
def test_step_hooks_run_in_order_and_can_be_removed(name):
    calls = []
    handles = [register_optimizer_step_pre_hook(lambda *_: calls.append("global pre")),
               register_optimizer_step_post_hook(lambda *_: calls.append("global post"))]
    try:
        for desc, kwargs in configs(name, differentiable=True):
            calls.clear()
            opt = OURS[name]([torch.tensor([1.0, 1.0])], **kwargs)
            own = [opt.register_step_pre_hook(lambda *_: calls.append("pre")),
                   opt.register_step_post_hook(lambda *_: calls.append("post"))]
            opt.step()
            opt.step()
            assert calls == ["global pre", "pre", "post", "global post"] * 2, desc
            for h in own:
                h.remove()
            opt.step()
            assert calls[-2:] == ["global pre", "global post"], desc
    finally:
        for h in handles:
            h.remove()


# ---- copies and checkpoints ---------------------------------------------------------------------------
def _stepped(name, kwargs, steps=3, named=False):
    weight, bias = weight_and_bias()
    params = [("weight", weight), ("bias", bias)] if named else [weight, bias]
    opt = OURS[name](params, **kwargs)
    x = torch.randn(5)
    for _ in range(steps):
        opt.zero_grad()
        loss_of(weight, bias, x).backward()
        opt.step()
    return opt, (weight, bias), x


def _copy(opt, how):
    """A deepcopy, pickle or torch.save round trip of a whole optimizer (its parameters come along)."""
    if how == "deepcopy":
        return copy.deepcopy(opt)
    if how == "pickle":
        return pickle.loads(pickle.dumps(opt))
    buffer = io.BytesIO()
    torch.save(opt, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("name", NAMES)
def test_copied_optimizers_step_as_the_original(name):
    """A deep-copied, pickled or torch.save'd optimizer keeps every public attribute and steps exactly as
    the original (its parameters were copied with it)."""
    for desc, kwargs in configs(name):
        opt, params, x = _stepped(name, kwargs)
        public = {k for k in vars(opt) if not k.startswith("_")}
        for how in ("deepcopy", "pickle", "torch.save"):
            twin = _copy(opt, how)
            assert {k for k in vars(twin) if not k.startswith("_")} == public, (desc, how)
            twin_params = twin.param_groups[0]["params"]
            for o in (opt, twin):
                o.zero_grad()
            loss_of(*params, x).backward()
            loss_of(*twin_params, x).backward()
            opt.step()
            twin.step()
            for p, q in zip(params, twin_params):
                assert torch.equal(p, q), (desc, how)
            for p, q in zip(params, twin_params):
                for key, value in opt.state[p].items():
                    assert torch.equal(value, twin.state[q][key]), (desc, how, key)


@pytest.mark.parametrize("named", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("name", NAMES)
def test_state_dict_is_deterministic_and_loads_named_or_not(name, named):
    for desc, kwargs in configs(name):
        opt, (weight, bias), x = _stepped(name, kwargs, steps=10, named=named[0])
        with torch.no_grad():
            weight_c, bias_c = torch.nn.Parameter(weight.clone()), torch.nn.Parameter(bias.clone())
        twin = OURS[name]([("weight", weight_c), ("bias", bias_c)] if named[1] else [weight_c, bias_c], **kwargs)
        twin.load_state_dict(copy.deepcopy(opt.state_dict()))
        for _ in range(10):
            for o, (w, b) in ((opt, (weight, bias)), (twin, (weight_c, bias_c))):
                o.zero_grad()
                loss_of(w, b, x).backward()
                o.step()
            assert torch.equal(weight, weight_c) and torch.equal(bias, bias_c), desc

        def unnamed(sd):
            sd = copy.deepcopy(sd)
            for group in sd["param_groups"]:
                group.pop("param_names", None)
            return sd

        _assert_state_dicts_equal(unnamed(opt.state_dict()), unnamed(twin.state_dict()), desc)
        if any(named):
            assert twin.state_dict()["param_groups"][0]["param_names"] == ["weight", "bias"], desc


def _assert_state_dicts_equal(a, b, desc):
    assert a["param_groups"] == b["param_groups"], desc
    assert a["state"].keys() == b["state"].keys(), desc
    for k in a["state"]:
        assert a["state"][k].keys() == b["state"][k].keys(), desc
        for key, value in a["state"][k].items():
            assert torch.equal(value, b["state"][k][key]), (desc, key)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_saves_and_loads_with_weights_only(name):
    for desc, kwargs in configs(name) + [("8-bit states", {"state_bits": 8, "quantize_min_numel": 1})]:
        opt, _, _ = _stepped(name, kwargs)
        sd = opt.state_dict()
        buffer = io.BytesIO()
        torch.save(sd, buffer)
        buffer.seek(0)
        _assert_state_dicts_equal(torch.load(buffer, weights_only=True), sd, desc)


@pytest.mark.parametrize("name", NAMES)
def test_older_state_dicts_load(name):
    """A checkpoint without the switches torch added over time (maximize, foreach, differentiable,
    capturable, fused), with a Python number as `step`, loads and steps."""
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 2, 1, stride=2), torch.nn.BatchNorm2d(2))
    x = torch.rand(1, 4, 16, 16)
    for desc, kwargs in configs(name):
        opt = OURS[name](model.parameters(), **kwargs)
        for _ in range(3):
            opt.zero_grad()
            model(x).sum().backward()
            opt.step()
        old = copy.deepcopy(opt.state_dict())
        for group in old["param_groups"]:
            for flag in ("maximize", "foreach", "differentiable", "capturable", "fused"):
                group.pop(flag, None)
        for st in old["state"].values():
            st["step"] = st["step"].item()
        opt.load_state_dict(old)
        assert all(group["differentiable"] is False for group in opt.param_groups), desc
        assert all(st["step"].dtype == torch.float32 for st in opt.state.values()), desc
        opt.step()


def test_adamw_loads_adams_state_dict_as_adamw():
    """torch.optim.AdamW decouples its weight decay whatever the checkpoint says (Adam's says False)."""
    model = torch.nn.Linear(5, 5)
    adam_sd = gf.Adam(model.parameters()).state_dict()
    assert adam_sd["param_groups"][0]["decoupled_weight_decay"] is False
    for sd in (adam_sd, torch.optim.Adam(model.parameters()).state_dict()):
        opt = gf.AdamW(model.parameters())
        opt.load_state_dict(sd)
        assert opt.param_groups[0]["decoupled_weight_decay"] is True
    # and steps as AdamW: the same numbers as one that never loaded anything
    p = torch.nn.Parameter(torch.randn(8))
    q = p.detach().clone().requires_grad_()
    loaded, plain = gf.AdamW([p], weight_decay=0.5), gf.AdamW([q], weight_decay=0.5)
    loaded.load_state_dict({**adam_sd, "param_groups": [{**adam_sd["param_groups"][0], "params": [0],
                                                         "weight_decay": 0.5}]})
    p.grad, q.grad = torch.ones(8), torch.ones(8)
    loaded.step()
    plain.step()
    assert torch.equal(p, q)
    # an Adam loading AdamW's state_dict becomes decoupled, as torch's Adam does
    adam = gf.Adam(model.parameters())
    adam.load_state_dict(gf.AdamW(model.parameters()).state_dict())
    assert adam.param_groups[0]["decoupled_weight_decay"] is True
