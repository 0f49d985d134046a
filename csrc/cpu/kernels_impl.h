// The CPU multi-tensor launcher body: chunk loops for every rule, compiled once per instruction set.
// Included only through csrc/cpu/isa/<isa>.h by the kernel units (NOTE: [one source, several instruction
// sets], NOTE: [kernel units]).
#pragma once
#include <cstring>
#include <type_traits>
#include "simd.h"
#include "../common/pipeline.h"
#include "kernel_api.h"
#include "quantize_simd.h"

GF_CODE_BEGIN
namespace kernels {
using namespace ::gf::cpu;

// ---- runtime flags -> template parameters, at one boundary ----
template <class F>
GF_HD void bool_switch(bool b, F&& f) {
  if (b) f(std::true_type{});
  else f(std::false_type{});
}
// Calls f(integral_constant<int, v>) for v in [0, N).
template <int N, int I = 0, class F>
GF_HD void variant_switch(int v, F&& f) {
  if constexpr (I + 1 < N) {
    if (v != I) return variant_switch<N, I + 1>(v, f);
  }
  f(std::integral_constant<int, I>{});
}
template <WeightDecay W> using WdTag = std::integral_constant<WeightDecay, W>;
// No weight decay runs the decoupled kernel: its factor 1 - lr·0 is exactly 1 (lr is finite), and
// p·1 - lr·d is p - lr·d bit for bit, NaN and infinities included. One kernel fewer per combination
// (a third of the compile time) for one multiply per element in a memory-bound loop.
template <class F>
GF_HD void weight_decay_switch(WeightDecay w, F&& f) {
  if (w == WeightDecay::L2) f(WdTag<WeightDecay::L2>{});
  else f(WdTag<WeightDecay::Decoupled>{});
}
template <class T> struct TypeTag { using type = T; };
template <class F>
GF_HD void dtype_switch(DType d, F&& f) {
  switch (d) {
    case DType::Float32: f(TypeTag<float>{}); break;
    case DType::Float64: f(TypeTag<double>{}); break;
    case DType::BFloat16: f(TypeTag<bf16>{}); break;
    case DType::Float16: f(TypeTag<half>{}); break;
  }
}

// Visits chunk c of the launch as (slot, element begin, element end). Slots are in chunk order and an
// empty tensor owns no chunk, so a forward walk from a binary-searched start finds each owner.
template <class SlotT, class F>
GF_HD void for_each_chunk(const SlotT* slots, int64_t num_slots, int64_t chunk_size, int64_t chunk_begin,
                          int64_t chunk_end, F&& f) {
  int64_t lo = 0, hi = num_slots;  // last slot with first_chunk <= chunk_begin and numel > 0
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (slots[mid].first_chunk <= chunk_begin) lo = mid; else hi = mid;
  }
  int64_t s = lo;
  for (int64_t c = chunk_begin; c < chunk_end; ++c) {
    while (slots[s].numel == 0 || c >= slots[s].first_chunk + (slots[s].numel + chunk_size - 1) / chunk_size) ++s;
    const int64_t begin = (c - slots[s].first_chunk) * chunk_size;
    const int64_t end = begin + chunk_size < slots[s].numel ? begin + chunk_size : slots[s].numel;
    f(slots[s], c, begin, end);
  }
}

// Fills the lanes of `draws` for the elements [first, first + lanes) of one tensor (NOTE: [one stream
// per element]).
template <class V, class S>
GF_HD void draw_lanes(StepDraws<V>& draws, const RandomOptions& random, const RandomKey& key, double noise_std,
                      int64_t first) {
  constexpr int kLanesOfV = int(sizeof(V) / sizeof(S));
  S noise[kLanesOfV], grad_keep[kLanesOfV], lr_keep[kLanesOfV];
  for (int lane = 0; lane < kLanesOfV; ++lane) {
    const StepDraws<S> e = element_draws<S>(random, key, noise_std, uint64_t(first + lane));
    noise[lane] = e.noise;
    grad_keep[lane] = e.grad_keep;
    lr_keep[lane] = e.lr_keep;
  }
  std::memcpy(&draws.noise, noise, sizeof(V));
  std::memcpy(&draws.grad_keep, grad_keep, sizeof(V));
  std::memcpy(&draws.lr_keep, lr_keep, sizeof(V));
}

