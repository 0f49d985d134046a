"""Block-wise dynamic 8-bit quantization of optimizer states: the scheme, in pure PyTorch (the oracle of
the native kernels, csrc/common/quantize.h). docs/low-bit-states.md explains it.

A state tensor is cut, in memory order, into blocks of BLOCK_SIZE elements. Each block keeps one float32
absmax (the largest magnitude in it) and one byte per element: the index of the map value nearest to
element / absmax. A map is a sorted table of values in [-1, 1] (signed, for states that can be negative)
or [0, 1] (unsigned, for states that cannot), denser near zero in absolute terms and evenly spread in
relative terms decade by decade."""
from __future__ import annotations

import torch
from torch import Tensor

BLOCK_SIZE = 256
FORMAT_VERSION = 1
# 10^-e as decimal literals (not 10.0 ** -e, whose last bit depends on the math library): the C++ tables
# are built from the same literals with the same operations, so both give the same float32 values.
_DECADES = (1.0, 0.1, 0.01, 0.001, 0.0001, 0.00001, 0.000001)


def _magnitudes(bits: int) -> list[float]:
    """0, 1, and for each decade e = 0 .. bits-2 the 2^(bits-1-e) midpoints of an even split of
    (10^-(e+1), 10^-e]: the larger the magnitude, the finer the steps (bits-1-e fraction bits)."""
    out = [0.0, 1.0]
    for e in range(bits - 1):
        fraction_bits = bits - 1 - e
        out += [_DECADES[e] * (0.1 + 0.9 * (i + 0.5) / float(1 << fraction_bits)) for i in range(1 << fraction_bits)]
    return sorted(out)


def map_values(signed: bool) -> Tensor:
    """The map's values, sorted, float32: 256 unsigned ones (8 magnitude bits), or 255 signed ones (a sign
    and 7 magnitude bits, zero once)."""
    if signed:
        magnitudes = _magnitudes(7)
        values = sorted([-m for m in magnitudes if m > 0] + magnitudes)
    else:
        values = _magnitudes(8)
    return torch.tensor(values, dtype=torch.float64).to(torch.float32)


def _midpoints(values: Tensor) -> Tensor:
    """float32 midpoints of neighbouring values, formed in double: the code of x is the number of midpoints
    below x, the nearest value up to the rounding of the midpoint itself."""
    v = values.double()
    return ((v[:-1] + v[1:]) * 0.5).to(torch.float32)


def zero_code(signed: bool) -> int:
    return int((map_values(signed) == 0).nonzero().item())


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
    BLOCK_SIZE elements in memory order. Round to nearest; a code never changes the sign of the value, an
    unsigned non-zero value never becomes 0; a NaN takes the zero code and an infinity the code of ±1,
    and neither changes its block's absmax, the largest finite magnitude."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    blocks = _blocks(_memory_order(x).to(compute))
    # the largest finite magnitude (NOTE: [a non-finite state harms no other element] in quantize.h)
    absmax = torch.where(blocks.isfinite(), blocks.abs(), 0).amax(dim=1).to(torch.float32)
    normalized = blocks / absmax.to(compute).unsqueeze(1)
    mids = _midpoints(map_values(signed)).to(device=x.device, dtype=compute)  # searchsorted wants one device
    codes = torch.searchsorted(mids, normalized.contiguous(), right=False)
    zero = zero_code(signed)
    if not signed:  # a second moment that was not zero stays above zero
        codes = torch.where((blocks > 0) & (codes == zero), zero + 1, codes)
    codes = torch.where(normalized.isnan(), zero, codes)
    flat = codes.view(-1)[: x.numel()].to(torch.uint8)
    return _like_in_memory_order(flat, x), absmax


def dequantize_blockwise(codes: Tensor, absmax: Tensor, signed: bool, dtype: torch.dtype = torch.float32) -> Tensor:
    """The values the codes stand for, map value x block absmax in float32 (float64 for dtype float64),
    shaped and laid out like `codes`."""
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    table = torch.cat([map_values(signed), torch.zeros(256 - len(map_values(signed)))]).to(compute)
    blocks = _blocks(_memory_order(codes).long())
    values = table.to(codes.device)[blocks] * absmax.to(compute).unsqueeze(1)
    return _like_in_memory_order(values.view(-1)[: codes.numel()], codes).to(dtype)


def num_blocks(numel: int) -> int:
    """Blocks of BLOCK_SIZE over numel elements, the last one possibly short (integer arithmetic, so that
    a symbolic numel under torch.compile works too)."""
    return (numel + BLOCK_SIZE - 1) // BLOCK_SIZE
