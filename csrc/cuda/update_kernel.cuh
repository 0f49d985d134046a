// The CUDA update kernel: the pipeline of csrc/common/pipeline.h around a rule of csrc/common/rules.h,
// over every chunk of a multi-tensor launch. Each update_<rule>.cu instantiates it for one rule, so
// ninja compiles the rules in parallel and rebuilds only the one that changed.
#pragma once
#include <type_traits>

#include "../common/pipeline.h"
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

  // Per-tensor scalars, in double, as the CPU engine forms them on the host.
  const double t = read_step(tensor.step, tensor.step_is_double) + 1.0;
  double product = 0.0;
  if constexpr (Scalars::kHasProduct) product = double(float(Scalars::product(t, double(*tensor.product), call.hyper)));
  const auto ts = Scalars::at(t, product, call.hyper).template cast<S>();
  const auto hyper = call.hyper.template cast<S>();
  const double lr = read(call.lr);
  const PipelineScalars<S> ps = PipelineScalars<double>{lr, call.weight_decay, 1.0 - lr * call.weight_decay}.template cast<S>();
  double grad_mul = call.maximize ? -1.0 : 1.0;
  if (call.alignment_scales != nullptr) grad_mul *= call.alignment_scales[tensor.index];
  const S grad_mul_s = S(grad_mul);
  const S grad_scale = S(read(call.grad_scale));  // a cpu tensor's value arrives as a host value
  const RandomKey key{call.random.seed, tensor.param_index, uint32_t(uint64_t(t))};
  const double noise_std = kRandom ? ::sqrt(call.noise_eta / ::pow(1.0 + t, call.noise_gamma)) : 0.0;

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
      for (int j = 0; j < kIlp; ++j) gv[j] = unscale_grad(gv[j], grad_scale);
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
      StepDraws<S> draws{};
      if constexpr (kRandom) draws = element_draws<S>(call.random, key, noise_std, uint64_t(base + j * stride));
      switch (call.weight_decay_mode) {  // uniform over the launch: no divergence
        case WeightDecay::None:
          pipeline_step<Rule, kRandom, WeightDecay::None>(pv[j], gv[j], s, grad_mul_s, ps, hyper, ts, call.random, draws);
          break;
        case WeightDecay::L2:
          pipeline_step<Rule, kRandom, WeightDecay::L2>(pv[j], gv[j], s, grad_mul_s, ps, hyper, ts, call.random, draws);
          break;
        case WeightDecay::Decoupled:
          pipeline_step<Rule, kRandom, WeightDecay::Decoupled>(pv[j], gv[j], s, grad_mul_s, ps, hyper, ts, call.random,
                                                               draws);
          break;
      }
#pragma unroll
      for (int k = 0; k < kStates; ++k) sv[k][j] = s[k];
    }
#pragma unroll
    for (int k = 0; k < kStates; ++k) store_ilp(st[k], sv[k], base, stride, end, vector);
    if (use_master) store_ilp(master, pv, base, stride, end, vector);
    if constexpr (std::is_same<T, __nv_bfloat16>::value) {
      if (call.store == ParamStore::Stochastic) {
#pragma unroll
        for (int j = 0; j < kIlp; ++j) {
          const int64_t i = base + j * stride;
          if (i < end) p[i] = stochastic_round(pv[j], stochastic_rounding_bits(key, uint64_t(i)));
        }
        return;
      }
    }
    store_ilp(p, pv, base, stride, end, vector);
  });
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
    case DType::Float32: f(float{}, float{}); break;
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

template <template <int> class RuleT, class Scalars, class H>
void launch_update(const UpdateCall<H>& call) {
  const bool random = call.random.noise || call.random.grad_dropout || call.random.lr_dropout;
  variant_switch<RuleT<0>::kNumVariants>(call.rule_variant, [&](auto variant) {
    using Rule = RuleT<decltype(variant)::value>;
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
