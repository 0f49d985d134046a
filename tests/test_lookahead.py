"""Lookahead (docs/algorithms.md §4) against a transcription of the paper's algorithm, over torch.optim and
gradfused optimizers and over GradientAlignment; its fused slow-weight pass against the reference."""
import copy

import pytest
import torch

import gradfused as gf

K, ALPHA, STEPS = 3, 0.5, 10


def _grads(params, gen):
    return [torch.randn(p.shape, generator=gen).to(p.dtype) for p in params]


def _transcription(params, make_fast, grads_per_step, k=K, alpha=ALPHA):
    """Zhang et al. 2019, Algorithm 1: k fast steps from the slow weights, then φ ← φ + α(θ - φ), θ ← φ."""
    fast = make_fast(params)
    slow = [p.detach().clone() for p in params]
    for t, grads in enumerate(grads_per_step, start=1):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        fast.step()
        if t % k == 0:
            with torch.no_grad():
                for p, phi in zip(params, slow):
                    phi += alpha * (p - phi)
                    p.copy_(phi)
    return params


def _lookahead(params, make_fast, grads_per_step, fused, k=K, alpha=ALPHA):
    opt = gf.Lookahead(make_fast(params), k=k, alpha=alpha, fused=fused)
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
    return params, opt


FAST = {
    "torch.SGD": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "AdamW": lambda p: gf.AdamW(p, lr=1e-2),
    "Align(AdamW)": lambda p: gf.GradientAlignment(gf.AdamW(p, lr=1e-2)),
    "RAdamW+noise": lambda p: gf.RAdamW(p, lr=1e-2, grad_noise=(0.01, 0.55), lr_dropout=0.5, seed=1),
}


@pytest.mark.parametrize("fused", [True, False], ids=["native", "reference"])
@pytest.mark.parametrize("fast", FAST, ids=str)
def test_equals_the_papers_algorithm(fast, fused):
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=gen) for s in ((257,), (31, 7), ())]
    grads = [_grads(start, gen) for _ in range(STEPS)]
    expected = _transcription([p.clone().requires_grad_() for p in start], FAST[fast], grads)
    got, _ = _lookahead([p.clone().requires_grad_() for p in start], FAST[fast], grads, fused)
    for p, q in zip(got, expected):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_native_pass_matches_reference(dtype):
    gen = torch.Generator().manual_seed(1)
    start = [torch.randn(s, generator=gen).to(dtype) for s in ((2**16 + 3,), (5, 9), ())]
    start.append(torch.randn(9, 10, generator=gen).to(dtype)[:, ::2])  # a non-contiguous view
    grads = [_grads(start, gen) for _ in range(STEPS)]
    native, _ = _lookahead([p.clone().requires_grad_() for p in start], FAST["AdamW"], grads, True)
    ref, _ = _lookahead([p.clone().requires_grad_() for p in start], FAST["AdamW"], grads, False)
    tol = {"atol": 5e-3, "rtol": 5e-3} if dtype in (torch.bfloat16, torch.float16) else {}
    for p, q in zip(native, ref):
        torch.testing.assert_close(p, q, **tol)


def test_checkpoint_resumes_mid_cycle_bitwise():
    gen = torch.Generator().manual_seed(2)
    start = [torch.randn(s, generator=gen) for s in ((100,), (4, 5))]
    grads = [_grads(start, gen) for _ in range(STEPS)]
    straight, _ = _lookahead([p.clone().requires_grad_() for p in start], FAST["Align(AdamW)"], grads, True)
    params, opt = _lookahead([p.clone().requires_grad_() for p in start], FAST["Align(AdamW)"], grads[:4], True)
    saved = copy.deepcopy(opt.state_dict())
    resumed_params = [p.detach().clone().requires_grad_() for p in params]
    resumed = gf.Lookahead(FAST["Align(AdamW)"](resumed_params), k=7, alpha=0.1)  # k, alpha come from the file
    resumed.load_state_dict(saved)
    assert (resumed.k, resumed.alpha, resumed.base_steps) == (K, ALPHA, 4)
    for step_grads in grads[4:]:
        for p, g in zip(resumed_params, step_grads):
            p.grad = g.clone()
        resumed.step()
    for p, q in zip(resumed_params, straight):
        assert torch.equal(p, q)


def test_lr_scheduler_drives_the_base():
    p = torch.zeros(3, requires_grad=True)
    opt = gf.Lookahead(gf.AdamW([p], lr=1.0))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    p.grad = torch.ones(3)
    opt.step()
    sched.step()
    assert opt.base.param_groups[0]["lr"] == 0.5


@pytest.mark.parametrize("kwargs, message", [(dict(k=0), "Invalid k value: 0"), (dict(k=2.5), "Invalid k value: 2.5"),
                                             (dict(alpha=1.5), "Invalid alpha value: 1.5"), (dict(fused="yes"), "Invalid fused value")])
def test_bad_hyperparameters_are_named(kwargs, message):
    with pytest.raises(ValueError, match=f"gradfused.Lookahead: {message}"):
        gf.Lookahead(gf.AdamW([torch.zeros(2, requires_grad=True)]), **kwargs)


def test_rejects_what_is_not_an_optimizer_and_foreign_checkpoints():
    with pytest.raises(TypeError, match="base_optimizer must be a torch.optim.Optimizer"):
        gf.Lookahead([torch.zeros(2)])
    p = torch.zeros(2, requires_grad=True)
    opt = gf.Lookahead(gf.AdamW([p]))
    with pytest.raises(ValueError, match="expected a dict with keys 'base' and 'lookahead'"):
        opt.load_state_dict(gf.AdamW([p]).state_dict())
    other = gf.Lookahead(gf.AdamW([torch.zeros(3, requires_grad=True)]))
    other.param_groups[0]["params"][0].grad = torch.ones(3)
    other.step()
    with pytest.raises(ValueError, match="lookahead_slow of parameter 0 has shape"):
        opt.load_state_dict(other.state_dict())
