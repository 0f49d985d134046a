// The kernels for x86-64 CPUs with AVX2, FMA and F16C (Haswell and later), picked at run time.
#define GF_ISA avx2
#include "kernel_api.h"
#if defined(__x86_64__)
#include <cmath>
#include <cstring>
#include <immintrin.h>
#include <type_traits>
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#define GF_VEC_BYTES 32
#include "kernels_impl.h"
#pragma GCC pop_options
namespace gf {
namespace cpu {
constexpr KernelTable kAvx2Kernels = avx2::kernels::make_kernel_table("avx2");
}
}  // namespace gf
#else
namespace gf {
namespace cpu {
const KernelTable kAvx2Kernels = {};
}
}  // namespace gf
#endif
