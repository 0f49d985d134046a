// AdamRule on CUDA (csrc/cuda/update_kernel.cuh).
#include "update_kernel.cuh"

namespace gf {
namespace cuda {
namespace {
GF_TENSOR_SCALARS(Scalars, adam_tensor_scalars);
}  // namespace
void launch_adam(const UpdateCall<AdamHyper<double>>& call) { launch_update<AdamRule, Scalars>(call); }
}  // namespace cuda
}  // namespace gf
