// Block-wise dynamic 8-bit quantization of optimizer states (docs/low-bit-states.md): the two maps and
// the per-value code and decode, for the CPU kernels, the CUDA kernels and the CPU ops of
// csrc/cpu/quantize_cpu.cpp. gradfused/quantization.py is the pure-PyTorch oracle: the same maps, built
// from the same decimal literals with the same double operations, and the same rounding rule, so both
// give the same codes bit for bit.
#pragma once
#include <cmath>
#include <cstdint>
#include "config.h"

namespace gf {

constexpr int kQuantBlock = 256;  // elements per absmax

// NOTE: [the code lookup]
// A code is the number of midpoints below a value. Rather than search the 255 midpoints, a float32
// magnitude in [2^-25, 2) is cut into buckets by its exponent and the top 8 bits of its mantissa (256
// buckets an octave, 0.4 % wide). The map's values are at least 0.7 % apart, so at most one midpoint falls
// inside a bucket (checked when the table is built). `lookup[bucket]` holds, in its low 8 bits, the number
// of midpoints below the bucket, and above them the low 15 mantissa bits of the midpoint inside it
// (kNoMidpoint when none): a magnitude in the bucket lies above that midpoint when its own low 15 bits are
// greater, and on it when they are equal. One table read and two integer compares a value, the same on a
// scalar and on SIMD lanes (csrc/cpu/quantize_simd.h reads the entries lane by lane). The octave [1, 2) holds no
// midpoint (the largest value is 1), so magnitudes of 2 and more share its top bucket.
constexpr int kLutLowestExponent = -25;  // smaller magnitudes lie below every non-zero midpoint
constexpr int kLutOctaves = 26;          // exponents -25 .. 0
constexpr int kLutBucketBits = 8;
constexpr int kLutLowBits = 23 - kLutBucketBits;  // the mantissa bits below the bucket's
constexpr uint32_t kNoMidpoint = 1u << kLutLowBits;   // above every magnitude's low bits

// A map: its sorted values in [-1, 1] (signed) or [0, 1] (unsigned), padded with 0 to 256 entries (the
// signed map uses 255 codes), the float32 midpoints between neighbours, padded with +inf, so that a
// value's code is the number of midpoints below it, and the lookup of NOTE: [the code lookup].
struct QuantMap {
  float value[256];
  float midpoint[256];
  int zero_code;
  uint32_t lookup[kLutOctaves << kLutBucketBits];
};

namespace quantize_detail {
constexpr double kDecades[] = {1.0, 0.1, 0.01, 0.001, 0.0001, 0.00001, 0.000001};

// 0, 1, and for each decade e = 0 .. bits-2 the 2^(bits-1-e) midpoints of an even split of
// (10^-(e+1), 10^-e]. Returns the count written to out.
constexpr int magnitudes(int bits, double* out) {
  int n = 0;
  out[n++] = 0.0;
  out[n++] = 1.0;
  for (int e = 0; e < bits - 1; ++e) {
    const int fraction_bits = bits - 1 - e;
    for (int i = 0; i < (1 << fraction_bits); ++i)
      out[n++] = kDecades[e] * (0.1 + 0.9 * (i + 0.5) / double(1 << fraction_bits));
  }
  return n;
}

constexpr void sort(double* v, int n) {  // insertion sort: compile time only
  for (int i = 1; i < n; ++i)
    for (int j = i; j > 0 && v[j - 1] > v[j]; --j) {
      const double t = v[j];
      v[j] = v[j - 1];
      v[j - 1] = t;
    }
}

constexpr QuantMap make_map(bool is_signed) {
  double v[256] = {};
  int n = 0;
  if (is_signed) {  // a sign and 7 magnitude bits
    double m[128] = {};
    const int count = magnitudes(7, m);
    for (int i = 0; i < count; ++i) {
      v[n++] = m[i];
      if (m[i] > 0) v[n++] = -m[i];
    }
  } else {
    n = magnitudes(8, v);
  }
  sort(v, n);
  QuantMap map{};
  for (int i = 0; i < 256; ++i) {
    map.value[i] = i < n ? float(v[i]) : 0.0f;
    const double lower = static_cast<float>(v[i]), upper = i + 1 < n ? static_cast<float>(v[i + 1]) : 0.0;
    map.midpoint[i] = i + 1 < n ? static_cast<float>((lower + upper) * 0.5) : __builtin_inff();
    if (i < n && v[i] == 0.0) map.zero_code = i;
  }
  int below = 0;  // the buckets rise with k: one walk over the midpoints
  for (int k = 0; k < (kLutOctaves << kLutBucketBits); ++k) {
    const int exponent = kLutLowestExponent + (k >> kLutBucketBits);
    double octave = 1.0;  // the bucket is [low, low + width), exactly
    for (int e = exponent; e < 0; ++e) octave *= 0.5;
    const double width = octave / (1 << kLutBucketBits);
    const double low = octave + width * (k & ((1 << kLutBucketBits) - 1));
    while (below + 1 < n && double(map.midpoint[below]) < low) ++below;
    int inside = below;
    while (inside + 1 < n && double(map.midpoint[inside]) < low + width) ++inside;
    if (inside - below > 1) throw "two midpoints in one bucket: NOTE: [the code lookup] needs finer buckets";
    if (inside > below && exponent == 0) throw "a midpoint in [1, 2): NOTE: [the code lookup] assumes none";
    // the midpoint's mantissa bits below the bucket's, exactly: its distance from low in units of 2^-23 octaves
    const uint32_t low_bits = inside > below ? uint32_t((double(map.midpoint[below]) - low) / width * kNoMidpoint) : kNoMidpoint;
    map.lookup[k] = uint32_t(below) | low_bits << 8;
  }
  return map;
}
}  // namespace quantize_detail

inline constexpr QuantMap kSignedMap = quantize_detail::make_map(true);
inline constexpr QuantMap kUnsignedMap = quantize_detail::make_map(false);

}  // namespace gf