// The bf16 states of an fp32 parameter rounded at random, state j with Philox word 1 + j (NOTE:
// [stochastic rounding bits]); V is a vector or a scalar.
template <int kStates, class V>
GF_HD void store_states_stochastic(bf16* const* st, const V* sv, const RandomKey& key, int64_t first) {
  if constexpr (kStates > 0) store_stochastic<1>(st[0] + first, sv[0], key, first);
  if constexpr (kStates > 1) store_stochastic<2>(st[1] + first, sv[1], key, first);
  if constexpr (kStates > 2) store_stochastic<3>(st[2] + first, sv[2], key, first);
  static_assert(kStates <= 3, "three Philox words for states");
}

// A vector's or an element's states, stored in their type (V: a vector or a scalar); bf16 states of an
// fp32 parameter rounded at random where asked.
template <int kStates, bool kBf16States, class TS, class V>
GF_HD void store_states(TS* const* st, const V* sv, int64_t i, bool stochastic, const RandomKey& key, int64_t key_at) {
  if constexpr (kBf16States) {
    if (stochastic) return store_states_stochastic<kStates>(st, sv, key, key_at);
  }
  for (int j = 0; j < kStates; ++j) {
    if constexpr (std::is_arithmetic_v<V>) store_scalar(st[j] + i, sv[j]);
    else store(st[j] + i, sv[j]);
  }
}

// NOTE: [one stream per element]
// Every random number an element uses comes from its own Philox counter (element index, parameter index,
// t) under the seed, drawn one element at a time whether the element sits in a vector or in the scalar
// tail. So the numbers depend on nothing but the element: not on threads, chunk boundaries or ISA.

