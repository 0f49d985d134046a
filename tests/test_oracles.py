"""gradfused against independent oracles: torch.optim's own optimizers, identities of docs/algorithms.md, and a
transcription of the Gradient Alignment experiment's rule."""
import pytest
import torch

import gradfused as gf

STEPS = 8


def run_pair(make_a, make_b, shapes=((257,), (31, 7), ()), steps=STEPS, dtype=torch.float32):
    """Runs two optimizers from the same start on the same gradients; returns both parameter lists."""
    a_params = [torch.randn(s, dtype=dtype, requires_grad=True) for s in shapes]
    b_params = [p.detach().clone().requires_grad_() for p in a_params]
    a, b = make_a(a_params), make_b(b_params)
    for _ in range(steps):
        for p, q in zip(a_params, b_params):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        a.step()
        b.step()
        for p, q in zip(a_params, b_params):
            torch.testing.assert_close(p, q)
    return a, b


@pytest.mark.parametrize("fused", [True, False], ids=["native", "reference"])
@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda p, f: gf.PersistentSGD(p, lr=0.1, decay=0.9, fused=f),
         lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
        (lambda p, f: gf.PersistentSGD(p, lr=0.1, decay=0.9, nesterov=True, weight_decay=0.01, maximize=True, fused=f),
         lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, maximize=True)),
        (lambda p, f: gf.PersistentSGD(p, lr=0.1, decay=0.0, fused=f), lambda p: torch.optim.SGD(p, lr=0.1)),
        (lambda p, f: gf.Adam(p, lr=1e-2, fused=f), lambda p: torch.optim.Adam(p, lr=1e-2)),
        (lambda p, f: gf.Adam(p, lr=1e-2, weight_decay=0.1, amsgrad=True, maximize=True, fused=f),
         lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.1, amsgrad=True, maximize=True)),
        (lambda p, f: gf.AdamW(p, lr=1e-2, weight_decay=0.1, fused=f),
         lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1)),
        (lambda p, f: gf.AdamW(p, lr=1e-2, amsgrad=True, fused=f), lambda p: torch.optim.AdamW(p, lr=1e-2, amsgrad=True)),
        (lambda p, f: gf.RAdam(p, lr=1e-2, weight_decay=0.1, fused=f),
         lambda p: torch.optim.RAdam(p, lr=1e-2, weight_decay=0.1)),
        (lambda p, f: gf.RAdamW(p, lr=1e-2, weight_decay=0.1, fused=f),
         lambda p: torch.optim.RAdam(p, lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True)),
        (lambda p, f: gf.NAdam(p, lr=1e-2, weight_decay=0.1, fused=f),
         lambda p: torch.optim.NAdam(p, lr=1e-2, weight_decay=0.1)),
        (lambda p, f: gf.NAdam(p, lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True, maximize=True, fused=f),
         lambda p: torch.optim.NAdam(p, lr=1e-2, weight_decay=0.1, decoupled_weight_decay=True, maximize=True)),
        (lambda p, f: gf.RMSprop(p, lr=1e-2, fused=f), lambda p: torch.optim.RMSprop(p, lr=1e-2)),
        (lambda p, f: gf.RMSprop(p, lr=1e-2, momentum=0.9, weight_decay=0.1, fused=f),
         lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.9, weight_decay=0.1)),
        (lambda p, f: gf.RMSprop(p, lr=1e-2, momentum=0.9, centered=True, maximize=True, fused=f),
         lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.9, centered=True, maximize=True)),
    ],
    ids=["SGD-momentum", "SGD-nesterov-wd-maximize", "SGD-plain", "Adam", "Adam-amsgrad-wd-maximize", "AdamW",
         "AdamW-amsgrad", "RAdam-L2", "RAdamW", "NAdam-L2", "NAdam-decoupled-maximize", "RMSprop",
         "RMSprop-momentum-L2", "RMSprop-centered-momentum-maximize"],
)
def test_matches_torch_optim(ours, theirs, fused):
    a, b = run_pair(lambda p: ours(p, fused), theirs)
    for p, q in zip(a.param_groups[0]["params"], b.param_groups[0]["params"]):  # torch's state keys and values
        for key, value in b.state[q].items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(a.state[p][key].to(value.dtype), value, msg=key)


