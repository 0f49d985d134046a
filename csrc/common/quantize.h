// Block-wise 8-bit quantization of optimizer states (docs/low-bit-states.md): the per-value code and
// decode, and the block helpers, for the CPU kernels, the CUDA kernels and the CPU ops of
// csrc/cpu/quantize_cpu.cpp. gradfused/quantization.py is the pure-PyTorch oracle: the same integer
// operations on the same float bits, so both give the same codes bit for bit.
#pragma once
#include <cmath>
#include <cstdint>
#include "config.h"

namespace gf {

constexpr int kQuantBlock = 256;  // elements per absmax

// NOTE: [the 8-bit code] (format 2)
// bitsandbytes' dynamic map in base 8 instead of base 10, so that its values are binary fractions and
// both directions are arithmetic. A code stands for x / absmax in [-1, 1]:
// - Signed states (those that can be negative): a sign bit and a 7-bit magnitude code m in 0..127 (G = 6).
// - Unsigned states (second moments): an 8-bit magnitude code m in 0..255 (G = 7).
// m = 0 stands for 0. Otherwise the leading one of m, at bit p, picks the group e = G - p: the range
// (8^-(e+1), 8^-e], split evenly into 2^p steps whose upper ends are the values; the p bits below the
// leading one, j, count the steps. So m stands for 8^-e (1/8 + 7/8 (j + 1) / 2^p), which is
//     (7 m + 7 - 6·2^p) · 2^(2p - 3 - 3G),
// an integer times a power of two. The top group holds 2^G evenly spaced values (1/8, 1] (steps of 1.4 %
// of 1 for signed states, like the decade map's 64 values in (0.1, 1]), each group below half as many,
// down to the smallest value 8^-G: 2^-18 signed, 2^-21 unsigned.
// Encoding (quantize_value) is arithmetic too: the exponent of u = |x| / absmax gives the group (k = the
// octaves below 1, e = k / 3), scaling u by a power of two makes q = (u 8^e - 1/8) 2^(p+3) exact, and
// j + 1 = rint(q · (1/7)) is the nearest step. The same float operations everywhere (the Python oracle
// included), so every device gives the same codes. (Format 1, the decade map itself, needed a table
// lookup per value; its checkpoints still load: quantization.py.)
constexpr uint32_t kSignBit = 0x80;

// The float layouts the codes are built from: float32 compute and float64 compute (float64 states).
template <class S> struct FloatBits;
template <> struct FloatBits<float> {
  using U = uint32_t;
  static constexpr int kMantissa = 23, kBias = 127;
};
template <> struct FloatBits<double> {
  using U = uint64_t;
  static constexpr int kMantissa = 52, kBias = 1023;
};
}  // namespace gf

GF_CODE_BEGIN

// G of NOTE: [the 8-bit code]: the top group's step bits, one less than the magnitude code's width.
GF_HD int code_groups(bool is_signed) { return is_signed ? 6 : 7; }

template <class S> GF_HD typename FloatBits<S>::U bits_of(S x) {
  typename FloatBits<S>::U u;
  __builtin_memcpy(&u, &x, sizeof u);
  return u;
}
template <class S> GF_HD S from_bits(typename FloatBits<S>::U u) {
  S x;
  __builtin_memcpy(&x, &u, sizeof x);
  return x;
}
// 2^k, exactly, for a k in the normal range
template <class S> GF_HD S power_of_two(int k) {
  using B = FloatBits<S>;
  return from_bits<S>(typename B::U(k + B::kBias) << B::kMantissa);
}
// The biased exponent of a >= 0 (0 for 0 and for denormals).
template <class S> GF_HD int biased_exponent(S a) { return int(bits_of(a) >> FloatBits<S>::kMantissa); }

// To the nearest integer, ties to even (the default rounding mode), as vroundps and torch.round.
GF_HD float round_to_integer(float x) { return ::rintf(x); }
GF_HD double round_to_integer(double x) { return ::rint(x); }

// |x| without a branch (a sign test would be a jump mispredicted half the time on momentum).
GF_HD float magnitude(float x) { return ::fabsf(x); }
GF_HD double magnitude(double x) { return ::fabs(x); }

