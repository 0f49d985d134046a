// The CUDA multi-tensor launcher (after apex's multi_tensor_apply): the tensors of a call are cut into
// chunks of kChunkSize elements, one thread block per chunk, and the chunk table travels in the kernel
// argument. Torch-free: CUDA headers and csrc/common/ only.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "launch_api.h"

namespace gf {
namespace cuda {

constexpr int kBlockSize = 512;
constexpr int kIlp = 4;  // elements per thread per iteration: independent loads in flight
constexpr int64_t kChunkSize = 65536;

// NOTE: [chunk metadata in the kernel argument]
// CUDA 12.1 raised the kernel-argument limit from 4 KB to 32 764 bytes (Volta and later). One launch
// carries up to kMaxTensors tensors and kMaxBlocks chunks, about 22 KB, so a step over 10 000 small
// tensors takes tens of launches rather than hundreds. A launch goes out when either table is full; a
// tensor cut there continues in the next launch. Chunk offsets are 64-bit, so a tensor of more than
// 2^31 elements is addressed correctly.
template <class Info, int kTensors, int kBlocks>
struct ChunkMeta {
  static_assert(kTensors <= 65535, "block_tensor is 16-bit");
  using TensorInfo = Info;
  static constexpr int kMaxTensors = kTensors, kMaxBlocks = kBlocks;
  Info tensor[kTensors];
  uint16_t block_tensor[kBlocks];
  int32_t block_chunk[kBlocks];
};

inline void check_launch(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw std::runtime_error(std::string("gradfused: ") + what + " launch failed: " + cudaGetErrorString(e));
}

// NOTE: [blocks per chunk]
// A chunk may be shared by several thread blocks, each taking a contiguous slice of it. The chunk table
// stays the same size, but the grid has more, shorter blocks, so the last wave of a launch leaves fewer
// SMs idle (100M elements are 1526 chunks: under 4 waves of 2-3 resident blocks per SM on 132 SMs).
// GRADFUSED_CUDA_BLOCKS_PER_CHUNK (1, 2, 4 or 8; default 4) picks it, for the benchmark to compare.
struct ChunkSlice {
  int64_t begin, end;  // elements of the tensor; empty when the slice lies past its end
};
__device__ __forceinline__ ChunkSlice chunk_slice(int64_t chunk, int64_t numel, int blocks_per_chunk) {
  const int64_t slice = kChunkSize / blocks_per_chunk;
  const int64_t begin = chunk * kChunkSize + int64_t(blockIdx.x % blocks_per_chunk) * slice;
  const int64_t end = begin + slice < numel ? begin + slice : numel;
  return {begin, end};
}

// Calls launch(meta, num_blocks) for each batch of chunks of `tensors` (empty tensors own none), in
// batches of the sizes of Meta (a ChunkMeta).
template <class Meta, class Launch>
void for_each_batch(const typename Meta::TensorInfo* tensors, int64_t n, Launch&& launch) {
  constexpr int kMaxTensors = Meta::kMaxTensors, kMaxBlocks = Meta::kMaxBlocks;
  Meta meta;
  int num_tensors = 0, num_blocks = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t chunks = (tensors[i].numel + kChunkSize - 1) / kChunkSize;
    if (chunks == 0) continue;
    meta.tensor[num_tensors++] = tensors[i];
    for (int64_t c = 0; c < chunks; ++c) {
      meta.block_tensor[num_blocks] = uint16_t(num_tensors - 1);
      meta.block_chunk[num_blocks++] = int32_t(c);
      const bool last_chunk = c == chunks - 1;
      if (num_blocks == kMaxBlocks || (num_tensors == kMaxTensors && last_chunk)) {
        launch(meta, num_blocks);
        num_blocks = 0;
        if (last_chunk) {
          num_tensors = 0;
        } else {  // the tensor goes on in the next launch
          meta.tensor[0] = meta.tensor[num_tensors - 1];
          num_tensors = 1;
        }
      }
    }
  }
  if (num_blocks > 0) launch(meta, num_blocks);
}

// ---- element types ----
// The compute type: float, or double for float64 (as the CPU engine).
template <class T> struct ComputeOf { using type = float; };
template <> struct ComputeOf<double> { using type = double; };

__device__ __forceinline__ float to_compute(float x) { return x; }
__device__ __forceinline__ double to_compute(double x) { return x; }
__device__ __forceinline__ float to_compute(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_compute(__half x) { return __half2float(x); }

// Round to nearest even, as c10's conversions.
template <class T> __device__ __forceinline__ T from_compute(float x);
template <> __device__ __forceinline__ float from_compute<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_compute<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_compute<__half>(float x) { return __float2half_rn(x); }
template <class T> __device__ __forceinline__ T from_compute(double x) { return x; }

__device__ __forceinline__ double read(const DeviceScalar& s) {
  if (s.ptr == nullptr) return s.value;
  return s.is_double ? *static_cast<const double*>(s.ptr) : double(*static_cast<const float*>(s.ptr));
}
// A found_inf given as a CPU tensor arrives as a host value (absent is 0): it skips as a device one does.
__device__ __forceinline__ bool step_is_skipped(const DeviceScalar& found_inf) { return read(found_inf) != 0.0; }

// kIlp elements of one thread: element j sits at base + j * stride. With stride 1 and a 16-byte aligned
// base the loads and stores are single vector instructions.
template <class T>
struct alignas(sizeof(T) * kIlp) Pack {
  T v[kIlp];
};

template <class T, class S>
__device__ __forceinline__ void load_ilp(S (&out)[kIlp], const T* p, int64_t base, int64_t stride, int64_t end,
                                         bool vector) {
  if (vector) {
    const Pack<T> pack = *reinterpret_cast<const Pack<T>*>(p + base);
#pragma unroll
    for (int j = 0; j < kIlp; ++j) out[j] = to_compute(pack.v[j]);
    return;
  }
#pragma unroll
  for (int j = 0; j < kIlp; ++j) {
    const int64_t i = base + j * stride;
    out[j] = i < end ? to_compute(p[i]) : S(0);
  }
}

template <class T, class S>
__device__ __forceinline__ void store_ilp(T* p, const S (&in)[kIlp], int64_t base, int64_t stride, int64_t end,
                                          bool vector) {
  if (vector) {
    Pack<T> pack;
#pragma unroll
    for (int j = 0; j < kIlp; ++j) pack.v[j] = from_compute<T>(in[j]);
    *reinterpret_cast<Pack<T>*>(p + base) = pack;
    return;
  }
#pragma unroll
  for (int j = 0; j < kIlp; ++j) {
    const int64_t i = base + j * stride;
    if (i < end) p[i] = from_compute<T>(in[j]);
  }
}

template <class T>
__device__ __forceinline__ bool is_aligned(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % (sizeof(T) * kIlp) == 0;
}

// Runs body(base, stride, vector) over the elements [begin, end) of a chunk, kIlp consecutive elements
// per thread and call (stride 1), through vector loads where the tensor is aligned (`vector`), scalar
// ones elsewhere. Every thread takes the same elements whether or not the tensor is aligned, so a
// reduction over them does not depend on where the tensor lies in memory (NOTE: [deterministic
// alignment sums]).
template <class Body>
__device__ __forceinline__ void for_each_ilp_same_threads(int64_t begin, int64_t end, bool aligned, Body&& body) {
  int64_t base = begin + int64_t(threadIdx.x) * kIlp;
  for (; base + kIlp <= end; base += int64_t(blockDim.x) * kIlp) body(base, int64_t(1), aligned);
  if (base < end) body(base, int64_t(1), false);
}

// As for_each_ilp_same_threads, for elementwise work, where which thread takes an element does not
// matter: unaligned tensors take strided, coalesced scalar accesses instead.
template <class Body>
__device__ __forceinline__ void for_each_ilp(int64_t begin, int64_t end, bool aligned, Body&& body) {
  if (aligned) return for_each_ilp_same_threads(begin, end, true, body);
  for (int64_t base = begin + threadIdx.x; base < end; base += int64_t(blockDim.x) * kIlp)
    body(base, int64_t(blockDim.x), false);
}

}  // namespace cuda
}  // namespace gf
