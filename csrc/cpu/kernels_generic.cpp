// The kernels for any CPU: the baseline instruction set of the target (SSE2 on x86-64).
#define GF_ISA generic
#define GF_VEC_BYTES 16
#include "kernels_impl.h"

namespace gf {
namespace cpu {
constexpr KernelTable kGenericKernels = generic::kernels::make_kernel_table("generic");
}
}  // namespace gf