// The value of magnitude code m, in [0, 1] (NOTE: [the 8-bit code]): an integer times a power of two,
// exact in float and double. The leading one's position p is read from m's own float exponent, as the
// SIMD decode does.
template <class S>
GF_HD S magnitude_value(uint32_t m, int groups) {
  if (m == 0) return S(0);
  const int p = biased_exponent(float(m)) - FloatBits<float>::kBias;
  return S(int(7 * m + 7) - 6 * (1 << p)) * power_of_two<S>(2 * p - 3 - 3 * groups);
}

// The code of one value x, given its block's absmax, in the compute type S (float, or double for float64
// states): the step of NOTE: [the 8-bit code] nearest u = x / absmax within u's group (a u just above a
// group's bottom can take the group below's top value, which is that bottom). A NaN takes code 0; an
// infinity the code of ±1; an unsigned map never turns a positive x into 0, and takes a negative one (no
// state it holds is negative) to 0.
template <class S>
GF_HD uint8_t quantize_value(S x, S absmax, bool is_signed) {
  const S u = x / absmax;
  if (u != u) return 0;
  const int groups = code_groups(is_signed);
  const S a = magnitude(u);
  int k = FloatBits<S>::kBias - 1 - biased_exponent(a);  // octaves below 1 (0 for a >= 1)
  k = k < 0 ? 0 : k > 3 * groups + 3 ? 3 * groups + 3 : k;
  const int e = k / 3;
  uint32_t m = 0;
  if (e <= groups) {  // below the bottom group, 0
    const int p = groups - e;
    const S step_one = power_of_two<S>(p);  // 2^p
    const S q = a * power_of_two<S>(2 * e + groups + 3) - step_one;
    S steps = round_to_integer(q * S(1.0 / 7.0));
    steps = steps < step_one ? steps : step_one;  // an infinity: the top
    m = uint32_t(steps + step_one) - 1;
  }
  if (!is_signed && m == 0 && x > S(0)) m = 1;
  if (u < S(0)) return is_signed && m != 0 ? uint8_t(kSignBit | m) : 0;
  return uint8_t(m);
}

template <class S>
GF_HD S dequantize_value(uint8_t code, S absmax, bool is_signed) {
  const S v = magnitude_value<S>(is_signed ? code & ~kSignBit : code, code_groups(is_signed));
  return (is_signed && (code & kSignBit) ? -v : v) * absmax;
}

// NOTE: [a non-finite state harms no other element]
// A block's absmax is the largest *finite* magnitude in it (0 if there is none): a NaN state element
// takes code 0 and an infinite one the code of ±1, so each decodes to a finite value of its own and its
// block's other elements keep theirs. torch.optim and bitsandbytes also keep a NaN gradient to its own
// element (its parameter element, updated from the unquantized state, is NaN all the same).
template <class S>
GF_HD S finite_magnitude(S x) {
  const S a = magnitude(x);
  return a < S(INFINITY) ? a : S(0);  // NaN compares false
}

// The absmax of n values as float32 (NOTE: [a non-finite state harms no other element]). Eight running
// maxima, independent chains that the CPU overlaps (one chain waits a compare and a select per element):
// max is exact, so the order changes nothing.
template <class S>
GF_HD float block_absmax(const S* x, int n) {
  constexpr int kChains = 8;
  S m[kChains] = {};
  int i = 0;
  for (; i + kChains <= n; i += kChains)
    for (int k = 0; k < kChains; ++k) {
      const S a = finite_magnitude(x[i + k]);
      m[k] = a > m[k] ? a : m[k];
    }
  for (; i < n; ++i) {
    const S a = finite_magnitude(x[i]);
    m[0] = a > m[0] ? a : m[0];
  }
  S top = m[0];
  for (int k = 1; k < kChains; ++k) top = m[k] > top ? m[k] : top;
  return float(top);
}

// One block: n values decoded from their codes and the block's absmax, and encoded back (its new absmax
// returned, to be stored). The CPU kernels and the CPU ops both go through these two.
template <class S>
GF_HD void decode_block(const uint8_t* codes, int n, S absmax, bool is_signed, S* out) {
  for (int i = 0; i < n; ++i) out[i] = dequantize_value(codes[i], absmax, is_signed);
}
template <class S>
GF_HD float encode_block(const S* x, int n, bool is_signed, uint8_t* codes) {
  const float absmax = block_absmax(x, n);
  for (int i = 0; i < n; ++i) codes[i] = quantize_value(x[i], S(absmax), is_signed);
  return absmax;
}

GF_CODE_END
