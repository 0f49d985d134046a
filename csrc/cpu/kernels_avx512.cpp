// The kernels for x86-64 CPUs with AVX-512 (F, BW, DQ, VL; Skylake-SP and later), picked at run time.
#define GF_ISA avx512
#include "kernel_api.h"
#if defined(__x86_64__)
#include <cmath>
#include <cstring>
#include <immintrin.h>
#include <type_traits>
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")
#define GF_VEC_BYTES 64
#include "kernels_impl.h"
#pragma GCC pop_options
namespace gf {
namespace cpu {
constexpr KernelTable kAvx512Kernels = avx512::kernels::make_kernel_table("avx512");
}
}  // namespace gf
#else
namespace gf {
namespace cpu {
const KernelTable kAvx512Kernels = {};
}
}  // namespace gf
#endif
