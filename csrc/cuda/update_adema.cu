// AdemaRule on CUDA (csrc/cuda/update_kernel.cuh).
#include "update_kernel.cuh"

namespace gf {
namespace cuda {
namespace {
GF_TENSOR_SCALARS(Scalars, adema_tensor_scalars);
}  // namespace
void launch_adema(const UpdateCall<AdemaHyper<double>>& call) { launch_update<AdemaRule, Scalars>(call); }
}  // namespace cuda
}  // namespace gf
