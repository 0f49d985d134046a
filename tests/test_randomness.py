"""The random pipeline steps (docs/algorithms.md §1 steps 5, 6, 8): the Philox generator against Random123's
known answers, reproducibility across thread counts and seeds, and the statistics of noise and masks."""
import math

import pytest
import torch
import torch.distributed as dist

import gradfused as gf
from gradfused.reference.philox import element_draws, philox4x32_10

# Random123's published known-answer vectors for Philox4x32-10 (its tests/kat_vectors).
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_reference_philox_matches_random123(counter, key, expected):
    # The kernels' generator equals this one: the table's random cases agree with the reference
    # (test_parity.py), which draws from it.
    assert tuple(int(w) for w in philox4x32_10(counter, key)) == expected


def _sgd_displacement(numel, steps=1, **options):
    """PersistentSGD (plain SGD, lr 1) on a unit gradient from p = 0: -p is the gradient after the random
    steps, step by step; fresh optimizer, fixed seed."""
    p = torch.zeros(numel, requires_grad=True)
    opt = gf.PersistentSGD([p], lr=1.0, decay=0.0, seed=11, **options)
    out = []
    for _ in range(steps):
        before = p.detach().clone()
        p.grad = torch.ones(numel)
        opt.step()
        out.append(before - p.detach())
    return out


@pytest.mark.parametrize("t", [1, 2, 3])
def test_noise_variance_follows_the_schedule(t):
    eta, gamma, n = 0.3, 0.55, 400_000
    noise = _sgd_displacement(n, steps=t, grad_noise=(eta, gamma))[-1] - 1.0
    var = eta / (1 + t) ** gamma
    # sample mean and variance of n Gaussians: standard errors sqrt(var/n) and var*sqrt(2/n); 5 of them
    assert abs(noise.mean().item()) < 5 * math.sqrt(var / n)
    assert abs(noise.var().item() / var - 1) < 5 * math.sqrt(2 / n)


@pytest.mark.parametrize("option", ["grad_dropout", "lr_dropout"])
@pytest.mark.parametrize("q", [0.1, 0.5, 0.9])
def test_dropout_keeps_each_element_with_probability_one_minus_q(option, q):
    n = 400_000
    kept = _sgd_displacement(n, **{option: q})[0]
    assert set(kept.unique().tolist()) <= {0.0, 1.0}  # no rescaling
    assert abs(kept.mean().item() - (1 - q)) < 5 * math.sqrt(q * (1 - q) / n)


def test_the_two_dropouts_and_the_noise_draw_independent_numbers():
    n = 200_000
    grad_kept, = _sgd_displacement(n, grad_dropout=0.5)
    lr_kept, = _sgd_displacement(n, lr_dropout=0.5)
    both = (grad_kept * lr_kept).mean().item()
    assert abs(both - 0.25) < 5 * math.sqrt(0.25 * 0.75 / n)


def test_streams_differ_by_step_parameter_and_seed():
    a = _sgd_displacement(10_000, steps=2, grad_noise=(1.0, 0.0))
    assert not torch.equal(a[0], a[1])  # by step
    p, q = torch.zeros(10_000, requires_grad=True), torch.zeros(10_000, requires_grad=True)
    opt = gf.PersistentSGD([p, q], lr=1.0, decay=0.0, grad_noise=(1.0, 0.0), seed=11)
    p.grad, q.grad = torch.ones(10_000), torch.ones(10_000)
    opt.step()
    assert not torch.equal(p, q)  # by parameter
    assert torch.equal(p.detach(), -a[0])  # the first parameter of both optimizers: the same stream
    other = gf.PersistentSGD([r := torch.zeros(10_000, requires_grad=True)], lr=1.0, decay=0.0,
                             grad_noise=(1.0, 0.0), seed=12)
    r.grad = torch.ones(10_000)
    other.step()
    assert not torch.equal(r, p)  # by seed


def _random_run(threads):
    original = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        params = [torch.randn(n, generator=gen).requires_grad_() for n in (3 * 2**15 + 5, 100_003, 17)]
        opt = gf.RAdamW(params, lr=1e-2, grad_noise=(0.01, 0.55), grad_dropout=0.2, lr_dropout=0.5, seed=5)
        for _ in range(7):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        return [p.detach().clone() for p in params]
    finally:
        torch.set_num_threads(original)


def test_bitwise_identical_across_thread_counts():
    for a, b in zip(_random_run(1), _random_run(2), strict=True):
        assert torch.equal(a, b)


