// The 8-bit state blocks of csrc/common/quantize.h on SIMD lanes, for the CPU kernels: the same codes and
// values as its scalar decode_block/encode_block, bit for bit (the same float32 division, and the same
// count of midpoints: the table of NOTE: [the code lookup], or on AVX-512 NOTE: [the code search on
// AVX-512]), a vector at a time. Float compute only; float64 states keep the scalar functions.
// Included by kernels_impl.h after simd.h.
#pragma once
#include "simd.h"
#include "../common/quantize.h"

GF_CODE_BEGIN
namespace kernels {

typedef uint8_t vcode __attribute__((vector_size(GF_VEC_BYTES / 4)));  // one code per float lane
constexpr int kFloatLanes = int(sizeof(vfloat) / sizeof(float));

// table[index] for each lane, read lane by lane. The gather instructions lose here: on the 2-core AMD EPYC
// (Zen 4) development machine vpgatherdd took 1.0 ns an element against 0.4 ns for these loads (512-bit
// vectors), and Intel's Downfall mitigation slows them as much.
template <class E, class VE>
GF_HD VE gather(const E* table, vuint index) {
  VE out;
  for (int lane = 0; lane < kFloatLanes; ++lane) out[lane] = table[index[lane]];
  return out;
}

// One code per lane. load_codes feeds the lane-by-lane table reads of the decode, which take each code
// as a scalar anyway: the byte extraction GCC builds from __builtin_convertvector serves them best (a
// vpmovzxbd and lane extracts measured 0.3-0.4 ns an element slower for two states).
GF_HD vuint load_codes(const uint8_t* p) {
  vcode c;
  std::memcpy(&c, p, sizeof c);
  return __builtin_convertvector(c, vuint);
}
// On AVX2, GCC 12 builds the narrowing of __builtin_convertvector lane by lane (some 25 scalar
// instructions); a vpshufb and an unpack do the same (the encode of two states: 3.07-3.17 against 4.75-5.00
// ns an element, a microbenchmark on the AVX2 development VM). AVX-512 compiles it to one vpmovdb as it is.
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

// decode_block, on lanes for float compute; the scalar one for double.
GF_HD void decode_state_block(const uint8_t* codes, int n, float absmax, const QuantMap& map, float* out) {
  int i = 0;
  for (; i + kFloatLanes <= n; i += kFloatLanes) store(out + i, gather<float, vfloat>(map.value, load_codes(codes + i)) * absmax);
  decode_block(codes + i, n - i, absmax, map, out + i);
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

#if GF_VEC_BYTES == 64
// NOTE: [the code search on AVX-512]
// With 512-bit vectors the code is found without reading memory per lane: a binary search over the 256
// midpoints (padded with +inf), eight steps, whose step s compares with midpoint[code + s - 1]. As code
// is a multiple of 2s there, the candidates of a step are the 128/s entries midpoint[2s k + s - 1]: one
// broadcast, then permutes of tables held in registers (16 entries a vpermps, 32 a vpermt2ps, blends
// above). 61 instructions per 16 elements, 15 of them register moves, and no memory read per lane: on the
// development machine (Zen 4) encoding took 1.16 ns an element against 1.51 for the table lookup with
// lane-by-lane loads. The count is the same as the lookup's, by definition of the code.
struct MidpointSearch {
  float step[8][128];  // step[j][k] = midpoint[2 s k + s - 1] with s = 128 >> j, for k < 128 / s
};
constexpr MidpointSearch make_search(const QuantMap& map) {
  MidpointSearch out{};
  for (int j = 0; j < 8; ++j) {
    const int s = 128 >> j;
    for (int k = 0; k < 128 / s; ++k) out.step[j][k] = map.midpoint[2 * s * k + s - 1];
  }
  return out;
}
inline constexpr MidpointSearch kSignedSearch = make_search(kSignedMap);
inline constexpr MidpointSearch kUnsignedSearch = make_search(kUnsignedMap);

GF_HD __m512 entries32(const float* table, __m512i k) {  // table[k mod 32]
  return _mm512_permutex2var_ps(_mm512_loadu_ps(table), k, _mm512_loadu_ps(table + 16));
}
GF_HD __m512 entries64(const float* table, __m512i k) {  // table[k mod 64]
  const __mmask16 high = _mm512_test_epi32_mask(k, _mm512_set1_epi32(32));
  return _mm512_mask_blend_ps(high, entries32(table, k), entries32(table + 32, k));
}

// The number of midpoints below each lane of u (a NaN lane: 0).
GF_HD vuint midpoints_below(vfloat u, const QuantMap&, bool is_signed) {
  const MidpointSearch& search = is_signed ? kSignedSearch : kUnsignedSearch;
  const __m512 x = (__m512)u;
  __m512i code = _mm512_setzero_si512();
  auto step = [&](int j, __m512 candidates) {
    const __mmask16 below = _mm512_cmp_ps_mask(candidates, x, _CMP_LT_OQ);
    code = _mm512_mask_add_epi32(code, below, code, _mm512_set1_epi32(128 >> j));
  };
  step(0, _mm512_set1_ps(search.step[0][0]));
  for (int j = 1; j <= 4; ++j)  // up to 16 candidates
    step(j, _mm512_permutexvar_ps(_mm512_srli_epi32(code, 8 - j), _mm512_loadu_ps(search.step[j])));
  step(5, entries32(search.step[5], _mm512_srli_epi32(code, 3)));
  step(6, entries64(search.step[6], _mm512_srli_epi32(code, 2)));
  const __m512i k = _mm512_srli_epi32(code, 1);
  const __mmask16 upper = _mm512_test_epi32_mask(k, _mm512_set1_epi32(64));
  step(7, _mm512_mask_blend_ps(upper, entries64(search.step[7], k), entries64(search.step[7] + 64, k)));
  return (vuint)code;
}
#else
// The number of midpoints below each lane of u (a NaN lane: any), through the table of NOTE: [the code
// lookup].
GF_HD vuint midpoints_below(vfloat u, const QuantMap& map, bool is_signed) {
  const vuint bits = (vuint)u & 0x7FFFFFFFu;  // the magnitude's
  const vuint biased = bits >> 23;             // exponent + 127
  constexpr uint32_t kLowest = uint32_t(127 + kLutLowestExponent);
  const vuint in_table = (vuint)(biased >= kLowest);
  const vuint above_one = (vuint)(biased > 127u);  // 2 and more: the top bucket of [1, 2)
  const vuint octave = (above_one ? vuint{} + 127u : biased) - kLowest;
  const vuint fraction = above_one ? vuint{} + uint32_t((1 << kLutBucketBits) - 1) : (bits >> kLutLowBits) & 0xFFu;
  const vuint bucket = in_table ? (octave << kLutBucketBits | fraction) : vuint{};
  const uint32_t zero = uint32_t(map.zero_code);
  const vuint entry = in_table ? gather<uint32_t, vuint>(map.lookup, bucket) : vuint{} + (zero | kNoMidpoint << 8);
  const vuint low_bits = bits & (kNoMidpoint - 1), midpoint_bits = entry >> 8;
  const vuint below = (entry & 0xFFu) - (vuint)(low_bits > midpoint_bits);  // a true compare is -1
  // u < 0: the signed map's symmetry, as quantize_value; the unsigned map has no negative midpoint
  const vuint mirrored = 2 * zero - below + (vuint)(low_bits == midpoint_bits);
  return (u < 0.0f) ? (is_signed ? mirrored : vuint{}) : below;
}
#endif

// quantize_value on each lane (float compute).
GF_HD vuint quantize_lanes(vfloat x, vfloat absmax, const QuantMap& map, bool is_signed) {
  const vfloat u = x / absmax;
  vuint code = midpoints_below(u, map, is_signed);
  const uint32_t zero = uint32_t(map.zero_code);
  if (!is_signed) code = (code == zero) & (x > 0.0f) ? code + 1u : code;
  return (u != u) ? vuint{} + zero : code;
}

// encode_block, on lanes for float compute; the scalar one for double.
GF_HD float encode_state_block(const float* x, int n, bool is_signed, uint8_t* codes) {
  const QuantMap& map = quant_map(is_signed);
  const float absmax = block_absmax_simd(x, n);
  const vfloat scale = vfloat{} + absmax;
  int i = 0;
  for (; i + kFloatLanes <= n; i += kFloatLanes) store_codes(codes + i, quantize_lanes(load(x + i), scale, map, is_signed));
  for (; i < n; ++i) codes[i] = quantize_value(x[i], absmax, map, is_signed);
  return absmax;
}

GF_HD void decode_state_block(const uint8_t* codes, int n, float absmax, const QuantMap& map, double* out) {
  decode_block(codes, n, double(absmax), map, out);
}
GF_HD float encode_state_block(const double* x, int n, bool is_signed, uint8_t* codes) {
  return encode_block(x, n, is_signed, codes);
}

}  // namespace kernels
GF_CODE_END