// One chunk of one tensor: the SIMD body over whole vectors, then the same pipeline on scalars. T is
// the parameters' type and TS the states' (T, or float for 16-bit T); the fp32 gradient of a 16-bit
// parameter, the master weight and stochastic rounding are uniform branches (NOTE: [mixed precision in
// one pass]). Every value is computed in Compute<T>::S and rounded once, on its store.
// `key_offset` is added to an element's position for its random keys (a block of 8-bit states is stepped
// with pointers that start at the block).
template <class Rule, bool kRandom, WeightDecay kWd, class T, class TS, class SlotT, class Launch>
GF_HD void update_chunk(const SlotT& slot, int64_t begin, int64_t end, const Launch& L, int64_t key_offset = 0) {
  using S = typename Compute<T>::S;
  using V = typename Compute<T>::V;
  constexpr bool kHalf = !std::is_same_v<T, float> && !std::is_same_v<T, double>;
  constexpr int kStates = Rule::kNumStates;
  constexpr int kArray = kStateArrayLength<Rule>;
  constexpr int kW = kLanes<T>;
  const auto ps = L.pipeline.template cast<S>();
  const auto hyper = L.hyper.template cast<S>();
  const auto ts = slot.scalars.template cast<S>();
  const S grad_mul = S(slot.grad_mul);
  const bool unscale = L.unscale;
  const S grad_scale = S(L.grad_scale);
  T* __restrict p = static_cast<T*>(slot.ptr[0]);
  T* __restrict g = static_cast<T*>(slot.ptr[1]);
  float* __restrict g32 = static_cast<float*>(slot.ptr[1]);
  float* __restrict master = static_cast<float*>(slot.ptr[kMasterList]);
  TS* st[kArray];
  for (int j = 0; j < kStates; ++j) st[j] = static_cast<TS*>(slot.ptr[2 + j]);
  const bool grad_fp32 = kHalf && L.grad_fp32;
  const bool use_master = kHalf && L.store == ParamStore::Master;
  const bool stochastic = std::is_same_v<T, bf16> && L.store == ParamStore::Stochastic;
  // bf16 states of an fp32 parameter (state_dtype=torch.bfloat16), rounded at random where asked
  constexpr bool kBf16States = std::is_same_v<T, float> && std::is_same_v<TS, bf16>;
  const bool stochastic_states = kBf16States && L.store == ParamStore::Stochastic;
  const RandomKey& key = slot.random_key;

  int64_t i = begin;
  StepDraws<V> draws{};
  for (; i + kW <= end; i += kW) {
    V pv;
    if constexpr (kHalf) pv = use_master ? load(master + i) : load(p + i);
    else pv = load(p + i);
    V gv;
    if constexpr (kHalf) gv = grad_fp32 ? load(g32 + i) : load(g + i);
    else gv = load(g + i);
    if (unscale) {  // NOTE: [GradScaler and .grad]
      gv = unscale_grad(gv, grad_scale);
      if constexpr (kHalf) {
        if (grad_fp32) store(g32 + i, gv);
        else store(g + i, gv);
      } else {
        store(g + i, gv);
      }
    }
    V sv[kArray];
    for (int j = 0; j < kStates; ++j) sv[j] = load(st[j] + i);
    if constexpr (kRandom) draw_lanes<V, S>(draws, L.random, key, slot.noise_std, i + key_offset);
    pipeline_step<Rule, kRandom, kWd>(pv, gv, sv, grad_mul, ps, hyper, ts, L.random, draws);
    store_states<kStates, kBf16States>(st, sv, i, stochastic_states, key, i + key_offset);
    if constexpr (kHalf) {
      if (use_master) store(master + i, pv);
      if constexpr (std::is_same_v<T, bf16>) {
        if (stochastic) {
          store_stochastic(p + i, pv, key, i + key_offset);
          continue;
        }
      }
    }
    store(p + i, pv);
  }
  StepDraws<S> scalar_draws{};
  for (; i < end; ++i) {
    S pv = use_master ? master[i] : to_compute(p[i]);
    S gv = grad_fp32 ? S(g32[i]) : to_compute(g[i]);
    if (unscale) {
      gv = unscale_grad(gv, grad_scale);
      if (grad_fp32) g32[i] = float(gv);
      else store_scalar(g + i, gv);
    }
    S sv[kArray];
    for (int j = 0; j < kStates; ++j) sv[j] = to_compute(st[j][i]);
    if constexpr (kRandom) scalar_draws = element_draws<S>(L.random, key, slot.noise_std, uint64_t(i + key_offset));
    pipeline_step<Rule, kRandom, kWd>(pv, gv, sv, grad_mul, ps, hyper, ts, L.random, scalar_draws);
    store_states<kStates, kBf16States>(st, sv, i, stochastic_states, key, i + key_offset);
    if constexpr (kHalf) {
      if (use_master) master[i] = float(pv);
      if constexpr (std::is_same_v<T, bf16>) {
        if (stochastic) {
          store_stochastic(p + i, float(pv), key, i + key_offset);
          continue;
        }
      }
    }
    store_scalar(p + i, pv);
  }
}

// update_chunk compiled once, out of line, for each combination: the full-precision path and the 8-bit
// path's blocks (whose states are compute-type buffers, the fp32-state layout) share one body. Inlined
// into both, it doubled the kernel units' compile time.
template <class Rule, bool kRandom, WeightDecay kWd, class T, class TS, class SlotT, class Launch>
__attribute__((noinline)) void update_span(const SlotT& slot, int64_t begin, int64_t end, const Launch& L,
                                           int64_t key_offset) {
  update_chunk<Rule, kRandom, kWd, T, TS>(slot, begin, end, L, key_offset);
}

