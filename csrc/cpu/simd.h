// SIMD value types of one instruction set, as GCC/Clang vector extensions: the rules' arithmetic
// operators work on them unchanged, and this file adds sqrt/max and the load/store conversions.
// The including translation unit defines GF_VEC_BYTES (16, 32 or 64) and GF_ISA.
#pragma once
#include <cstdint>
#include <cstring>
#include "../common/math.h"
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#ifndef GF_VEC_BYTES
#error "define GF_VEC_BYTES before including simd.h"
#endif

namespace gf {
struct bf16 {  // the bits of a c10::BFloat16
  uint16_t bits;
};
using half = _Float16;  // IEEE binary16, as c10::Half
}  // namespace gf

GF_CODE_BEGIN

typedef float vfloat __attribute__((vector_size(GF_VEC_BYTES)));
typedef double vdouble __attribute__((vector_size(GF_VEC_BYTES)));
typedef float vfloat_half __attribute__((vector_size(GF_VEC_BYTES / 2)));  // as many lanes as vdouble
typedef uint32_t vuint __attribute__((vector_size(GF_VEC_BYTES)));
typedef uint16_t vbf16 __attribute__((vector_size(GF_VEC_BYTES / 2)));
typedef _Float16 vhalf __attribute__((vector_size(GF_VEC_BYTES / 2)));

GF_HD vfloat sqrt(vfloat x) {
#if GF_VEC_BYTES == 64
  return (vfloat)_mm512_sqrt_ps((__m512)x);
#elif GF_VEC_BYTES == 32
  return (vfloat)_mm256_sqrt_ps((__m256)x);
#elif defined(__SSE2__)
  return (vfloat)_mm_sqrt_ps((__m128)x);
#else
  for (int i = 0; i < int(sizeof(vfloat) / sizeof(float)); ++i) x[i] = ::sqrtf(x[i]);
  return x;
#endif
}
GF_HD vdouble sqrt(vdouble x) {
#if GF_VEC_BYTES == 64
  return (vdouble)_mm512_sqrt_pd((__m512d)x);
#elif GF_VEC_BYTES == 32
  return (vdouble)_mm256_sqrt_pd((__m256d)x);
#elif defined(__SSE2__)
  return (vdouble)_mm_sqrt_pd((__m128d)x);
#else
  for (int i = 0; i < int(sizeof(vdouble) / sizeof(double)); ++i) x[i] = ::sqrt(x[i]);
  return x;
#endif
}
GF_HD vfloat max(vfloat a, vfloat b) { return (a > b) | (a != a) ? a : b; }  // NOTE: [max propagates NaN]
// The two halves of a float vector, widened to double. On AVX2 GCC builds each half from two 128-bit
// converts and an insert; one 256-bit vcvtps2pd per half takes the alignment statistics loop from 41
// to 27 instructions per 8 elements (perf annotate). Same values.
GF_HD void widen(vfloat x, vdouble& lo, vdouble& hi) {
#if GF_VEC_BYTES == 32
  lo = (vdouble)_mm256_cvtps_pd(_mm256_castps256_ps128((__m256)x));
  hi = (vdouble)_mm256_cvtps_pd(_mm256_extractf128_ps((__m256)x, 1));
#else
  vfloat_half l, h;
  std::memcpy(&l, &x, sizeof l);
  std::memcpy(&h, reinterpret_cast<const char*>(&x) + sizeof l, sizeof h);
  lo = __builtin_convertvector(l, vdouble);
  hi = __builtin_convertvector(h, vdouble);
#endif
}
GF_HD vdouble max(vdouble a, vdouble b) { return (a > b) | (a != a) ? a : b; }  // NOTE: [max propagates NaN]

// 32 x 32 -> 64-bit products of each lane with m, split into high and low words (Philox's round,
// csrc/common/philox.h, which must see this overload: include this file first).
typedef uint64_t vulong __attribute__((vector_size(GF_VEC_BYTES)));
typedef uint32_t vuint_half __attribute__((vector_size(GF_VEC_BYTES / 2)));
GF_HD void mulhilo(uint32_t m, vuint x, vuint& hi, vuint& lo) {
#if GF_VEC_BYTES == 64  // even lanes' products, odd lanes' products, interleaved back
  const __m512i mv = _mm512_set1_epi64(m);
  const __m512i even = _mm512_mul_epu32((__m512i)x, mv);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64((__m512i)x, 32), mv);
  lo = (vuint)_mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  hi = (vuint)_mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
