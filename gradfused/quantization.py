"""Block-wise 8-bit quantization of optimizer states: the scheme, in pure PyTorch (the oracle of the native
kernels, csrc/common/quantize.h). docs/low-bit-states.md explains it.

A state tensor is cut, in memory order, into blocks of BLOCK_SIZE elements. Each block keeps one float32
absmax (the largest finite magnitude in it) and one byte per element: the code of element / absmax in
bitsandbytes' dynamic map taken to base 8 (NOTE: [the 8-bit code] in quantize.h): a leading one picks a
group of three octaves, the bits below it a step of an even split of the group. Signed states (those that
can be negative) take a sign bit and 7 magnitude bits, unsigned ones 8 magnitude bits (one more group of
range). The C++ code does the same float operations, so both give the same codes."""
from __future__ import annotations

import torch
from torch import Tensor

BLOCK_SIZE = 256
# 2: the base-8 code (NOTE: [the 8-bit code]). 1: the decade map of bitsandbytes, which a checkpoint of
# gradfused 0.1 holds; it loads through legacy_dequantize_blockwise.
FORMAT_VERSION = 2
SIGN_BIT = 0x80
# per compute dtype: the integer view, the mantissa bits, the exponent bias
_LAYOUTS = {torch.float32: (torch.int32, 23, 127), torch.float64: (torch.int64, 52, 1023)}


def code_groups(signed: bool) -> int:
    """G: the top group's step bits (the magnitude code's width less one)."""
    return 6 if signed else 7


def magnitude_top(signed: bool) -> int:
    """The largest magnitude code, which stands for 1.0."""
    return (2 << code_groups(signed)) - 1


def _power_of_two(k: Tensor, compute: torch.dtype) -> Tensor:
    """2^k exactly, from the bits (k in the normal range)."""
    view, mantissa, bias = _LAYOUTS[compute]
    return ((k + bias) << mantissa).to(view).view(compute)


def code_values(signed: bool, dtype: torch.dtype = torch.float32) -> Tensor:
    """The value in [-1, 1] of each of the 256 codes, exactly: magnitude code m > 0 (its leading one at bit
    p) stands for (7 m + 7 - 6·2^p) · 2^(2p - 3 - 3G), an integer times a power of two."""
    groups = code_groups(signed)
    values = []
    for code in range(256):
        m = code & ~SIGN_BIT if signed else code
        p = m.bit_length() - 1
        value = float(7 * m + 7 - 6 * (1 << p)) * 2.0 ** (2 * p - 3 - 3 * groups) if m else 0.0
        values.append(-value if signed and code & SIGN_BIT else value)
    return torch.tensor(values, dtype=torch.float64).to(dtype)


def _blocks(flat: Tensor) -> Tensor:
    """[blocks, BLOCK_SIZE], the last block padded with zeros (which change no absmax)."""
    pad = -flat.numel() % BLOCK_SIZE
    return torch.nn.functional.pad(flat, (0, pad)).view(-1, BLOCK_SIZE)


def _is_dense(x: Tensor) -> bool:
    """Non-overlapping and dense: its elements fill a span of memory, in some order of its dimensions."""
    span = 1
    for stride, size in sorted((st, sz) for st, sz in zip(x.stride(), x.shape) if sz > 1):
        if stride != span:
            return False
        span *= size
    return True


def _memory_order(x: Tensor) -> Tensor:
    """x's elements as a flat tensor in memory order (logical order where x is not dense)."""
    if not _is_dense(x):
        return x.reshape(-1)
    return x.as_strided((x.numel(),), (1,), x.storage_offset())


def _like_in_memory_order(flat: Tensor, like: Tensor) -> Tensor:
    out = torch.empty_like(like, dtype=flat.dtype)
    if _is_dense(like):
        out.as_strided((like.numel(),), (1,), out.storage_offset()).copy_(flat)
    else:
        out.copy_(flat.view(like.shape))
    return out


