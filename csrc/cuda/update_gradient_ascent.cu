// GradientAscentRule on CUDA (csrc/cuda/update_kernel.cuh).
#include "update_kernel.cuh"

namespace gf {
namespace cuda {
namespace {
GF_TENSOR_SCALARS(Scalars, gradient_ascent_tensor_scalars);
}  // namespace
void launch_gradient_ascent(const UpdateCall<GradientAscentHyper<double>>& call) { launch_update<GradientAscentRule, Scalars>(call); }
}  // namespace cuda
}  // namespace gf
