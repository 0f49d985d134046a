// Counter-based randomness for the pipeline's random steps (ALGORITHMS.md §1 steps 5, 6 and 8).
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

GF_HD Philox4x32 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;  // the Weyl key schedule
      k1 += 0xBB67AE85u;
    }
    const uint64_t p0 = uint64_t(0xD2511F53u) * c0;
    const uint64_t p1 = uint64_t(0xCD9E8D57u) * c2;
    const uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0;
    const uint32_t n2 = uint32_t(p0 >> 32) ^ c3 ^ k1;
    c0 = n0;
    c1 = uint32_t(p1);
    c2 = n2;
    c3 = uint32_t(p0);
  }
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
// (seed; parameter index, t) key. gradfused/optim/_precision.py draws the same bits with torch ops.
GF_HD uint32_t stochastic_rounding_bits(const RandomKey& key, uint64_t element) {
  const Philox4x32 r = philox4x32_10(uint32_t(element), uint32_t(element >> 32) | 0x80000000u, key.param_index,
                                     key.step, uint32_t(key.seed), uint32_t(key.seed >> 32));
  return r.x[0] & 0xFFFFu;
}

GF_CODE_END
