"""Philox4x32-10 in torch ops, element for element the generator of csrc/common/philox.h, so that the
reference draws the same noise and masks as the kernels. Words are held in int64 tensors; the 32x32-bit
products are split so that nothing overflows int64."""
from __future__ import annotations

import math

import torch
from torch import Tensor

_M32 = 0xFFFFFFFF
_MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
_KEY_STEPS = (0x9E3779B9, 0xBB67AE85)


def _mulhilo(a: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """(high, low) 32-bit words of a * m, for a holding 32-bit words and a 32-bit constant m."""
    low_part = a * (m & 0xFFFF)  # < 2^48
    high_part = a * (m >> 16)  # < 2^48
    total_low = low_part + ((high_part & 0xFFFF) << 16)  # < 2^49
    return ((high_part >> 16) + (total_low >> 32)) & _M32, total_low & _M32


def philox4x32_10(counter: tuple, key: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The four output words for counters (c0, c1, c2, c3) (tensors or ints) under key (k0, k1)."""
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) for c in counter)
    k0, k1 = key
    for round_ in range(10):
        if round_:
            k0, k1 = (k0 + _KEY_STEPS[0]) & _M32, (k1 + _KEY_STEPS[1]) & _M32
        hi0, lo0 = _mulhilo(c0, _MULTIPLIERS[0])
        hi1, lo1 = _mulhilo(c2, _MULTIPLIERS[1])
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def uniform_open01(x: Tensor) -> Tensor:
    """(x + 1/2) / 2^32 in float64: exact, in (0, 1)."""
    return (x.double() + 0.5) * 2.0**-32


def _element_words(numel: int, seed: int, param_index: int, step: int, stream_bit: int, device=None):
    """Each element's four words under (seed; element, parameter index, step); `stream_bit` is or-ed into
    the counter's second word to pick a stream apart."""
    element = torch.arange(numel, dtype=torch.int64, device=device)
    seed &= (1 << 64) - 1  # the kernels take the seed's 64 bits
    return philox4x32_10((element & _M32, (element >> 32) | stream_bit, param_index, step & _M32), (seed & _M32, seed >> 32))


def element_draws(numel: int, *, seed: int, param_index: int, step: int) -> tuple[Tensor, Tensor, Tensor]:
    """(standard normal, gradient-dropout uniform, lr-dropout uniform) per element, float64, flat."""
    words = _element_words(numel, seed, param_index, step, 0)
    normal = torch.sqrt(-2.0 * torch.log(uniform_open01(words[0]))) * torch.cos(2 * math.pi * uniform_open01(words[1]))
    return normal, uniform_open01(words[2]), uniform_open01(words[3])


def stochastic_rounding_bits(numel: int, *, seed: int, param_index: int, step: int, device=None,
                             word: int = 0) -> Tensor:
    """The 16 random bits per element of stochastic rounding, int32, flat (NOTE: [stochastic rounding bits]
    in csrc/common/philox.h: the counter's second word has its top bit set; `word` 0 rounds a parameter,
    1 + k its state k)."""
    words = _element_words(numel, seed, param_index, step, 0x80000000, device)
    return (words[word] & 0xFFFF).to(torch.int32)
