// The prologue of a kernel unit for x86-64 CPUs with AVX-512 (F, BW, DQ, VL; Skylake-SP and later), picked
// at run time (NOTE: [kernel units]). Elsewhere the unit defines nothing and the table stays empty.
#pragma once
#define GF_ISA avx512
#include "../kernel_api.h"
#if defined(__x86_64__)
#include <cmath>
#include <cstring>
#include <immintrin.h>
#include <type_traits>
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")
#define GF_VEC_BYTES 64
#include "../kernels_impl.h"
#else
#define GF_CPU_KERNEL(entry, ...)
#endif
