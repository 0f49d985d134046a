// RAdamRule on CUDA (csrc/cuda/update_kernel.cuh).
#include "update_kernel.cuh"

namespace gf {
namespace cuda {
namespace {
GF_TENSOR_SCALARS(Scalars, radam_tensor_scalars);
}  // namespace
void launch_radam(const UpdateCall<AdamHyper<double>>& call) { launch_update<RAdamRule, Scalars>(call); }
}  // namespace cuda
}  // namespace gf
