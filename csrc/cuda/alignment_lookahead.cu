// GradientAlignment statistics and Lookahead's slow-weight pass on CUDA, through the launcher of
// multi_tensor_apply.cuh and the per-element functions of csrc/common/pipeline.h.
#include "../common/pipeline.h"
#include "multi_tensor_apply.cuh"

namespace gf {
namespace cuda {
namespace {

template <class F>
void dtype_switch(DType d, F&& f) {
  switch (d) {
    case DType::Float32: f(float{}); break;
    case DType::Float64: f(double{}); break;
    case DType::BFloat16: f(__nv_bfloat16{}); break;
    case DType::Float16: f(__half{}); break;
  }
}

// ---- GradientAlignment statistics ----
// NOTE: [deterministic alignment sums]
// No floating-point atomics: each chunk reduces its <g,a>, ‖g‖², ‖a‖² in double over a fixed tree and
// writes them to its own slot of `partials` (3 per chunk, the tensor's chunks from its first_chunk on);
// then one block per tensor adds its chunks over a fixed tree. Each thread takes the same elements
// whether the tensor is aligned or not (for_each_ilp_same_threads), so the same values give bitwise the
// same sums on every run and at any address (DDP's gradient_as_bucket_view hands out offset views). The
// scratch is 24 bytes per 65 536 elements, however the tensors' sizes are spread.
using AlignMeta = ChunkMeta<AlignTensor, 320, 1024>;

// A fixed-tree sum over the block of each thread's three values; thread 0 gets the totals.
__device__ __forceinline__ void block_sum3(double (&acc)[3]) {
  __shared__ double shared[3][kBlockSize];
  for (int k = 0; k < 3; ++k) shared[k][threadIdx.x] = acc[k];
  __syncthreads();
  for (int width = blockDim.x / 2; width > 0; width /= 2) {
    if (threadIdx.x < width)
      for (int k = 0; k < 3; ++k) shared[k][threadIdx.x] += shared[k][threadIdx.x + width];
    __syncthreads();
  }
  for (int k = 0; k < 3; ++k) acc[k] = shared[k][0];
}

template <class T, bool kUnscale>
__global__ void __launch_bounds__(kBlockSize)
    alignment_partials_kernel(const __grid_constant__ AlignMeta meta, const __grid_constant__ AlignCall call) {
  using S = typename ComputeOf<T>::type;
  if (step_is_skipped(call.found_inf)) return;
  const AlignTensor& tensor = meta.tensor[meta.block_tensor[blockIdx.x]];
  const int64_t chunk = meta.block_chunk[blockIdx.x];
  const int64_t begin = chunk * kChunkSize;
  const int64_t end = begin + kChunkSize < tensor.numel ? begin + kChunkSize : tensor.numel;
  const AlignHyper<S> h = AlignHyper<double>{call.beta, 1.0 - call.beta, kUnscale ? read(call.grad_scale) : 1.0}.template cast<S>();
  const T* g = static_cast<const T*>(tensor.grad);
  T* a = static_cast<T*>(tensor.ema);
  double acc[3] = {0.0, 0.0, 0.0};
  for_each_ilp_same_threads(begin, end, is_aligned<T>(g) && is_aligned<T>(a), [&](int64_t base, int64_t stride,
                                                                                  bool vector) {
    S gv[kIlp], av[kIlp];
    load_ilp(gv, g, base, stride, end, vector);
    load_ilp(av, a, base, stride, end, vector);
#pragma unroll
    for (int j = 0; j < kIlp; ++j) {
      if (base + j * stride >= end) continue;  // loaded as zeros, but keep the sums exact
      const double gd = double(alignment_ema_step<kUnscale>(gv[j], av[j], h));
      const double ad = double(av[j]);
      acc[0] += gd * ad;
      acc[1] += gd * gd;
      acc[2] += ad * ad;
    }
    store_ilp(a, av, base, stride, end, vector);
  });
  block_sum3(acc);
  if (threadIdx.x == 0)
    for (int k = 0; k < 3; ++k) call.partials[(tensor.first_chunk + chunk) * 3 + k] = acc[k];
}

// The second pass: one block per tensor; thread j adds chunks j, j + blockDim.x, ... in order.
constexpr int kSumsTensors = 1024;
struct AlignSumsMeta {
  int64_t first_chunk[kSumsTensors];
  int64_t num_chunks[kSumsTensors];
  int32_t index[kSumsTensors];
};
constexpr int kSumsBlock = 256;
static_assert(sizeof(AlignSumsMeta) + sizeof(AlignCall) < 23 * 1024,
              "kernel argument budget (NOTE: [chunk metadata in the kernel argument])");

__global__ void __launch_bounds__(kSumsBlock)
    alignment_sums_kernel(const __grid_constant__ AlignSumsMeta meta, const __grid_constant__ AlignCall call) {
  if (step_is_skipped(call.found_inf)) return;
  const double* partials = call.partials + meta.first_chunk[blockIdx.x] * 3;
  double acc[3] = {0.0, 0.0, 0.0};
  for (int64_t c = threadIdx.x; c < meta.num_chunks[blockIdx.x]; c += blockDim.x)
    for (int k = 0; k < 3; ++k) acc[k] += partials[3 * c + k];
  block_sum3(acc);
  if (threadIdx.x == 0)
    for (int k = 0; k < 3; ++k) call.sums[3 * int64_t(meta.index[blockIdx.x]) + k] = acc[k];
}

// ---- Lookahead ----
using LookaheadMeta = ChunkMeta<LookaheadTensor, 640, 1024>;

template <class T>
__global__ void __launch_bounds__(kBlockSize)
    lookahead_kernel(const __grid_constant__ LookaheadMeta meta, double alpha_d) {
  using S = typename ComputeOf<T>::type;
  const LookaheadTensor& tensor = meta.tensor[meta.block_tensor[blockIdx.x]];
  const int64_t begin = int64_t(meta.block_chunk[blockIdx.x]) * kChunkSize;
  const int64_t end = begin + kChunkSize < tensor.numel ? begin + kChunkSize : tensor.numel;
  const S alpha = S(alpha_d);
  T* p = static_cast<T*>(tensor.param);
  T* slow = static_cast<T*>(tensor.slow);
  for_each_ilp(begin, end, is_aligned<T>(p) && is_aligned<T>(slow), [&](int64_t base, int64_t stride, bool vector) {
    S pv[kIlp], sv[kIlp];
    load_ilp(pv, p, base, stride, end, vector);
    load_ilp(sv, slow, base, stride, end, vector);
#pragma unroll
    for (int j = 0; j < kIlp; ++j) sv[j] = lookahead_slow_step(pv[j], sv[j], alpha);
    store_ilp(slow, sv, base, stride, end, vector);
    store_ilp(p, sv, base, stride, end, vector);
  });
}

}  // namespace

int64_t alignment_chunks_of(int64_t numel) { return (numel + kChunkSize - 1) / kChunkSize; }

void launch_alignment_sums(const AlignCall& call) {
  if (call.num_tensors == 0) return;
  dtype_switch(call.dtype, [&](auto tag) {
    using T = decltype(tag);
    auto kernel = call.grad_scale.ptr || call.grad_scale.value != 1.0 ? &alignment_partials_kernel<T, true>
                                                                      : &alignment_partials_kernel<T, false>;
    for_each_batch<AlignMeta>(call.tensors, call.num_tensors, [&](const AlignMeta& meta, int blocks) {
      kernel<<<blocks, kBlockSize, 0, call.stream>>>(meta, call);
      check_launch("alignment statistics");
    });
  });
  AlignSumsMeta meta;  // every tensor, empty ones too: their sums are 0
  for (int64_t first = 0; first < call.num_tensors; first += kSumsTensors) {
    const int64_t count = call.num_tensors - first < kSumsTensors ? call.num_tensors - first : kSumsTensors;
    for (int64_t j = 0; j < count; ++j) {
      const AlignTensor& t = call.tensors[first + j];
      meta.first_chunk[j] = t.first_chunk;
      meta.num_chunks[j] = alignment_chunks_of(t.numel);
      meta.index[j] = t.index;
    }
    alignment_sums_kernel<<<unsigned(count), kSumsBlock, 0, call.stream>>>(meta, call);
    check_launch("alignment sums");
  }
}

void launch_lookahead(const LookaheadCall& call) {
  dtype_switch(call.dtype, [&](auto tag) {
    using T = decltype(tag);
    for_each_batch<LookaheadMeta>(call.tensors, call.num_tensors, [&](const LookaheadMeta& meta, int blocks) {
      lookahead_kernel<T><<<blocks, kBlockSize, 0, call.stream>>>(meta, call.alpha);
      check_launch("lookahead");
    });
  });
}

#define GF_STR2(...) #__VA_ARGS__
#define GF_STR(...) GF_STR2(__VA_ARGS__)
const char* compiled_architectures() {
#ifdef __CUDA_ARCH_LIST__
  return GF_STR(__CUDA_ARCH_LIST__);
#else
  return "unknown";
#endif
}

int driver_version() {
  int version = 0;
  if (cudaDriverGetVersion(&version) != cudaSuccess) return 0;
  return version;
}

}  // namespace cuda
}  // namespace gf
