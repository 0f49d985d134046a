// The CUDA update kernel: the pipeline of csrc/common/pipeline.h around a rule of csrc/common/rules.h,
// over every chunk of a multi-tensor launch. Each update_<rule>.cu instantiates it for one rule, so
// ninja compiles the rules in parallel and rebuilds only the one that changed.
#pragma once
#include <type_traits>
#include <vector>

#include "../common/pipeline.h"
#include "../common/quantize.h"
#include "multi_tensor_apply.cuh"

namespace gf {
namespace cuda {

using UpdateMeta = ChunkMeta<UpdateTensor, 192, 1024>;
static_assert(sizeof(UpdateMeta) < 23 * 1024, "kernel argument budget (NOTE: [chunk metadata in the kernel argument])");

// NOTE: [step lives on the device]
// With CUDA tensors the step counts (and NAdam's mu_product) stay on the GPU. The update kernel reads
// t = step + 1 and forms the per-tensor scalars (bias corrections, RAdam's rectification, AdEMA's
// warm-up) in double from it, in each thread; after every chunk is updated, advance_steps_kernel
// writes step + 1 (and the new mu_product). Nothing is read back on the host, so a step can be
// captured in a CUDA graph, like torch's capturable=True.

// Per rule: its per-tensor scalars at step t, from the common *_tensor_scalars functions.
// `product` is NAdam's mu_product including step t (0 for the other rules).
#define GF_TENSOR_SCALARS(NAME, FN)                                                   \
  struct NAME {                                                                       \
    static constexpr bool kHasProduct = false;                                        \
    template <class H>                                                                \
    __device__ static auto at(double t, double /*product*/, const H& h) { return FN(t, h); } \
  }

template <class T> using S_of = typename ComputeOf<T>::type;

__device__ __forceinline__ double read_step(const void* step, bool is_double) {
  return is_double ? *static_cast<const double*>(step) : double(*static_cast<const float*>(step));
}

__device__ __forceinline__ uint32_t float_bits(float x) { return __float_as_uint(x); }

// bf16 from fp32 with 16 random bits added below the mantissa (NOTE: [stochastic rounding bits]);
// inf and NaN are stored as rounded to nearest.
__device__ __forceinline__ __nv_bfloat16 stochastic_round(float x, uint32_t noise) {
  if (!isfinite(x)) return __float2bfloat16_rn(x);
  const uint32_t bits = (float_bits(x) + noise) & 0xFFFF0000u;
  return __ushort_as_bfloat16(uint16_t(bits >> 16));
}

// What the kernels need of one tensor at this step, formed in each thread from the call and the tensor's
// step: the per-tensor scalars in double, as the CPU engine forms them on the host, then cast to S.
template <class S, class Scalars, class H>
struct TensorStep {
  decltype(Scalars::at(0.0, 0.0, H{}).template cast<S>()) scalars;
  decltype(H{}.template cast<S>()) hyper;
  PipelineScalars<S> pipeline;
  S grad_mul, grad_scale;
  RandomKey key;
  double noise_std;
};
template <class S, class Scalars, bool kRandom, class H>
__device__ __forceinline__ TensorStep<S, Scalars, H> tensor_step(const UpdateTensor& tensor, const UpdateCall<H>& call) {
  const double t = read_step(tensor.step, tensor.step_is_double) + 1.0;
  double product = 0.0;
  if constexpr (Scalars::kHasProduct) product = double(float(Scalars::product(t, double(*tensor.product), call.hyper)));
  const double lr = read(call.lr);
  double grad_mul = call.maximize ? -1.0 : 1.0;
  if (call.alignment_scales != nullptr) grad_mul *= call.alignment_scales[tensor.index];
  return {Scalars::at(t, product, call.hyper).template cast<S>(),
          call.hyper.template cast<S>(),
          PipelineScalars<double>{lr, call.weight_decay, 1.0 - lr * call.weight_decay}.template cast<S>(),
          S(grad_mul),
          S(read(call.grad_scale)),  // a cpu tensor's value arrives as a host value
          RandomKey{call.random.seed, tensor.param_index, uint32_t(uint64_t(t))},
          kRandom ? ::sqrt(call.noise_eta / ::pow(1.0 + t, call.noise_gamma)) : 0.0};
}

// One element through the pipeline: its draws, then the rule with the call's weight-decay mode (uniform
// over the launch: no divergence).
template <class Rule, bool kRandom, class S, class Step, class H>
__device__ __forceinline__ void step_element(S& p, S& g, S (&s)[kStateArrayLength<Rule>], const Step& ts,
                                             const UpdateCall<H>& call, int64_t i) {
  StepDraws<S> draws{};
  if constexpr (kRandom) draws = element_draws<S>(call.random, ts.key, ts.noise_std, uint64_t(i));
  switch (call.weight_decay_mode) {
    case WeightDecay::None:
      pipeline_step<Rule, kRandom, WeightDecay::None>(p, g, s, ts.grad_mul, ts.pipeline, ts.hyper, ts.scalars,
                                                      call.random, draws);
      break;
    case WeightDecay::L2:
      pipeline_step<Rule, kRandom, WeightDecay::L2>(p, g, s, ts.grad_mul, ts.pipeline, ts.hyper, ts.scalars, call.random,
                                                    draws);
      break;
    case WeightDecay::Decoupled:
      pipeline_step<Rule, kRandom, WeightDecay::Decoupled>(p, g, s, ts.grad_mul, ts.pipeline, ts.hyper, ts.scalars,
                                                           call.random, draws);
      break;
  }
}

// The bf16 states of an fp32 parameter rounded at random, state k with Philox word 1 + k (NOTE:
// [stochastic rounding bits]), as the CPU kernels.
template <int kStates, int kArray>
__device__ __forceinline__ void store_states_stochastic(__nv_bfloat16* const (&st)[kArray],
                                                        const float (&sv)[kArray][kIlp], int64_t base,
                                                        int64_t stride, int64_t end, const RandomKey& key) {
#pragma unroll
  for (int j = 0; j < kIlp; ++j) {
    const int64_t i = base + j * stride;
    if (i >= end) continue;
    if constexpr (kStates > 0) st[0][i] = stochastic_round(sv[0][j], stochastic_rounding_bits<1>(key, uint64_t(i)));
    if constexpr (kStates > 1) st[1][i] = stochastic_round(sv[1][j], stochastic_rounding_bits<2>(key, uint64_t(i)));
    if constexpr (kStates > 2) st[2][i] = stochastic_round(sv[2][j], stochastic_rounding_bits<3>(key, uint64_t(i)));
  }
  static_assert(kStates <= 3, "three Philox words for states");
}

template <class Rule, class Scalars, bool kRandom, class T, class ST, class H>
__global__ void __launch_bounds__(kBlockSize)
    update_kernel(const __grid_constant__ UpdateMeta meta, const __grid_constant__ UpdateCall<H> call) {
  using S = S_of<T>;
  constexpr int kStates = Rule::kNumStates;
  constexpr int kArray = kStateArrayLength<Rule>;
  if (step_is_skipped(call.found_inf)) return;
  const int entry = blockIdx.x / call.blocks_per_chunk;  // NOTE: [blocks per chunk]
  const UpdateTensor& tensor = meta.tensor[meta.block_tensor[entry]];
  const ChunkSlice slice = chunk_slice(meta.block_chunk[entry], tensor.numel, call.blocks_per_chunk);
  if (slice.begin >= slice.end) return;
  const int64_t begin = slice.begin, end = slice.end;
  const auto ts = tensor_step<S, Scalars, kRandom>(tensor, call);

  T* p = static_cast<T*>(tensor.ptr[0]);
  T* g = static_cast<T*>(tensor.ptr[1]);
  ST* st[kArray];
#pragma unroll
  for (int j = 0; j < kStates; ++j) st[j] = static_cast<ST*>(tensor.ptr[2 + j]);
  float* master = static_cast<float*>(tensor.ptr[kMasterList]);
  const bool use_master = std::is_same<S, float>::value && call.store == ParamStore::Master;

  float* g32 = static_cast<float*>(tensor.ptr[1]);  // when call.grad_fp32
  const bool grad_fp32 = !std::is_same<T, double>::value && call.grad_fp32;
  bool aligned = is_aligned<T>(p) && (grad_fp32 ? is_aligned<float>(g32) : is_aligned<T>(g)) &&
                 (!use_master || is_aligned<float>(master));
#pragma unroll
  for (int j = 0; j < kStates; ++j) aligned = aligned && is_aligned<ST>(st[j]);

  for_each_ilp(begin, end, aligned, [&](int64_t base, int64_t stride, bool vector) {
    S pv[kIlp], gv[kIlp], sv[kArray][kIlp];
    if (use_master) load_ilp(pv, master, base, stride, end, vector);
    else load_ilp(pv, p, base, stride, end, vector);
    if (grad_fp32) load_ilp(gv, g32, base, stride, end, vector);
    else load_ilp(gv, g, base, stride, end, vector);
    if (call.unscale) {  // NOTE: [GradScaler and .grad]
#pragma unroll
      for (int j = 0; j < kIlp; ++j) gv[j] = unscale_grad(gv[j], ts.grad_scale);
      if (grad_fp32) store_ilp(g32, gv, base, stride, end, vector);
      else store_ilp(g, gv, base, stride, end, vector);
    }
#pragma unroll
    for (int k = 0; k < kStates; ++k) load_ilp(sv[k], st[k], base, stride, end, vector);
#pragma unroll
    for (int j = 0; j < kIlp; ++j) {
      S s[kArray];
#pragma unroll
      for (int k = 0; k < kStates; ++k) s[k] = sv[k][j];
      step_element<Rule, kRandom>(pv[j], gv[j], s, ts, call, base + j * stride);
#pragma unroll
      for (int k = 0; k < kStates; ++k) sv[k][j] = s[k];
    }
    if constexpr (std::is_same<T, float>::value && std::is_same<ST, __nv_bfloat16>::value) {
      if (call.store == ParamStore::Stochastic) {
        store_states_stochastic<kStates>(st, sv, base, stride, end, ts.key);
      } else {
#pragma unroll
        for (int k = 0; k < kStates; ++k) store_ilp(st[k], sv[k], base, stride, end, vector);
      }
    } else {
#pragma unroll
      for (int k = 0; k < kStates; ++k) store_ilp(st[k], sv[k], base, stride, end, vector);
    }
    if (use_master) store_ilp(master, pv, base, stride, end, vector);
    if constexpr (std::is_same<T, __nv_bfloat16>::value) {
      if (call.store == ParamStore::Stochastic) {
#pragma unroll
        for (int j = 0; j < kIlp; ++j) {
          const int64_t i = base + j * stride;
          if (i < end) p[i] = stochastic_round(pv[j], stochastic_rounding_bits(ts.key, uint64_t(i)));
        }
        return;
      }
    }
    store_ilp(p, pv, base, stride, end, vector);
  });
}

// NOTE: [8-bit states on CUDA]
// With 8-bit states (docs/low-bit-states.md) one warp steps one block of kQuantBlock elements, lane l
// taking elements l, l + 32, ... of it (coalesced). It decodes each state's codes with the block's old
// absmax, runs the pipeline as the full-precision kernel does (the parameter is updated from the new,
// unquantized states), reduces each new state's absmax over the warp with shuffles (no reduction leaves
// the block, nothing is allocated), and stores the codes: the same functions of csrc/common/quantize.h
// as the CPU kernels, so both devices give the same codes and scales (NOTE: [the 8-bit code]: integer
// operations on the float's bits, no table).

struct UpdateTensor8bit : UpdateTensor {
  float* absmax[kMaxStates];  // each state's absmax per block
};
using UpdateMeta8bit = ChunkMeta<UpdateTensor8bit, 144, 1024>;  // fewer tensors: each is 24 bytes larger
static_assert(sizeof(UpdateMeta8bit) < 23 * 1024, "kernel argument budget (NOTE: [chunk metadata in the kernel argument])");

constexpr int kWarp = 32;
constexpr int kPerLane = kQuantBlock / kWarp;
static_assert(kBlockSize % kWarp == 0, "whole warps: every lane of a warp reaches its shuffles");
static_assert(kChunkSize % (8 * kQuantBlock) == 0, "every slice of a chunk is whole blocks (NOTE: [blocks per chunk])");

// The absmax of the warp's block, as block_absmax: the largest finite magnitude (NOTE: [a non-finite state
// harms no other element]).
template <class S>
__device__ __forceinline__ float warp_absmax(const S (&x)[kPerLane], int64_t first, int64_t end) {
  S top = S(0);
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    if (first + j * kWarp >= end) continue;
    const S a = finite_magnitude(x[j]);
    top = a > top ? a : top;
  }
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const S other = __shfl_xor_sync(0xFFFFFFFFu, top, offset);
    top = other > top ? other : top;
  }
  return float(top);
}