// NOTE: [8-bit states in the kernel]
// With 8-bit states (docs/low-bit-states.md) a chunk is stepped block by block (chunks are whole blocks of
// kQuantBlock elements). Each state's codes of the block are decoded into a buffer in the compute type;
// update_chunk runs over the buffers as over full-precision states, so the parameter is updated from the
// new, unquantized states; then each state's new absmax is reduced over the block and its codes are
// written. One pass over memory, every reduction inside one block, nothing allocated.
template <class Rule, bool kRandom, WeightDecay kWd, class T, class SlotT, class Launch>
GF_HD void update_chunk_8bit(const SlotT& slot, int64_t begin, int64_t end, const Launch& L) {
  using S = typename Compute<T>::S;
  constexpr int kStates = Rule::kNumStates;
  constexpr bool kHalf = !std::is_same_v<T, float> && !std::is_same_v<T, double>;
  const size_t grad_size = kHalf && L.grad_fp32 ? sizeof(float) : sizeof(T);
  alignas(64) S buffer[kStateArrayLength<Rule>][kQuantBlock];
  SlotT block_slot = slot;
  for (int64_t first = begin; first < end; first += kQuantBlock) {
    const int n = int(end - first < kQuantBlock ? end - first : kQuantBlock);
    const int64_t block = first / kQuantBlock;
    for (int j = 0; j < kStates; ++j) {
      decode_state_block(static_cast<const uint8_t*>(slot.ptr[2 + j]) + first, n, slot.absmax[j][block],
                         L.state_signed[j], buffer[j]);
      block_slot.ptr[2 + j] = buffer[j];
    }
    block_slot.ptr[0] = static_cast<T*>(slot.ptr[0]) + first;
    block_slot.ptr[1] = static_cast<char*>(slot.ptr[1]) + first * int64_t(grad_size);
    if (slot.ptr[kMasterList] != nullptr) block_slot.ptr[kMasterList] = static_cast<float*>(slot.ptr[kMasterList]) + first;
    update_span<Rule, kRandom, kWd, T, S>(block_slot, 0, n, L, first);
    for (int j = 0; j < kStates; ++j)
      slot.absmax[j][block] =
          encode_state_block(buffer[j], n, L.state_signed[j], static_cast<uint8_t*>(slot.ptr[2 + j]) + first);
  }
}

// The (parameter, state) storage types of a call: the state is the parameter's type, float32 for 16-bit
// parameters, or bfloat16 for float32 parameters.
template <class F>
GF_HD void layout_switch(DType param, DType state, F&& f) {
  const bool fp32_state = state == DType::Float32 && param != DType::Float32;
  dtype_switch(param, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, double>) f(tag, tag);
    else if constexpr (std::is_same_v<T, float>) {
      if (state == DType::BFloat16) f(tag, TypeTag<bf16>{});
      else f(tag, tag);
    } else if (fp32_state) f(tag, TypeTag<float>{});
    else f(tag, tag);
  });
}

template <template <int> class RuleT, class Launch>
void update_chunks(const Launch& L, int64_t chunk_begin, int64_t chunk_end) {
  const bool random = L.random.noise || L.random.grad_dropout || L.random.lr_dropout;
  variant_switch<RuleT<0>::kNumVariants>(L.rule_variant, [&](auto variant) {
    bool_switch(random, [&](auto is_random) {
      weight_decay_switch(L.weight_decay_mode, [&](auto wd) {
        layout_switch(L.dtype, L.state_dtype, [&](auto param_tag, auto state_tag) {
          using Rule = RuleT<decltype(variant)::value>;
          using T = typename decltype(param_tag)::type;
          using TS = typename decltype(state_tag)::type;
          for_each_chunk(L.slots, L.num_slots, L.chunk_size, chunk_begin, chunk_end,
                         [&](const auto& slot, int64_t, int64_t begin, int64_t end) {
                           constexpr bool kRandom = decltype(is_random)::value;
                           constexpr WeightDecay kWd = decltype(wd)::value;
                           if (L.quantized) update_chunk_8bit<Rule, kRandom, kWd, T>(slot, begin, end, L);
                           else update_span<Rule, kRandom, kWd, T, TS>(slot, begin, end, L, 0);
                         });
        });
      });
    });
  });
}

// Adds g·a, g·g and a·a to the double accumulators acc[0..2] (products in double, as the reference).
GF_HD void accumulate_alignment(vdouble g, vdouble a, vdouble* acc) {
  acc[0] = acc[0] + g * a;
  acc[1] = acc[1] + g * g;
  acc[2] = acc[2] + a * a;
}
GF_HD void accumulate_alignment(vfloat g, vfloat a, vdouble* acc) {
  vdouble g_lo, g_hi, a_lo, a_hi;
  widen(g, g_lo, g_hi);
  widen(a, a_lo, a_hi);
  accumulate_alignment(g_lo, a_lo, acc);
  accumulate_alignment(g_hi, a_hi, acc);
}

