"""The block-wise 8-bit quantization scheme (docs/low-bit-states.md): the maps, the rounding rule and its
guarantees, and the native ops (csrc/common/quantize.h) against the pure-PyTorch reference
(gradfused/quantization.py), bit for bit."""
import hashlib

import pytest
import torch

import gradfused as gf
from gradfused import quantization as Q

SIZES = [1, 255, 256, 257, 1000, 4097]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_codes_are_the_documented_base_eight_map(signed):
    """NOTE: [the 8-bit code]: code 0 stands for 0; below the top code (1) each group e = 0, 1, ... holds
    2^(G-e) evenly spaced values of (8^-(e+1), 8^-e], the upper ends of the steps, down to 8^-G; signed
    codes add a sign bit."""
    values = Q.code_values(signed).double()
    top, groups = Q.magnitude_top(signed), Q.code_groups(signed)
    assert top == (127 if signed else 255)
    magnitudes = values[: top + 1]
    assert magnitudes[0] == 0 and magnitudes[top] == 1
    assert bool((magnitudes[1:] > magnitudes[:-1]).all())  # strictly increasing
    for e in range(groups + 1):
        count = 2 ** (groups - e)
        in_group = magnitudes[count: 2 * count]  # the codes whose leading one is bit groups - e
        steps = torch.arange(1, count + 1, dtype=torch.float64) / count
        assert torch.equal(in_group, 8.0 ** -e * (1 / 8 + 7 / 8 * steps)), e
    assert magnitudes[1].item() == 8.0 ** -groups
    if signed:
        assert torch.equal(values[128:], -magnitudes[:128])
    assert torch.equal(Q.code_values(signed, torch.float64), values)


def _samples(n, dtype, seed=0):
    """Magnitudes over many decades, both signs, and blocks of zeros, a NaN, an inf and a tiny value
    (1e-30: normal in float32, 0 in float16). edge_blocks has the exact edges."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen, dtype=torch.float64) * 10.0 ** (-8 * torch.rand(n, generator=gen, dtype=torch.float64))
    if n > 600:
        x[256:512] = 0
        x[520] = float("nan")
        x[560] = float("inf")
        x[580] = 1e-30
    return x.to(dtype)


def edge_blocks(signed):
    """float32 blocks of 256 at the edges of NOTE: [the 8-bit code]: every code's value exactly (absmax 1,
    -0 included); ±8^-e and the values either side of each group boundary, 9/16 of the smallest value and
    its neighbours, ±0, denormals, ±inf and NaN beside a finite absmax; a block of denormals (a denormal
    absmax); a block of values near float32's largest; zeros. Magnitudes only where unsigned."""
    values = Q.code_values(signed)
    smallest = values[1].item()
    groups = Q.code_groups(signed)
    bounds = torch.tensor([8.0 ** -e for e in range(groups + 3)], dtype=torch.float32)
    near = [bounds, torch.nextafter(bounds, torch.zeros_like(bounds)), torch.nextafter(bounds, bounds * 2)]
    ninth = torch.tensor([9 / 16 * smallest], dtype=torch.float32)
    special = torch.tensor([0.0, -0.0, 1e-40, -1e-40, 2.0 ** -149, float("inf"), float("-inf"), float("nan"), 0.75])
    edges = torch.cat(near + [-b for b in near] + [ninth, torch.nextafter(ninth, ninth * 2), torch.nextafter(ninth, ninth * 0), special])
    gen = torch.Generator().manual_seed(5)
    fill = lambda n, scale: torch.randn(n, generator=gen) * scale
    blocks = [values, torch.cat([edges, fill(256 - len(edges), 1e-3)]), fill(256, 1e-39),
              fill(256, 1e37), torch.zeros(256)]
    x = torch.cat(blocks)
    return x if signed else x.abs()


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_native_codes_equal_the_reference_at_the_edges(signed):
    x = edge_blocks(signed)
    codes, absmax = gf.ops.quantize_blockwise(x, signed)
    ref_codes, ref_absmax = Q.quantize_blockwise(x, signed)
    assert torch.equal(codes, ref_codes) and torch.equal(absmax, ref_absmax)
    assert torch.equal(codes[:256], torch.arange(256, dtype=torch.uint8).where(torch.arange(256) != 0x80, 0)
                       if signed else torch.arange(256, dtype=torch.uint8))  # each value takes its own code
    assert 0 < absmax[2].item() < 2.0 ** -126  # a denormal absmax
    back = gf.ops.dequantize_blockwise(codes, absmax, signed)
    assert torch.equal(back, Q.dequantize_blockwise(codes, absmax, signed))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_native_codes_equal_the_reference(signed, n, dtype):
    x = _samples(n, dtype)
    if not signed:
        x = x.abs()
    codes, absmax = gf.ops.quantize_blockwise(x, signed)
    ref_codes, ref_absmax = Q.quantize_blockwise(x, signed)
    assert codes.dtype == torch.uint8 and codes.shape == x.shape and absmax.shape == (Q.num_blocks(n),)
    assert torch.equal(codes, ref_codes)
    torch.testing.assert_close(absmax, ref_absmax, rtol=0, atol=0, equal_nan=True)
    back = gf.ops.dequantize_blockwise(codes, absmax, signed, dtype)
    torch.testing.assert_close(back, Q.dequantize_blockwise(codes, absmax, signed, dtype), rtol=0, atol=0,
                               equal_nan=True)


