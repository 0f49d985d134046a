// NAdamRule on CUDA (csrc/cuda/update_kernel.cuh). Its per-tensor scalars need the running product of
// the momentum schedule, which lives on the device beside the step (NOTE: [step lives on the device]).
#include "update_kernel.cuh"

namespace gf {
namespace cuda {
namespace {
struct Scalars {
  static constexpr bool kHasProduct = true;
  __device__ static double product(double t, double previous, const NAdamHyper<double>& h) {
    return nadam_mu_product(t, previous, h, /*float32_state=*/true);
  }
  __device__ static NAdamTensorScalars<double> at(double t, double product, const NAdamHyper<double>& h) {
    return nadam_tensor_scalars(t, product, h);
  }
};
}  // namespace
void launch_nadam(const UpdateCall<NAdamHyper<double>>& call) { launch_update<NAdamRule, Scalars>(call); }
}  // namespace cuda
}  // namespace gf