// GradientAlignment statistics of one chunk; the partial sums go to L.partials[3 * chunk].
template <bool kUnscale, class T>
GF_HD void alignment_chunk(const AlignSlot& slot, int64_t chunk, int64_t begin, int64_t end, const AlignLaunch& L) {
  using S = typename Compute<T>::S;
  using V = typename Compute<T>::V;
  constexpr int kW = kLanes<T>;
  const auto h = L.hyper.template cast<S>();
  const T* __restrict g = static_cast<const T*>(slot.grad);
  T* __restrict a = static_cast<T*>(slot.ema);
  vdouble acc[3] = {vdouble{}, vdouble{}, vdouble{}};
  int64_t i = begin;
  for (; i + kW <= end; i += kW) {
    V av = load(a + i);
    const V gv = alignment_ema_step<kUnscale>(load(g + i), av, h);
    store(a + i, av);
    accumulate_alignment(gv, av, acc);
  }
  double sums[3] = {0.0, 0.0, 0.0};
  for (int k = 0; k < 3; ++k)  // lanes in a fixed order: deterministic
    for (int lane = 0; lane < int(sizeof(vdouble) / sizeof(double)); ++lane) sums[k] += acc[k][lane];
  for (; i < end; ++i) {
    S av = to_compute(a[i]);
    const double gd = double(alignment_ema_step<kUnscale>(to_compute(g[i]), av, h));
    store_scalar(a + i, av);
    const double ad = double(av);
    sums[0] += gd * ad;
    sums[1] += gd * gd;
    sums[2] += ad * ad;
  }
  for (int k = 0; k < 3; ++k) L.partials[3 * chunk + k] = sums[k];
}

inline void alignment_chunks(const AlignLaunch& L, int64_t chunk_begin, int64_t chunk_end) {
  bool_switch(L.unscale, [&](auto unscale) {
    dtype_switch(L.dtype, [&](auto tag) {
      for_each_chunk(L.slots, L.num_slots, L.chunk_size, chunk_begin, chunk_end,
                     [&](const AlignSlot& slot, int64_t chunk, int64_t begin, int64_t end) {
                       alignment_chunk<decltype(unscale)::value, typename decltype(tag)::type>(slot, chunk, begin, end, L);
                     });
    });
  });
}

// Lookahead's slow-weight pass over one chunk: φ = φ + α (θ - φ); θ = φ (one read and write of each).
template <class T>
GF_HD void lookahead_chunk(const LookaheadSlot& slot, int64_t begin, int64_t end, const LookaheadLaunch& L) {
  using S = typename Compute<T>::S;
  using V = typename Compute<T>::V;
  constexpr int kW = kLanes<T>;
  const S alpha = S(L.alpha);
  T* __restrict p = static_cast<T*>(slot.param);
  T* __restrict slow = static_cast<T*>(slot.slow);
  int64_t i = begin;
  for (; i + kW <= end; i += kW) {
    const V phi = lookahead_slow_step(load(p + i), load(slow + i), alpha);
    store(slow + i, phi);
    store(p + i, phi);
  }
  for (; i < end; ++i) {
    const S phi = lookahead_slow_step(to_compute(p[i]), to_compute(slow[i]), alpha);
    store_scalar(slow + i, phi);
    store_scalar(p + i, phi);
  }
}

inline void lookahead_chunks(const LookaheadLaunch& L, int64_t chunk_begin, int64_t chunk_end) {
  dtype_switch(L.dtype, [&](auto tag) {
    for_each_chunk(L.slots, L.num_slots, L.chunk_size, chunk_begin, chunk_end,
                   [&](const LookaheadSlot& slot, int64_t, int64_t begin, int64_t end) {
                     lookahead_chunk<typename decltype(tag)::type>(slot, begin, end, L);
                   });
  });
}

}  // namespace kernels
GF_CODE_END

#define GF_CAT2(a, b) a##b
#define GF_CAT(a, b) GF_CAT2(a, b)
#define GF_ISA_ENTRIES GF_CAT(isa_, GF_ISA)
// Defines this instruction set's table entry `entry` (kernel_api.h) as kernels::<impl>.
#define GF_CPU_KERNEL(entry, ...)                                                                          \
  void gf::cpu::GF_ISA_ENTRIES::entry(                                                                     \
      const gf::cpu::LaunchOf<decltype(&gf::cpu::GF_ISA_ENTRIES::entry)>::type& launch, int64_t chunk_begin, \
      int64_t chunk_end) {                                                                                 \
    using namespace ::gf::GF_ISA::kernels;                                                                 \
    __VA_ARGS__(launch, chunk_begin, chunk_end);                                                           \
  }
