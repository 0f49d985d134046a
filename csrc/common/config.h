// Macros shared by every translation unit that includes the rules: host, SIMD and CUDA.
// Torch-free by design, so nvcc can compile-check the CUDA kernels beside a CPU build of torch.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define GF_HD __host__ __device__ __forceinline__
#elif defined(_MSC_VER)
#define GF_HD __forceinline
#else
#define GF_HD inline __attribute__((always_inline))
#endif

// NOTE: [one source, several instruction sets]
// The CPU kernels are compiled once per instruction set (generic, AVX2, AVX-512), each translation unit
// defining GF_ISA before it includes anything. Code (rules, kernels) lives in the inline namespace
// gf::GF_ISA so that the linker never merges an AVX2 copy of an inline function into generic code,
// which would crash a CPU without AVX2. Plain data (hyperparameter structs) lives in gf:: directly.
#ifndef GF_ISA
#define GF_ISA generic
#endif
#define GF_CODE_BEGIN namespace gf { inline namespace GF_ISA {
#define GF_CODE_END } }
