"""The C++ step plan (NOTE: [the step plan in C++] in csrc/step_plan.h): a whole-optimizer step that
crosses into C++ with O(1) arguments once the same parameters have had gradients for two steps. It must
give the bits of the checked path, notice every change that the checked path would, and hold nothing it
should not."""
import copy
import gc
import weakref

import pytest
import torch

import gradfused as gf
from devices import DEVICES
from optim_table import CASES, all_states


def make_params(device="cpu", dtype=torch.float32, sizes=(7, 33, 1, 130)):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(n, generator=gen).to(device=device, dtype=dtype).requires_grad_() for n in sizes]


def set_grads(params, step):
    gen = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(p)


def uses_plan(opt) -> bool:
    opt = getattr(opt, "base", opt) if isinstance(opt, gf.GradientAlignment) else opt
    return any(entry[2] is not None for entry in opt._native_plans.values())


PLAIN = [c for c in CASES if not c.name.startswith("Align(")]


def step_and_compare(opt, params, ref, ref_params, steps, label="", edit_grads=lambda step: None):
    """For each step: the same gradients to both (then `edit_grads(step)`), `opt.step()` (the plan, once
    built) against `ref.step_parameters()` of the parameters with a gradient (always the checked path),
    and the parameters and every state compared bit for bit."""
    for step in steps:
        set_grads(params, step)
        set_grads(ref_params, step)
        edit_grads(step)
        opt.step()
        ref.step_parameters([p for p in ref_params if p.grad is not None])
        for p, q in zip(params, ref_params):
            torch.testing.assert_close(p, q, rtol=0, atol=0, msg=f"{label} step {step}")
        for (key, a), (_, b) in zip(all_states(opt), all_states(ref), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"{label} step {step}: {key}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", PLAIN, ids=str)
def test_plan_steps_give_the_bits_of_the_checked_path(case, device):
    """Every optimizer of the table, two parameter groups of two dtypes: step() through the plan against
    step_parameters() (always the checked path), bit for bit, parameters and every state."""
    a, b = make_params(device), make_params(device)
    for params in (a, b):
        params[1].data = params[1].data.double()
    opt_a = case.make([{"params": a[:2]}, {"params": a[2:], "lr": 0.05}], True)
    opt_b = case.make([{"params": b[:2]}, {"params": b[2:], "lr": 0.05}], True)
    step_and_compare(opt_a, a, opt_b, b, range(5), label=str(case))
    assert uses_plan(opt_a)
    assert not uses_plan(opt_b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("options", [dict(master_weights=True), dict(stochastic_rounding=True, seed=3),
                                     dict(state_dtype=torch.float32)], ids=["master", "stochastic", "fp32_state"])
def test_plan_runs_the_mixed_precision_options(options, device):
    """bf16 parameters with master weights (passed beside the plan's lists), stochastic rounding or fp32
    states step through the plan, with the bits of the checked path."""
    a, b = make_params(device, torch.bfloat16), make_params(device, torch.bfloat16)
    opt, ref = gf.AdamW(a, lr=1e-2, **options), gf.AdamW(b, lr=1e-2, **options)
    step_and_compare(opt, a, ref, b, range(5))
    assert uses_plan(opt)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", [c for c in CASES if c.name.startswith("Align(")], ids=str)
def test_alignment_steps_through_the_base_plan(case, device):
    """GradientAlignment over a gradfused optimizer takes its statistics from the gradients the base's
    plan gathered, then the plan's update, with the bits of the checked path (EMAs included)."""
    a, b = make_params(device), make_params(device)
    opt, ref = case.make(a, True), case.make(b, True)
    step_and_compare(opt, a, ref, b, range(5))
    assert uses_plan(opt)


def test_plan_follows_the_gradients_that_come_and_go():
    params, ref_params = make_params(), make_params()
    opt, ref = gf.AdamW(params, lr=0.1), gf.AdamW(ref_params, lr=0.1)

    def edit_grads(step):
        if step in (4, 5):  # a parameter without a gradient: the plan cannot step it
            params[2].grad = ref_params[2].grad = None
        if step == 6:  # a new gradient tensor, as after zero_grad(set_to_none=True)
            params[0].grad = params[0].grad.clone()

    step_and_compare(opt, params, ref, ref_params, range(8), edit_grads=edit_grads)
    assert uses_plan(opt)


def test_plan_refuses_a_bad_gradient_before_writing_anything():
    params = make_params()
    opt = gf.AdamW([{"params": params[:2]}, {"params": params[2:]}], lr=0.1)
    for step in range(3):
        set_grads(params, step)
        opt.step()
    assert uses_plan(opt)
    set_grads(params, 3)
    params[3].grad = params[3].grad.to_sparse()
    before = [p.detach().clone() for p in params]
    states = [s.clone() for _, s in all_states(opt)]
    with pytest.raises(RuntimeError, match=r"param group 1, params\[1\] is sparse"):
        opt.step()
    for p, b in zip(params, before):
        torch.testing.assert_close(p, b, rtol=0, atol=0)
    for (_, s), b in zip(all_states(opt), states):
        torch.testing.assert_close(s, b, rtol=0, atol=0)


def test_plan_lets_go_of_the_gradients():
    params = make_params()
    opt = gf.SGD(params, lr=0.1, momentum=0.9)
    for step in range(3):
        set_grads(params, step)
        opt.step()
    assert uses_plan(opt)
    ref = weakref.ref(params[0].grad)
    opt.zero_grad(set_to_none=True)
    gc.collect()
    assert ref() is None


def test_plan_is_rebuilt_after_load_state_dict_and_hyperparameter_changes():
    params, ref_params = make_params(), make_params()
    opt, ref = gf.Adam(params, lr=0.1), gf.Adam(ref_params, lr=0.1)
    step_and_compare(opt, params, ref, ref_params, range(3))
    opt.load_state_dict(copy.deepcopy(ref.state_dict()))  # new state tensors, equal values
    opt.param_groups[0]["amsgrad"] = ref.param_groups[0]["amsgrad"] = True  # one more state list
    opt.param_groups[0]["lr"] = ref.param_groups[0]["lr"] = 0.01
    step_and_compare(opt, params, ref, ref_params, range(3, 7))
    assert uses_plan(opt) and opt._native_plans[id(opt.param_groups[0])][0] == opt._native_plan_key(opt.param_groups[0])


def test_plan_skips_the_step_that_grad_scaler_found_inf_in():
    params = make_params()
    opt = gf.AdamW(params, lr=0.1)
    for step in range(3):
        set_grads(params, step)
        opt.step()
    before = [p.detach().clone() for p in params]
    steps = [opt.state[p]["step"].item() for p in params]
    set_grads(params, 3)
    opt.grad_scale, opt.found_inf = torch.tensor(2.0), torch.tensor(1.0)
    opt.step()
    for p, b in zip(params, before):
        torch.testing.assert_close(p, b, rtol=0, atol=0)
    assert [opt.state[p]["step"].item() for p in params] == steps
