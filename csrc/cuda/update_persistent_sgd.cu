// PersistentSgdRule on CUDA (csrc/cuda/update_kernel.cuh).
#include "update_kernel.cuh"

namespace gf {
namespace cuda {
namespace {
GF_TENSOR_SCALARS(Scalars, sgd_tensor_scalars);
}  // namespace
void launch_persistent_sgd(const UpdateCall<SgdHyper<double>>& call) { launch_update<PersistentSgdRule, Scalars>(call); }
}  // namespace cuda
}  // namespace gf
