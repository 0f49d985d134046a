"""The block-wise 8-bit quantization scheme (docs/low-bit-states.md): the maps, the rounding rule and its
guarantees, and the native ops (csrc/common/quantize.h) against the pure-PyTorch reference
(gradfused/quantization.py), bit for bit."""
import pytest
import torch

import gradfused as gf
from gradfused import quantization as Q

SIZES = [1, 255, 256, 257, 1000, 4097]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_maps_are_the_documented_tables(signed):
    values = Q.map_values(signed).double()
    assert len(values) == (255 if signed else 256)
    assert bool((values[1:] > values[:-1]).all())  # strictly increasing
    assert values[-1] == 1 and (values[0] == -1 if signed else values[0] == 0)
    assert values[Q.zero_code(signed)] == 0
    if signed:
        assert torch.equal(values, -values.flip(0))
    positive = values[values > 0]
    bits = 7 if signed else 8
    for e in range(bits - 1):  # 2^(bits-1-e) values in each decade (10^-(e+1), 10^-e), then 1 itself
        in_decade = ((positive > 10.0 ** -(e + 1)) & (positive < 10.0 ** -e)).sum().item()
        assert in_decade == 2 ** (bits - 1 - e), e
    assert positive.min().item() == pytest.approx(0.325 * 10.0 ** -(bits - 2), rel=1e-6)


def _samples(n, dtype, seed=0):
    """Magnitudes over many decades, both signs, and blocks of zeros, a NaN, an inf and denormal-small values."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=gen, dtype=torch.float64) * 10.0 ** (-8 * torch.rand(n, generator=gen, dtype=torch.float64))
    if n > 600:
        x[256:512] = 0
        x[520] = float("nan")
        x[560] = float("inf")
        x[580] = 1e-30
    return x.to(dtype)


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
    """Each code is the map value nearest to x / absmax (within the rounding of the float32 midpoints),
    so the error is at most half the map's spacing there, times the absmax; no code flips a sign, a
    block's largest magnitude decodes exactly, and an unsigned non-zero value never decodes to 0."""
    x = _samples(4096, torch.float32, seed=1)[:4096]
    x = x[torch.isfinite(x)][:3840]  # whole blocks, no NaN or inf
    if not signed:
        x = x.abs()
    codes, absmax = Q.quantize_blockwise(x, signed)
    values = Q.map_values(signed).double()
    u = (x.double().view(-1, 256) / absmax.double().clamp_min(1e-300).unsqueeze(1)).view(-1)  # a zero block: u = 0
    hi = torch.searchsorted(values, u).clamp(1, len(values) - 1)  # values[hi - 1] <= u <= values[hi]
    half_gap = (values[hi] - values[hi - 1]) / 2
    err = (values[codes.long()] - u).abs()
    if not signed:  # below half the smallest positive value, a positive value still takes it
        half_gap = torch.where((u > 0) & (codes == 1), values[1], half_gap)
    assert bool((err <= half_gap * (1 + 1e-6)).all())
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
def test_values_on_the_midpoints_take_the_lower_code(signed):
    """Ties: every midpoint itself (and its negative, signed), in a block whose absmax is 1, takes the
    smaller neighbour's code, in the native lookup (NOTE: [the code lookup]) as in the reference."""
    mids = Q._midpoints(Q.map_values(signed))
    values = torch.cat([mids, -mids]) if signed else mids
    x = torch.cat([torch.ones(1), values, torch.nextafter(values, torch.full_like(values, 2.0))])
    codes, absmax = gf.ops.quantize_blockwise(x, signed)
    ref_codes, ref_absmax = Q.quantize_blockwise(x, signed)
    assert torch.equal(codes, ref_codes) and torch.equal(absmax, ref_absmax)
    lower = torch.arange(len(mids), dtype=torch.uint8)  # midpoint k lies between codes k and k + 1
    if not signed:
        lower[0] = 1  # except that a positive value never takes the code of 0
    assert torch.equal(codes[1:1 + len(mids)], lower)
