// Block-wise dynamic 8-bit quantization of optimizer states (docs/low-bit-states.md): the two maps and
// the per-value code and decode, for the CPU kernels, the CUDA kernels and the CPU ops of
// csrc/cpu/quantize_cpu.cpp. gradfused/quantization.py is the pure-PyTorch oracle: the same maps, built
// from the same decimal literals with the same double operations, and the same rounding rule, so both
// give the same codes bit for bit.
#pragma once
#include <cstdint>
#include "config.h"

namespace gf {

constexpr int kQuantBlock = 256;  // elements per absmax

// A map: its sorted values in [-1, 1] (signed) or [0, 1] (unsigned), padded with 0 to 256 entries (the
// signed map uses 255 codes), and the float32 midpoints between neighbours, padded with +inf, so that a
// value's code is the number of midpoints below it.
struct QuantMap {
  float value[256];
  float midpoint[256];
  int zero_code;
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
  return map;
}
}  // namespace quantize_detail

inline constexpr QuantMap kSignedMap = quantize_detail::make_map(true);
inline constexpr QuantMap kUnsignedMap = quantize_detail::make_map(false);

}  // namespace gf

GF_CODE_BEGIN

// The code of one value x, given its block's absmax, in the compute type S (float, or double for float64
// states): the number of midpoints below x / absmax (nearest value; a tie goes to the smaller one). A NaN
// takes the zero code; an unsigned map never turns a positive x into 0.
template <class S>
GF_HD uint8_t quantize_value(S x, S absmax, const QuantMap& map, bool is_signed) {
  const S normalized = x / absmax;
  if (normalized != normalized) return uint8_t(map.zero_code);
  int code = 0;
  for (int step = 128; step > 0; step >>= 1)
    if (S(map.midpoint[code + step - 1]) < normalized) code += step;
  if (!is_signed && code == map.zero_code && x > S(0)) code += 1;
  return uint8_t(code);
}

template <class S>
GF_HD S dequantize_value(uint8_t code, S absmax, const QuantMap& map) {
  return S(map.value[code]) * absmax;
}

// The absmax of n values, NaN-propagating (a NaN anywhere makes the block's absmax NaN), as float32.
template <class S>
GF_HD float block_absmax(const S* x, int n) {
  S m = S(0);
  for (int i = 0; i < n; ++i) {
    const S a = x[i] < S(0) ? -x[i] : x[i];
    m = (a > m || a != a) ? a : m;
  }
  return float(m);
}

GF_CODE_END