// NOTE: [8-bit occupancy variants]
// The 8-bit kernel holds a block's codes, states, parameters and gradients in registers: 122-126 a thread
// for AdamW, so one 512-thread block fits an SM (the fp32 kernel takes 40). Whether two blocks an SM
// (at most 64 registers, spilling the rest) run faster is for a GPU to say: AdamW's 8-bit kernel is also
// compiled with __launch_bounds__(kBlockSize, 2), and GRADFUSED_CUDA_8BIT_MIN_BLOCKS=2 picks it at each
// call, so that benchmarks/gpu_bench.py compares both in one run (its `[2 blocks/SM]` rows). Only AdamW
// has the variant: doubling every rule's 8-bit kernels would add minutes to each CUDA build.
template <class Rule> struct HasOccupancyVariant : std::false_type {};
template <int V> struct HasOccupancyVariant<AdamRule<V>> : std::true_type {};

template <class Rule, class Scalars, bool kRandom, class T, class H, int kMinBlocks = 1>
__global__ void __launch_bounds__(kBlockSize, kMinBlocks)
    update_kernel_8bit(const __grid_constant__ UpdateMeta8bit meta, const __grid_constant__ UpdateCall<H> call) {
  using S = S_of<T>;
  constexpr int kStates = Rule::kNumStates;
  constexpr int kArray = kStateArrayLength<Rule>;
  if (step_is_skipped(call.found_inf)) return;  // codes and scales untouched
  const int entry = blockIdx.x / call.blocks_per_chunk;
  const UpdateTensor8bit& tensor = meta.tensor[meta.block_tensor[entry]];
  const ChunkSlice slice = chunk_slice(meta.block_chunk[entry], tensor.numel, call.blocks_per_chunk);
  if (slice.begin >= slice.end) return;
  const auto ts = tensor_step<S, Scalars, kRandom>(tensor, call);

  T* p = static_cast<T*>(tensor.ptr[0]);
  T* g = static_cast<T*>(tensor.ptr[1]);
  float* g32 = static_cast<float*>(tensor.ptr[1]);
  float* master = static_cast<float*>(tensor.ptr[kMasterList]);
  const bool use_master = std::is_same<S, float>::value && call.store == ParamStore::Master;
  const bool grad_fp32 = !std::is_same<T, double>::value && call.grad_fp32;
  const int lane = threadIdx.x % kWarp, warps = blockDim.x / kWarp;

  for (int64_t first = slice.begin + int64_t(threadIdx.x / kWarp) * kQuantBlock; first < slice.end;
       first += int64_t(warps) * kQuantBlock) {
    const int64_t block = first / kQuantBlock, mine = first + lane;  // element j of the lane: mine + 32 j
    S pv[kPerLane], gv[kPerLane], sv[kArray][kPerLane];
#pragma unroll
    for (int k = 0; k < kStates; ++k) {
      const uint8_t* codes = static_cast<const uint8_t*>(tensor.ptr[2 + k]);
      const bool is_signed = call.state_signed[k];
      const S absmax = S(tensor.absmax[k][block]);
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        const int64_t i = mine + j * kWarp;
        sv[k][j] = i < slice.end ? dequantize_value(codes[i], absmax, is_signed) : S(0);
      }
    }
    // every load of the block before any store, so that the lane's loads are in flight together (the
    // compiler cannot move a load above a store through pointers that may alias)
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int64_t i = mine + j * kWarp;
      if (i >= slice.end) continue;
      pv[j] = use_master ? S(master[i]) : to_compute(p[i]);
      gv[j] = grad_fp32 ? S(g32[i]) : to_compute(g[i]);
    }
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int64_t i = mine + j * kWarp;
      if (i >= slice.end) continue;
      if (call.unscale) gv[j] = unscale_grad(gv[j], ts.grad_scale);  // NOTE: [GradScaler and .grad]
      S s[kArray];