#elif GF_VEC_BYTES == 32
  const __m256i mv = _mm256_set1_epi64x(m);
  const __m256i even = _mm256_mul_epu32((__m256i)x, mv);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64((__m256i)x, 32), mv);
  lo = (vuint)_mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  hi = (vuint)_mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
#else
  vuint_half halves[2];
  std::memcpy(halves, &x, sizeof x);
  vuint_half his[2], los[2];
  for (int h = 0; h < 2; ++h) {
    const vulong product = __builtin_convertvector(halves[h], vulong) * uint64_t(m);
    los[h] = __builtin_convertvector(product, vuint_half);
    his[h] = __builtin_convertvector(product >> 32, vuint_half);
  }
  std::memcpy(&lo, los, sizeof lo);
  std::memcpy(&hi, his, sizeof hi);
#endif
}

namespace kernels {

// Storage type T -> compute scalar S and vector V. 16-bit parameters compute in float.
template <class T> struct Compute { using S = float; using V = vfloat; };
template <> struct Compute<double> { using S = double; using V = vdouble; };
template <class T> constexpr int kLanes = int(sizeof(typename Compute<T>::V) / sizeof(typename Compute<T>::S));

// ---- scalar conversions (the tail) ----
GF_HD float to_compute(float x) { return x; }
GF_HD double to_compute(double x) { return x; }
GF_HD float to_compute(half x) { return float(x); }
GF_HD float to_compute(bf16 x) {
  const uint32_t u = uint32_t(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
GF_HD void store_scalar(float* p, float x) { *p = x; }
GF_HD void store_scalar(double* p, double x) { *p = x; }
GF_HD void store_scalar(half* p, float x) { *p = half(x); }
GF_HD void store_scalar(bf16* p, float x) {  // round to nearest even, as c10::BFloat16
  uint32_t u;
  std::memcpy(&u, &x, 4);
  p->bits = (x != x) ? uint16_t(0x7FC0) : uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// ---- vector loads and stores (unaligned) ----
GF_HD vfloat load(const float* p) { vfloat v; std::memcpy(&v, p, sizeof v); return v; }
GF_HD vdouble load(const double* p) { vdouble v; std::memcpy(&v, p, sizeof v); return v; }
GF_HD vfloat load(const half* p) {
  vhalf h;
  std::memcpy(&h, p, sizeof h);
  return __builtin_convertvector(h, vfloat);
}
// NOTE: [bf16 conversions on AVX2]
// GCC splits the generic 16 <-> 32-bit lane conversions below into 128-bit halves (a load, two vpmovzxwd
// and a vinserti128 per vector loaded; an and/andn/or NaN select per vector stored). With intrinsics a
// load is one vpmovzxwd from memory and the select one vpblendvb: PersistentSGD's bf16 loop went from 54
// to 36 instructions per 8 elements (perf annotate). The bits stored are the same. On AVX-512 GCC does
// the same with 512-bit vectors (vextracti32x4/vinserti32x8 per load, vpermt2w per store); one
// vpmovzxwd and one vpmovdw per vector instead.
GF_HD vfloat load(const bf16* p) {
#if GF_VEC_BYTES == 64
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return (vfloat)_mm512_slli_epi32(wide, 16);
#elif GF_VEC_BYTES == 32
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return (vfloat)_mm256_slli_epi32(wide, 16);
#else
  vbf16 b;
  std::memcpy(&b, p, sizeof b);
  return (vfloat)(__builtin_convertvector(b, vuint) << 16);
#endif
}
GF_HD void store(float* p, vfloat v) { std::memcpy(p, &v, sizeof v); }
GF_HD void store(double* p, vdouble v) { std::memcpy(p, &v, sizeof v); }
GF_HD void store(half* p, vfloat v) {
  const vhalf h = __builtin_convertvector(v, vhalf);
  std::memcpy(p, &h, sizeof h);
}
// The bf16 bits of each lane, in the low half of its 32-bit word: rounded to nearest even, NaN -> 0x7FC0,
// as c10::BFloat16.
GF_HD vuint bf16_nearest_bits(vfloat v) {
  const vuint u = (vuint)v;
  const vuint rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
#if GF_VEC_BYTES == 64
  const __mmask16 is_nan = _mm512_cmp_ps_mask((__m512)v, (__m512)v, _CMP_UNORD_Q);
  return (vuint)_mm512_mask_blend_epi32(is_nan, (__m512i)rounded, _mm512_set1_epi32(0x7FC0));
#elif GF_VEC_BYTES == 32
  const __m256i is_nan = _mm256_castps_si256(_mm256_cmp_ps((__m256)v, (__m256)v, _CMP_UNORD_Q));
  return (vuint)_mm256_blendv_epi8((__m256i)rounded, _mm256_set1_epi32(0x7FC0), is_nan);
#else
  const vuint is_nan = (vuint)(v != v);
  return (rounded & ~is_nan) | (0x7FC0u & is_nan);
#endif
}
// Stores the low halves of `bits` (every lane below 2^16) as bf16.
GF_HD void store_bf16_bits(bf16* p, vuint bits) {
#if GF_VEC_BYTES == 64
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16((__m512i)bits));
#elif GF_VEC_BYTES == 32
  // every lane is below 2^16, so the saturating pack is exact
  const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128((__m256i)bits), _mm256_extracti128_si256((__m256i)bits, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
#else
  const vbf16 b = __builtin_convertvector(bits, vbf16);
  std::memcpy(p, &b, sizeof b);
#endif
}
GF_HD void store(bf16* p, vfloat v) { store_bf16_bits(p, bf16_nearest_bits(v)); }

}  // namespace kernels
GF_CODE_END

// After the vector mulhilo above, which Philox's template must see.
#include "../common/philox.h"

GF_CODE_BEGIN
namespace kernels {

// NOTE: [stochastic rounding on the CPU]
// bf16 from fp32 with 16 random bits added below the mantissa, then cut off (NOTE: [stochastic rounding
// bits] in csrc/common/philox.h): Philox runs on every lane at once. Infinities and NaN round to nearest,
// as the reference (gradfused/optim/_precision.py) leaves them to the bf16 copy.
GF_HD uint16_t stochastic_bits(float x, uint32_t noise) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if (((u >> 23) & 0xFFu) == 0xFFu) {  // inf or NaN
    bf16 nearest;
    store_scalar(&nearest, x);
    return nearest.bits;
  }
  return uint16_t((u + noise) >> 16);
}
// kWord: the Philox word of NOTE: [stochastic rounding bits] (0 for a parameter, 1 + k for state k).
template <int kWord = 0>
GF_HD void store_stochastic(bf16* p, float x, const RandomKey& key, int64_t element) {
  p->bits = stochastic_bits(x, stochastic_rounding_bits<kWord>(key, uint64_t(element)));
}
template <int kWord = 0>
GF_HD void store_stochastic(bf16* p, vfloat v, const RandomKey& key, int64_t first) {
  constexpr int kW = int(sizeof(vuint) / sizeof(uint32_t));
  vuint iota;
  for (int lane = 0; lane < kW; ++lane) iota[lane] = uint32_t(lane);
  const vuint lo = uint32_t(first) + iota;
  // a lane whose low word wrapped carries one into the high word (a true comparison is all ones: -1)
  const vuint hi = uint32_t(uint64_t(first) >> 32) - (vuint)(lo < uint32_t(first));
  const vuint noise = stochastic_rounding_bits<kWord>(key, lo, hi);
  const vuint u = (vuint)v;
  const vuint finite = (vuint)(((u >> 23) & 0xFFu) != 0xFFu);  // all ones where finite
  const vuint bits = (((u + noise) >> 16) & finite) | (bf16_nearest_bits(v) & ~finite);
  store_bf16_bits(p, bits);
}

}  // namespace kernels
GF_CODE_END
