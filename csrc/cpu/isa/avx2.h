// The prologue of a kernel unit for x86-64 CPUs with AVX2, FMA and F16C (Haswell and later), picked at
// run time (NOTE: [kernel units]). Elsewhere the unit defines nothing and the table stays empty.
#pragma once
#define GF_ISA avx2
#include "../kernel_api.h"
#if defined(__x86_64__)
#include <cmath>
#include <cstring>
#include <immintrin.h>
#include <type_traits>
#pragma GCC target("avx2,fma,f16c")
#define GF_VEC_BYTES 32
#include "../kernels_impl.h"
#else
#define GF_CPU_KERNEL(entry, ...)
#endif