#pragma unroll
      for (int k = 0; k < kStates; ++k) s[k] = sv[k][j];
      S grad = gv[j];  // the pipeline works on a copy: gv[j] is what GradScaler's write-back stores
      step_element<Rule, kRandom>(pv[j], grad, s, ts, call, i);
#pragma unroll
      for (int k = 0; k < kStates; ++k) sv[k][j] = s[k];
    }
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int64_t i = mine + j * kWarp;
      if (i >= slice.end) continue;
      if (call.unscale) {
        if (grad_fp32) g32[i] = float(gv[j]);
        else g[i] = from_compute<T>(gv[j]);
      }
      if (use_master) master[i] = float(pv[j]);
      if constexpr (std::is_same<T, __nv_bfloat16>::value) {
        if (call.store == ParamStore::Stochastic) {
          p[i] = stochastic_round(pv[j], stochastic_rounding_bits(ts.key, uint64_t(i)));
          continue;
        }
      }
      p[i] = from_compute<T>(pv[j]);
    }
#pragma unroll
    for (int k = 0; k < kStates; ++k) {
      const float absmax = warp_absmax(sv[k], mine, slice.end);
      if (lane == 0) tensor.absmax[k][block] = absmax;
      uint8_t* codes = static_cast<uint8_t*>(tensor.ptr[2 + k]);
      const bool is_signed = call.state_signed[k];
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        const int64_t i = mine + j * kWarp;
        if (i < slice.end) codes[i] = quantize_value(sv[k][j], S(absmax), is_signed);
      }
    }
  }
}