def test_blocks_follow_memory_order():
    """A channels_last tensor is cut into blocks in memory order, as the kernels walk it."""
    x = _samples(2 * 16 * 8 * 8, torch.float32).view(2, 16, 8, 8).to(memory_format=torch.channels_last)
    codes, absmax = gf.ops.quantize_blockwise(x, True)
    twin = x.permute(0, 2, 3, 1).contiguous()  # the same memory, contiguous
    twin_codes, twin_absmax = Q.quantize_blockwise(twin, True)
    assert torch.equal(codes.permute(0, 2, 3, 1).contiguous(), twin_codes)
    torch.testing.assert_close(absmax, twin_absmax, rtol=0, atol=0, equal_nan=True)
    ref_codes, _ = Q.quantize_blockwise(x, True)
    assert torch.equal(codes, ref_codes)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_rounding_is_to_nearest_and_keeps_signs(signed):
    """Each code's value is the one nearest to x / absmax (no value is nearer, computed in double, up to
    the float32 rounding of q·(1/7) in NOTE: [the 8-bit code], far below a step), except below the smallest
    value, where u rounds to 0 under 9/16 of it (the bottom group's grid starts at 1/8 of it); no code flips
    a sign, a block's largest magnitude decodes exactly, and an unsigned non-zero value never decodes to 0."""
    x = _samples(4096, torch.float32, seed=1)[:4096]
    x = x[torch.isfinite(x)][:3840]  # whole blocks, no NaN or inf
    if not signed:
        x = x.abs()
    codes, absmax = Q.quantize_blockwise(x, signed)
    values = Q.code_values(signed).double()
    # u as the quantizer forms it: a float32 division (a zero block: u = 0)
    u = (x.view(-1, 256) / absmax.clamp_min(1e-30).unsqueeze(1)).view(-1).double()
    err = (values[codes.long()] - u).abs()
    nearest = (values[None, :] - u[:, None]).abs().min(dim=1).values
    smallest = values[1].item()
    above = u.abs() >= smallest
    assert bool((err[above] - nearest[above] <= 2.0 ** -20 * u.abs()[above]).all())
    assert bool(above.any() and (~above).any())  # both kinds of sample are there
    below = ~above
    flushed = codes[below] == 0 if signed else codes[below] == torch.where(u[below] > 0, 1, 0)
    want_flushed = u[below].abs() < 9 / 16 * smallest if signed else torch.ones_like(flushed)
    assert torch.equal(flushed, want_flushed)
    back = Q.dequantize_blockwise(codes, absmax, signed)
    assert bool((back * x >= 0).all())
    if not signed:
        assert bool((back[x > 0] > 0).all())
    blocks = x.view(-1, 256)
    top = blocks.abs().argmax(dim=1)
    assert torch.equal(back.view(-1, 256).gather(1, top[:, None]).abs().squeeze(1), absmax)


