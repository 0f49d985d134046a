// The 8-bit state blocks of csrc/common/quantize.h on SIMD lanes, for the CPU kernels: the same codes and
// values as its scalar decode_block/encode_block, bit for bit (the same float32 division, the same integer
// operations on the same bits: NOTE: [the 8-bit code]), a vector at a time, with no table. Float compute
// only; float64 states keep the scalar functions. Included by kernels_impl.h after simd.h.
#pragma once
#include "simd.h"
#include "../common/quantize.h"

GF_CODE_BEGIN
namespace kernels {

typedef uint8_t vcode __attribute__((vector_size(GF_VEC_BYTES / 4)));  // one code per float lane
constexpr int kFloatLanes = int(sizeof(vfloat) / sizeof(float));

// One code per lane, widened from and narrowed to bytes. On AVX2, GCC 12 builds both conversions of
// __builtin_convertvector lane by lane (some 25 scalar instructions each, most of the 8-bit step's time
// there); one vpmovzxbd, and a vpshufb with an unpack, do the same. AVX-512 compiles them to
// vpmovzxbd and vpmovdb as they are.
GF_HD vuint load_codes(const uint8_t* p) {
#if GF_VEC_BYTES == 32
  return (vuint)_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
#else
  vcode c;
  std::memcpy(&c, p, sizeof c);
  return __builtin_convertvector(c, vuint);
#endif
}
GF_HD void store_codes(uint8_t* p, vuint codes) {  // codes < 256
#if GF_VEC_BYTES == 32
  const __m256i low_bytes = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                             0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
  const __m256i halves = _mm256_shuffle_epi8((__m256i)codes, low_bytes);  // 4 codes at the bottom of each half
  const __m128i joined = _mm_unpacklo_epi32(_mm256_castsi256_si128(halves), _mm256_extracti128_si256(halves, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(p), joined);
#else
  const vcode c = __builtin_convertvector(codes, vcode);
  std::memcpy(p, &c, sizeof c);
#endif
}

typedef int32_t vint __attribute__((vector_size(GF_VEC_BYTES)));

// round_to_integer on lanes of 0 <= x < 2^23 (or +inf): adding 2^23 leaves no fraction bit, so the sum is
// rounded to an integer, ties to even, and taking 2^23 off again is exact. The same on every ISA (SSE2
// has no vroundps).
GF_HD vfloat round_small_to_integer(vfloat x) {
  const vfloat kShifter = vfloat{} + 8388608.0f;
  return (x + kShifter) - kShifter;
}

// decode_block, on lanes for float compute; the scalar one for double. magnitude_value on lanes: m's own
// float conversion gives 2^p (its exponent bits) and p, the rest is exact float arithmetic.
GF_HD void decode_state_block(const uint8_t* codes, int n, float absmax, bool is_signed, float* out) {
  const uint32_t magnitude_mask = is_signed ? ~kSignBit & 0xFFu : 0xFFu, sign_mask = is_signed ? kSignBit : 0u;
  // 2^(2p - 3 - 3G) has the biased exponent 2 (p + 127) - 130 - 3G; m = 0 (the exponent field 0) gives 0
  const vint scale_offset = vint{} + (130 + 3 * code_groups(is_signed));
  int i = 0;
  for (; i + kFloatLanes <= n; i += kFloatLanes) {
    const vuint c = load_codes(codes + i);
    const vfloat m = __builtin_convertvector((vint)(c & magnitude_mask), vfloat);
    const vuint exponent = (vuint)m & 0x7F800000u;
    const vint scale_exponent = 2 * (vint)(exponent >> 23) - scale_offset;
    const vfloat scale = (vfloat)(vuint)((scale_exponent > 0 ? scale_exponent : vint{}) << 23);
    const vfloat numerator = (m * 7.0f + 7.0f) - (vfloat)exponent * 6.0f;  // small integers: exact
    const vfloat value = numerator * scale * absmax;
    store(out + i, (vfloat)((vuint)value | (c & sign_mask) << 24));
  }
  decode_block(codes + i, n - i, absmax, is_signed, out + i);
}

// quantize_value on each lane (float compute), the same operations.
GF_HD vuint quantize_lanes(vfloat x, vfloat absmax, bool is_signed) {
  const int groups = code_groups(is_signed);
  const vfloat u = x / absmax;
  const vuint a_bits = (vuint)u & 0x7FFFFFFFu;
  const vfloat a = (vfloat)a_bits;
  vint k = (126 - (vint)(a_bits >> 23));
  k = k > 0 ? k : vint{};
  k = k < 3 * groups + 3 ? k : vint{} + (3 * groups + 3);
  const vint e = (k * 11) >> 5;  // k / 3 for 0 <= k < 32
  const vfloat step_one = (vfloat)(vuint)((groups - e + 127) << 23);             // 2^p
  const vfloat group_scale = (vfloat)(vuint)((2 * e + groups + 3 + 127) << 23);  // 2^(2e + G + 3)
  const vfloat q = a * group_scale - step_one;
  vfloat steps = round_small_to_integer(q * (1.0f / 7.0f));
  steps = steps < step_one ? steps : step_one;
  vint m = __builtin_convertvector(steps + step_one, vint) - 1;
  m = e <= groups ? m : vint{};
  if (!is_signed) m = (m == 0) & (x > 0.0f) ? vint{} + 1 : m;
  const vuint negative = (vuint)(u < 0.0f);
  const vuint signed_code = (m != 0) ? (vuint)m | kSignBit : vuint{};  // unsigned map: 0 (no sign)
  const vuint code = negative ? (is_signed ? signed_code : vuint{}) : (vuint)m;
  return (u != u) ? vuint{} : code;
}

// block_absmax, float: the lane-wise maximum of the finite magnitudes, then the lanes and the scalar tail.
GF_HD float block_absmax_simd(const float* x, int n) {
  vfloat top{};
  int i = 0;
  for (; i + kFloatLanes <= n; i += kFloatLanes) {
    const vfloat a = (vfloat)((vuint)load(x + i) & 0x7FFFFFFFu);
    const vfloat finite = a < INFINITY ? a : vfloat{};  // NaN compares false
    top = finite > top ? finite : top;
  }
  float m = block_absmax(x + i, n - i);
  for (int lane = 0; lane < kFloatLanes; ++lane) m = top[lane] > m ? top[lane] : m;
  return m;
}

// encode_block, on lanes for float compute; the scalar one for double.
GF_HD float encode_state_block(const float* x, int n, bool is_signed, uint8_t* codes) {
  const float absmax = block_absmax_simd(x, n);
  const vfloat scale = vfloat{} + absmax;
  int i = 0;
  for (; i + kFloatLanes <= n; i += kFloatLanes) store_codes(codes + i, quantize_lanes(load(x + i), scale, is_signed));
  for (; i < n; ++i) codes[i] = quantize_value(x[i], absmax, is_signed);
  return absmax;
}

GF_HD void decode_state_block(const uint8_t* codes, int n, float absmax, bool is_signed, double* out) {
  decode_block(codes, n, double(absmax), is_signed, out);
}
GF_HD float encode_state_block(const double* x, int n, bool is_signed, uint8_t* codes) {
  return encode_block(x, n, is_signed, codes);
}

}  // namespace kernels
GF_CODE_END