GF_CODE_BEGIN

// |x| without a branch (a sign test would be a jump mispredicted half the time on momentum).
GF_HD float magnitude(float x) { return ::fabsf(x); }
GF_HD double magnitude(double x) { return ::fabs(x); }


// The number of midpoints below a float32 magnitude a (not NaN), and whether a is one of them (NOTE: [the
// code lookup]).
struct MagnitudeCode {
  int below;
  bool on_midpoint;
};
GF_HD MagnitudeCode count_below(float a, const QuantMap& map) {
  uint32_t bits = 0;
  __builtin_memcpy(&bits, &a, sizeof bits);
  const int exponent = int(bits >> 23) - 127;
  if (exponent < kLutLowestExponent) return {map.zero_code, false};  // 0 and below every positive midpoint
  const int bucket = (((exponent > 0 ? 0 : exponent) - kLutLowestExponent) << kLutBucketBits) |
                     (exponent > 0 ? (1 << kLutBucketBits) - 1 : int((bits >> kLutLowBits) & 0xFF));
  const uint32_t entry = map.lookup[bucket], low_bits = bits & (kNoMidpoint - 1);
  return {int(entry & 0xFF) + int(low_bits > entry >> 8), low_bits == entry >> 8};
}
// The same for any compute type, by a branch-free binary search (float64 states).
template <class S>
GF_HD int count_below_search(S u, const QuantMap& map) {
  int code = 0;
  for (int step = 128; step > 0; step >>= 1) code += step & -int(S(map.midpoint[code + step - 1]) < u);
  return code;
}

// The code of one value x, given its block's absmax, in the compute type S (float, or double for float64
// states): the number of midpoints below x / absmax (nearest value; a tie goes to the smaller one). A NaN
// takes the zero code; an unsigned map never turns a positive x into 0.
template <class S>
GF_HD uint8_t quantize_value(S x, S absmax, const QuantMap& map, bool is_signed) {
  const S u = x / absmax;
  if (u != u) return uint8_t(map.zero_code);
  int code;
  if constexpr (sizeof(S) == sizeof(float)) {
    // Branch-free in the sign, which momentum flips at random. For u < 0 the signed map's symmetry gives
    // the midpoints below u = -a as the positive ones above a: zero_code - (those below a, and one equal
    // to a); the unsigned map has no negative midpoint, so its code is 0 there.
    const MagnitudeCode m = count_below(magnitude(u), map);
    const int mirrored = 2 * map.zero_code - m.below - int(m.on_midpoint);
    code = !(u < S(0)) ? m.below : is_signed ? mirrored : 0;
  } else {
    code = count_below_search(u, map);
  }
  if (!is_signed && code == map.zero_code && x > S(0)) code += 1;
  return uint8_t(code);
}

template <class S>
GF_HD S dequantize_value(uint8_t code, S absmax, const QuantMap& map) {
  return S(map.value[code]) * absmax;
}

// NOTE: [a non-finite state harms no other element]
// A block's absmax is the largest *finite* magnitude in it (0 if there is none): a NaN state element
// takes the zero code and an infinite one the code of ±1, so each decodes to a finite value of its own
// and its block's other elements keep theirs. torch.optim and bitsandbytes also keep a NaN gradient to
// its own element (its parameter element, updated from the unquantized state, is NaN all the same).
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

GF_HD const QuantMap& quant_map(bool is_signed) { return is_signed ? kSignedMap : kUnsignedMap; }

// One block: n values decoded from their codes and the block's absmax, and encoded back (its new absmax
// returned, to be stored). The CPU kernels and the CPU ops both go through these two.
template <class S>
GF_HD void decode_block(const uint8_t* codes, int n, S absmax, const QuantMap& map, S* out) {
  for (int i = 0; i < n; ++i) out[i] = dequantize_value(codes[i], absmax, map);
}
template <class S>
GF_HD float encode_block(const S* x, int n, bool is_signed, uint8_t* codes) {
  const QuantMap& map = quant_map(is_signed);
  const float absmax = block_absmax(x, n);
  for (int i = 0; i < n; ++i) codes[i] = quantize_value(x[i], S(absmax), map, is_signed);
  return absmax;
}

GF_CODE_END