def quantize_blockwise(x: Tensor, signed: bool) -> tuple[Tensor, Tensor]:
    """(codes, absmax): uint8 codes shaped and laid out like x, and one float32 absmax per block of
    BLOCK_SIZE elements in memory order. Each code is the nearest step of u = element / absmax within u's
    group; a code never changes the sign of the value, an unsigned non-zero value never becomes 0 (and a
    negative one, which no unsigned state holds, becomes 0); a NaN takes code 0 and an infinity the code
    of ±1, and neither changes its block's absmax, the largest finite magnitude."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    view, mantissa, bias = _LAYOUTS[compute]
    groups = code_groups(signed)
    blocks = _blocks(_memory_order(x).to(compute))
    # the largest finite magnitude (NOTE: [a non-finite state harms no other element] in quantize.h)
    absmax = torch.where(blocks.isfinite(), blocks.abs(), 0).amax(dim=1).to(torch.float32)
    normalized = blocks / absmax.to(compute).unsqueeze(1)
    a = normalized.abs()
    # the octaves below 1, k, give the group e = k // 3 (quantize_value in quantize.h, operation for operation)
    k = (bias - 1 - (a.contiguous().view(view).to(torch.int64) >> mantissa)).clamp(0, 3 * groups + 3)
    e = k // 3
    step_one = _power_of_two(groups - e, compute)  # 2^p
    q = a * _power_of_two(2 * e + groups + 3, compute) - step_one
    steps = torch.minimum(torch.round(q * torch.tensor(1 / 7, dtype=compute)), step_one)
    codes = torch.where(e <= groups, (steps + step_one).to(torch.int64) - 1, 0)
    if not signed:  # a second moment that was not zero stays above zero
        codes = torch.where((codes == 0) & (blocks > 0), 1, codes)
    negative = normalized < 0
    if signed:
        codes = torch.where(negative & (codes > 0), codes | SIGN_BIT, codes)
    else:
        codes = torch.where(negative, 0, codes)
    codes = torch.where(normalized.isnan(), 0, codes)
    flat = codes.view(-1)[: x.numel()].to(torch.uint8)
    return _like_in_memory_order(flat, x), absmax


def dequantize_blockwise(codes: Tensor, absmax: Tensor, signed: bool, dtype: torch.dtype = torch.float32) -> Tensor:
    """The values the codes stand for, code value x block absmax in float32 (float64 for dtype float64),
    shaped and laid out like `codes`."""
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    return _decode(codes, absmax, code_values(signed, compute), dtype)


def _decode(codes: Tensor, absmax: Tensor, table: Tensor, dtype: torch.dtype) -> Tensor:
    blocks = _blocks(_memory_order(codes).long())
    values = table.to(codes.device)[blocks] * absmax.to(table.dtype).unsqueeze(1)
    return _like_in_memory_order(values.view(-1)[: codes.numel()], codes).to(dtype)


# ---- format 1, for checkpoints of gradfused 0.1 ----
# 10^-e as decimal literals, as that version built its tables.
_DECADES = (1.0, 0.1, 0.01, 0.001, 0.0001, 0.00001, 0.000001)


def _legacy_magnitudes(bits: int) -> list[float]:
    """0, 1, and for each decade e = 0 .. bits-2 the 2^(bits-1-e) midpoints of an even split of
    (10^-(e+1), 10^-e]."""
    out = [0.0, 1.0]
    for e in range(bits - 1):
        fraction_bits = bits - 1 - e
        out += [_DECADES[e] * (0.1 + 0.9 * (i + 0.5) / float(1 << fraction_bits)) for i in range(1 << fraction_bits)]
    return sorted(out)


def legacy_code_values(signed: bool) -> Tensor:
    """Format 1's map: its sorted values, float32, padded with 0 to 256 entries (255 signed ones: a sign
    and 7 magnitude bits, zero once; 256 unsigned ones)."""
    if signed:
        magnitudes = _legacy_magnitudes(7)
        values = sorted([-m for m in magnitudes if m > 0] + magnitudes) + [0.0]
    else:
        values = _legacy_magnitudes(8)
    return torch.tensor(values, dtype=torch.float64).to(torch.float32)


def legacy_dequantize_blockwise(codes: Tensor, absmax: Tensor, signed: bool,
                                dtype: torch.dtype = torch.float32) -> Tensor:
    """dequantize_blockwise for format 1's codes."""
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    return _decode(codes, absmax, legacy_code_values(signed).to(compute), dtype)


def num_blocks(numel: int) -> int:
    """Blocks of BLOCK_SIZE over numel elements, the last one possibly short (integer arithmetic, so that
    a symbolic numel under torch.compile works too)."""
    return (numel + BLOCK_SIZE - 1) // BLOCK_SIZE