def test_element_index_follows_memory_layout():
    """A channels_last parameter draws by memory position in the kernels and in the reference alike."""
    p = torch.zeros(2, 3, 4, 5).to(memory_format=torch.channels_last).requires_grad_()
    q = p.detach().clone().requires_grad_()
    assert q.stride() == p.stride()
    for param, fused in ((p, True), (q, False)):
        opt = gf.PersistentSGD([param], lr=1.0, decay=0.0, grad_noise=(1.0, 0.0), seed=3, fused=fused)
        param.grad = torch.zeros_like(param)
        opt.step()
    torch.testing.assert_close(p, q)
    normal, _, _ = element_draws(p.numel(), seed=3, param_index=0, step=1)
    torch.testing.assert_close(p.detach().permute(0, 2, 3, 1).flatten(), -normal.float())


def test_seed_none_is_drawn_from_torch_and_stored():
    params = [torch.zeros(3, requires_grad=True)]
    torch.manual_seed(1)
    a = gf.AdamW(params, grad_noise=(0.1, 0.0))
    torch.manual_seed(1)
    b = gf.AdamW(params, grad_noise=(0.1, 0.0))
    torch.manual_seed(2)
    c = gf.AdamW(params, grad_noise=(0.1, 0.0))
    seed = a.param_groups[0]["seed"]
    assert isinstance(seed, int) and seed == b.param_groups[0]["seed"] != c.param_groups[0]["seed"]
    assert a.state_dict()["param_groups"][0]["seed"] == seed  # a checkpoint continues the stream
    state = torch.get_rng_state()
    assert gf.AdamW(params).param_groups[0]["seed"] is None  # no randomness: torch's stream untouched
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("kwargs, message", [
    (dict(grad_noise=(0.1,)), "Invalid grad_noise value"), (dict(grad_noise=(-1.0, 0.5)), "Invalid grad_noise value"),
    (dict(grad_noise=(math.nan, 0.5)), "Invalid grad_noise value"), (dict(grad_dropout=1.0), "Invalid grad_dropout value"),
    (dict(lr_dropout=-0.1), "Invalid lr_dropout value"), (dict(seed=2**64), "Invalid seed value"),
    (dict(seed=1.5), "Invalid seed value"),
])
def test_bad_random_options_are_named(kwargs, message):
    with pytest.raises(ValueError, match=f"gradfused.AdamW: {message}"):
        gf.AdamW([torch.zeros(3, requires_grad=True)], **kwargs)


def test_sharded_parameters_reject_random_options_before_writing(tmp_path):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        plain = torch.zeros(4, requires_grad=True)
        sharded = torch.nn.Parameter(distribute_tensor(torch.zeros(4, 2), mesh, [Shard(0)]))
        opt = gf.AdamW([{"params": [plain]}, {"params": [sharded], "lr_dropout": 0.5}], seed=1)
        plain.grad = torch.ones(4)
        sharded.grad = distribute_tensor(torch.ones(4, 2), mesh, [Shard(0)])
        with pytest.raises(ValueError, match="sharded DTensor; grad_noise, grad_dropout, lr_dropout and "
                                             "stochastic_rounding"):
            opt.step()
        assert torch.equal(plain.detach(), torch.zeros(4)) and not opt.state  # nothing was written
        # stochastic rounding keys its bits by the element's index too
        rounded = torch.nn.Parameter(distribute_tensor(torch.zeros(4, 2, dtype=torch.bfloat16), mesh, [Shard(0)]))
        opt = gf.AdamW([rounded], stochastic_rounding=True, seed=1)
        rounded.grad = distribute_tensor(torch.ones(4, 2, dtype=torch.bfloat16), mesh, [Shard(0)])
        with pytest.raises(ValueError, match="stochastic_rounding key each element"):
            opt.step()
        assert not opt.state
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("fused", [True, False], ids=["native", "reference"])
def test_random_draws_keep_changing_past_2_to_the_24_steps(fused):
    """NOTE: [exact step counts]: a group that draws counts its steps in float64. A float32 count stops
    at 2^24 (2^24 + 1 rounds back to 2^24), and every later step drew the same masks again."""
    p = torch.zeros(1000, requires_grad=True)
    opt = gf.Adam([p], lr=1.0, lr_dropout=0.5, seed=1, fused=fused)
    p.grad = torch.ones(1000)
    opt.step()
    assert opt.state[p]["step"].dtype == torch.float64
    opt.state[p]["step"].fill_(2**24)
    masks = []
    for _ in range(2):
        before = p.detach().clone()
        opt.step()
        masks.append(p.detach() != before)
    assert opt.state[p]["step"].item() == 2**24 + 2
    assert not torch.equal(masks[0], masks[1])


def test_plain_groups_keep_torchs_float32_step():
    p = torch.zeros(3, requires_grad=True)
    opt = gf.Adam([p])
    p.grad = torch.ones(3)
    opt.step()
    assert opt.state[p]["step"].dtype == torch.float32