def test_dequantize_names_a_bad_absmax():
    codes = torch.zeros(300, dtype=torch.uint8)
    with pytest.raises(RuntimeError, match=r"dequantize_blockwise: absmax must be a float32 CPU tensor of 2 elements"):
        gf.ops.dequantize_blockwise(codes, torch.ones(1), True)
    with pytest.raises(RuntimeError, match="codes must be a uint8 CPU tensor"):
        gf.ops.dequantize_blockwise(codes.float(), torch.ones(2), True)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_values_near_and_on_the_midpoints(signed):
    """Around every midpoint between neighbouring values (and its negative, signed), in blocks whose absmax
    is 1: a value 2^-18 (relative) above takes the larger magnitude's code and one as far below the
    smaller's; the midpoint itself, a tie up to the rounding of q·(1/7), either one. Native as reference."""
    magnitudes = Q.code_values(signed).double()[: Q.magnitude_top(signed) + 1]
    mids = ((magnitudes[1:] + magnitudes[:-1]) / 2).float()
    assert torch.equal(mids.double(), (magnitudes[1:] + magnitudes[:-1]) / 2)  # exact in float32
    if signed:  # the bottom group's grid starts at 1/8 of the smallest value: 0 up to 9/16 of it
        mids[0] = 9 / 16 * magnitudes[1].item()
    near = [mids * (1 + 2.0 ** -18), mids * (1 - 2.0 ** -18), mids]
    values = torch.cat(near + ([-v for v in near] if signed else []))
    x = torch.zeros(len(values), Q.BLOCK_SIZE)  # a block for each value, whose absmax is 1
    x[:, 0], x[:, 1] = values, 1.0
    codes, absmax = gf.ops.quantize_blockwise(x, signed)
    ref_codes, ref_absmax = Q.quantize_blockwise(x, signed)
    assert torch.equal(codes, ref_codes) and torch.equal(absmax, ref_absmax) and bool((absmax == 1).all())
    codes = codes[:, 0].long().view(-1, len(mids))
    upper, lower = torch.arange(1, len(mids) + 1), torch.arange(len(mids))
    if not signed:
        lower[0] = 1  # a positive value never takes the code of 0
    assert torch.equal(codes[0], upper) and torch.equal(codes[1], lower)
    assert bool(((codes[2] == upper) | (codes[2] == lower)).all())
    if signed:
        assert torch.equal(codes[3], upper | Q.SIGN_BIT)
        assert torch.equal(codes[4], torch.where(lower > 0, lower | Q.SIGN_BIT, 0))
        assert torch.equal(codes[5] & ~Q.SIGN_BIT, codes[2])


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_format_one_codes_decode_with_their_own_map(signed):
    """Checkpoints of gradfused 0.1 hold codes of the decade map (format 1): index k of its sorted values,
    2^(bits-1-e) of them in each decade (10^-(e+1), 10^-e), 1 itself and 0. The table is pinned to the
    float32 bits that version wrote (map_values at commit e1b226d, hashed)."""
    count = 255 if signed else 256
    pinned = {True: "fd4ac3b6bd9e0bc2624acb48dc074138a883c8fb5beb1dd964bb857901d162e4",
              False: "02a9b523750e21348029626da435f2adadb851b687d86349cd20752f9255de26"}
    table = Q.legacy_code_values(signed)[:count]
    assert table.dtype == torch.float32 and hashlib.sha256(table.numpy().tobytes()).hexdigest() == pinned[signed]
    values = Q.legacy_code_values(signed).double()
    assert bool((values[1:count] > values[: count - 1]).all()) and values[count - 1] == 1
    bits = 7 if signed else 8
    positive = values[:count][values[:count] > 0]
    for e in range(bits - 1):
        in_decade = ((positive > 10.0 ** -(e + 1)) & (positive < 10.0 ** -e)).sum().item()
        assert in_decade == 2 ** (bits - 1 - e), e
    codes = torch.arange(count, dtype=torch.uint8).repeat(3)[:700]
    absmax = torch.tensor([2.0, 0.5, 4.0])
    decoded = Q.legacy_dequantize_blockwise(codes, absmax, signed)
    want = values[codes.long()].float() * absmax.repeat_interleave(256)[:700]
    assert torch.equal(decoded, want)