// After the update: step += 1 and NAdam's mu_product, for every tensor of the call (empty ones too),
// unless found_inf skips the step (NOTE: [the op owns the step increment]).
constexpr int kAdvanceMax = 1024;
struct AdvanceMeta {
  void* step[kAdvanceMax];
  float* product[kAdvanceMax];
  bool step_is_double[kAdvanceMax];
};

template <class Scalars, class H>
__global__ void advance_steps_kernel(const __grid_constant__ AdvanceMeta meta, int n, DeviceScalar found_inf, H hyper) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n || step_is_skipped(found_inf)) return;
  const double t = read_step(meta.step[i], meta.step_is_double[i]) + 1.0;
  if constexpr (Scalars::kHasProduct) *meta.product[i] = float(Scalars::product(t, double(*meta.product[i]), hyper));
  if (meta.step_is_double[i]) *static_cast<double*>(meta.step[i]) = t;
  else *static_cast<float*>(meta.step[i]) += 1.0f;
}

template <class F>
void dtype_pair_switch(DType param, DType state, F&& f) {
  switch (param) {
    case DType::Float32:  // bfloat16 states: state_dtype=torch.bfloat16
      if (state == DType::BFloat16) f(float{}, __nv_bfloat16{});
      else f(float{}, float{});
      break;
    case DType::Float64: f(double{}, double{}); break;
    case DType::BFloat16:
      if (state == DType::Float32) f(__nv_bfloat16{}, float{});
      else f(__nv_bfloat16{}, __nv_bfloat16{});
      break;
    case DType::Float16:
      if (state == DType::Float32) f(__half{}, float{});
      else f(__half{}, __half{});
      break;
  }
}

