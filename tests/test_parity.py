"""Native fused kernels vs the pure-PyTorch reference (docs/algorithms.md §5), for every optimizer and
option set of the table, every dtype, odd and degenerate shapes, a non-contiguous view and two param
groups, comparing parameters and every state tensor after each of 8 steps."""
import pytest
import torch

import gradfused as gf

from optim_table import CASES, DTYPES, all_states, tolerance

SHAPES = [(0,), (), (1,), (4097,), (2**20 + 3,), (3, 5, 7)]
STEPS = 8  # RAdam's rectification switches on at t = 6


def make_params(dtype):
    params = [torch.randn(s, dtype=torch.float64).to(dtype) for s in SHAPES]
    params.append(torch.randn(33, 20, dtype=torch.float64).to(dtype)[:, ::2])  # a non-contiguous view
    assert not params[-1].is_contiguous()
    return [p.requires_grad_() for p in params]


def clone_params(params):
    return [p.detach().clone().requires_grad_() for p in params]


def groups(params, case):
    # two groups, the second with its own lr; lr is the one hyperparameter every optimizer has
    lr = case.kwargs.get("lr", 1e-2)
    return [{"params": params[:4]}, {"params": params[4:], "lr": lr * 0.5}]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_native_matches_reference(case, dtype):
    native_params = make_params(dtype)
    ref_params = clone_params(native_params)
    native = case.make(groups(native_params, case), True)
    ref = case.make(groups(ref_params, case), False)
    for step in range(STEPS):
        for p, q in zip(native_params, ref_params):
            g = torch.randn(p.shape, dtype=torch.float64).to(dtype)
            p.grad, q.grad = g, g.clone()
        native.step()
        ref.step()
        for p, q in zip(native_params, ref_params):
            torch.testing.assert_close(p, q, **tolerance(dtype), msg=lambda m: f"step {step + 1}, param: {m}")
        native_states, ref_states = all_states(native), all_states(ref)
        assert [k for k, _ in native_states] == [k for k, _ in ref_states]
        stateless = isinstance(native, gf.SGD) and not any(map(native._keeps_state, native.param_groups))
        assert len(native_states) >= len(native_params) or (stateless and not native_states)  # at least `step` each
        for (key, a), (_, b) in zip(native_states, ref_states):
            assert a.dtype == b.dtype and a.device == b.device, key
            torch.testing.assert_close(a, b, **tolerance(dtype), msg=lambda m: f"step {step + 1}, {key}: {m}")
