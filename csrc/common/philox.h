// Counter-based randomness for the pipeline's random steps (docs/algorithms.md §1 steps 5, 6 and 8).
// Philox4x32-10 (Salmon et al. 2011) maps (counter, key) to four 32-bit words with no state, so every
// element draws its own numbers from (seed; element index, parameter index, step) alone: the result does
// not depend on threads, chunking, vector width or device. gradfused/reference/philox.py is the same
// generator in torch ops; tests/test_randomness.py checks both against Random123's known answers.
#pragma once
#include <cstdint>
#include "hyper.h"

GF_CODE_BEGIN

struct Philox4x32 {
  uint32_t x[4];
};

GF_HD void mulhilo(uint32_t m, uint32_t x, uint32_t& hi, uint32_t& lo) {
  const uint64_t product = uint64_t(m) * x;
  hi = uint32_t(product >> 32);
  lo = uint32_t(product);
}

// The ten rounds, in place, on any word type W with a mulhilo() declared before this point: a uint32_t,
// or on the CPU a SIMD vector of them (csrc/cpu/simd.h), one counter per lane.
template <class W>
GF_HD void philox_rounds(W& c0, W& c1, W& c2, W& c3, uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;  // the Weyl key schedule
      k1 += 0xBB67AE85u;
    }
    W hi0, lo0, hi1, lo1;
    mulhilo(0xD2511F53u, c0, hi0, lo0);
    mulhilo(0xCD9E8D57u, c2, hi1, lo1);
    const W n0 = hi1 ^ c1 ^ k0;
    const W n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
  }
}

GF_HD Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  philox_rounds(c0, c1, c2, c3, k0, k1);
  return {{c0, c1, c2, c3}};
}

// A 32-bit word as a uniform double in (0, 1): (x + 1/2) / 2^32, exact in double.
GF_HD double uniform_open01(uint32_t x) { return (double(x) + 0.5) * (1.0 / 4294967296.0); }

// What one element draws in one step: words 0 and 1 give a standard normal (Box-Muller, in double),
// word 2 the gradient-dropout uniform, word 3 the learning-rate-dropout uniform.
struct ElementDraw {
  double normal;
  double grad_uniform;
  double lr_uniform;
};

GF_HD ElementDraw draw_element(const RandomKey& key, uint64_t element, bool want_normal) {
  const Philox4x32 r = philox4x32_10(uint32_t(element), uint32_t(element >> 32), key.param_index, key.step,
                                     uint32_t(key.seed), uint32_t(key.seed >> 32));
  double normal = 0.0;
  if (want_normal) {  // log and cos only when gradient noise is on
    const double radius = ::sqrt(-2.0 * ::log(uniform_open01(r.x[0])));
    normal = radius * ::cos(6.283185307179586 * uniform_open01(r.x[1]));
  }
  return {normal, uniform_open01(r.x[2]), uniform_open01(r.x[3])};
}

// NOTE: [stochastic rounding bits]
// Stochastic rounding to bf16 adds 16 random bits below the bf16 mantissa of the fp32 result, then cuts
// them off. The bits come from the element's Philox counter with the top bit of the counter's second word
// set, a stream apart from the pipeline's draws (elements never reach 2^63), under the same
// (seed; parameter index, t) key. A bf16 parameter takes word 0 of the four; the bf16 states of an fp32
// parameter (state_dtype=torch.bfloat16) take words 1, 2, 3, one per state, so that no two roundings of
// one element share bits. gradfused/optim/_precision.py draws the same bits with torch ops.
template <int kWord = 0, class W>
GF_HD W stochastic_rounding_bits(const RandomKey& key, W element_lo, W element_hi) {
  static_assert(kWord >= 0 && kWord < 4, "Philox gives four words");
  W c1 = element_hi | 0x80000000u, c2 = W{} + key.param_index, c3 = W{} + key.step;
  philox_rounds(element_lo, c1, c2, c3, uint32_t(key.seed), uint32_t(key.seed >> 32));
  const W words[4] = {element_lo, c1, c2, c3};
  return words[kWord] & 0xFFFFu;
}
template <int kWord = 0>
GF_HD uint32_t stochastic_rounding_bits(const RandomKey& key, uint64_t element) {
  return stochastic_rounding_bits<kWord>(key, uint32_t(element), uint32_t(element >> 32));
}

GF_CODE_END