template <int N, int I = 0, class F>
void variant_switch(int v, F&& f) {
  if constexpr (I + 1 < N) {
    if (v != I) return variant_switch<N, I + 1>(v, f);
  }
  f(std::integral_constant<int, I>{});
}

// The 8-bit launches: each tensor with its state's absmax pointers.
template <class Rule, class Scalars, class T, class H>
void launch_update_8bit(const UpdateCall<H>& call, bool random) {
  std::vector<UpdateTensor8bit> tensors(call.num_tensors);
  for (int64_t i = 0; i < call.num_tensors; ++i) {
    static_cast<UpdateTensor&>(tensors[i]) = call.tensors[i];
    for (int k = 0; k < Rule::kNumStates; ++k) tensors[i].absmax[k] = call.state_absmax[k * call.num_tensors + i];
  }
  auto kernel = random ? &update_kernel_8bit<Rule, Scalars, true, T, H> : &update_kernel_8bit<Rule, Scalars, false, T, H>;
  if constexpr (HasOccupancyVariant<Rule>::value) {  // NOTE: [8-bit occupancy variants]
    if (call.min_blocks_8bit == 2)
      kernel = random ? &update_kernel_8bit<Rule, Scalars, true, T, H, 2>
                      : &update_kernel_8bit<Rule, Scalars, false, T, H, 2>;
  }
  for_each_batch<UpdateMeta8bit>(tensors.data(), call.num_tensors, [&](const UpdateMeta8bit& meta, int blocks) {
    kernel<<<blocks * call.blocks_per_chunk, kBlockSize, 0, call.stream>>>(meta, call);
    check_launch("8-bit update");
  });
}