@pytest.mark.parametrize("fused", [True, False], ids=["native", "reference"])
def test_adema_with_alpha_zero_is_adamw(fused):
    a, _ = run_pair(lambda p: gf.AdEMA(p, lr=1e-2, alpha=0.0, weight_decay=0.05, fused=fused),
                    lambda p: gf.AdamW(p, lr=1e-2, weight_decay=0.05, fused=fused))
    assert all("exp_avg_slow" not in st for st in a.state.values())  # never allocated


@pytest.mark.parametrize("fused", [True, False], ids=["native", "reference"])
def test_gradretentionnet_adema_is_persistent_sgd(fused):
    """GradRetentionNet's original rule m = β m + (1-β) g; p -= lr (1-decay) m, transcribed."""
    lr, decay, beta = 0.05, 0.9, 0.8

    class Original(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {})

        @torch.no_grad()
        def step(self):
            for p in self.param_groups[0]["params"]:
                m = self.state[p].setdefault("m", torch.zeros_like(p))
                m.mul_(beta).add_((1 - beta) * p.grad)
                p.sub_(lr * (1 - decay) * m)

    run_pair(lambda p: gf.PersistentSGD(p, lr=lr * (1 - decay), decay=beta, dampening=beta, fused=fused), Original)


def transcribed_alignment_adam(params, beta, eps=1e-8, lr=1e-2):
    """The Gradient Alignment experiment, transcribed: scale p.grad in place by the clamped cosine of the
    gradient with an EMA of past gradients, then Adam.step()."""
    adam = torch.optim.Adam(params, lr=lr)
    emas = [torch.zeros_like(p) for p in params]

    class Transcribed:
        param_groups = adam.param_groups

        @staticmethod
        @torch.no_grad()
        def step():
            for p, a in zip(params, emas):
                a.mul_(beta).add_((1 - beta) * p.grad)
                cos = (p.grad * a).sum() / (p.grad.norm().clamp_min(eps) * a.norm().clamp_min(eps))
                p.grad.mul_(cos.clamp(0, 1))
            adam.step()

    return Transcribed


@pytest.mark.parametrize("fused", [True, False], ids=["native", "reference"])
def test_gradient_alignment_over_torch_adam_matches_transcription(fused):
    run_pair(lambda p: gf.GradientAlignment(torch.optim.Adam(p, lr=1e-2), beta=0.9, fused=fused),
             lambda p: transcribed_alignment_adam(p, beta=0.9))


def test_gradient_alignment_over_gradfused_leaves_grads_untouched():
    params = [torch.randn(100, requires_grad=True) for _ in range(3)]
    ref_params = [p.detach().clone().requires_grad_() for p in params]
    ours = gf.GradientAlignment(gf.Adam(params, lr=1e-2))
    theirs = gf.GradientAlignment(torch.optim.Adam(ref_params, lr=1e-2))
    for _ in range(STEPS):
        for p, q in zip(params, ref_params):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        grads = [p.grad.clone() for p in params]
        ours.step()
        theirs.step()
        assert all(torch.equal(p.grad, g) for p, g in zip(params, grads))
        for p, q in zip(params, ref_params):
            torch.testing.assert_close(p, q)


def test_alignment_scale_first_step_is_one_and_zero_grad_is_zero():
    p = torch.randn(50, requires_grad=True)
    q = torch.randn(50, requires_grad=True)
    opt = gf.GradientAlignment(gf.PersistentSGD([p, q], lr=1.0, decay=0.0))
    p.grad = torch.randn(50)
    q.grad = torch.zeros(50)
    p0, q0 = p.detach().clone(), q.detach().clone()
    opt.step()
    torch.testing.assert_close(p, p0 - p.grad)  # s = 1: a = (1-β) g is parallel to g
    assert torch.equal(q, q0)  # s = 0