template <template <int> class RuleT, class Scalars, class H>
void launch_update(const UpdateCall<H>& call) {
  const bool random = call.random.noise || call.random.grad_dropout || call.random.lr_dropout;
  variant_switch<RuleT<0>::kNumVariants>(call.rule_variant, [&](auto variant) {
    using Rule = RuleT<decltype(variant)::value>;
    if (call.quantized) {  // the state dtype is the codes': switch on the parameters' alone
      dtype_pair_switch(call.param_dtype, call.param_dtype, [&](auto param_tag, auto) {
        launch_update_8bit<Rule, Scalars, decltype(param_tag)>(call, random);
      });
      return;
    }
    dtype_pair_switch(call.param_dtype, call.state_dtype, [&](auto param_tag, auto state_tag) {
      using T = decltype(param_tag);
      using ST = decltype(state_tag);
      auto kernel = random ? &update_kernel<Rule, Scalars, true, T, ST, H> : &update_kernel<Rule, Scalars, false, T, ST, H>;
      for_each_batch<UpdateMeta>(call.tensors, call.num_tensors, [&](const UpdateMeta& meta, int blocks) {
        kernel<<<blocks * call.blocks_per_chunk, kBlockSize, 0, call.stream>>>(meta, call);
        check_launch("update");
      });
    });
  });
  AdvanceMeta meta;
  for (int64_t first = 0; first < call.num_tensors; first += kAdvanceMax) {
    const int n = int(call.num_tensors - first < kAdvanceMax ? call.num_tensors - first : kAdvanceMax);
    for (int i = 0; i < n; ++i) {
      meta.step[i] = call.tensors[first + i].step;
      meta.step_is_double[i] = call.tensors[first + i].step_is_double;
      meta.product[i] = call.tensors[first + i].product;
    }
    advance_steps_kernel<Scalars, H><<<(n + 255) / 256, 256, 0, call.stream>>>(meta, n, call.found_inf, call.hyper);
    check_launch("step advance");
  }
}

}  // namespace cuda
}  // namespace gf
