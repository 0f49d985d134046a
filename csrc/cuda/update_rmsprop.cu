// RmspropRule on CUDA (csrc/cuda/update_kernel.cuh). RMSprop has no per-tensor scalars.
#include "update_kernel.cuh"

namespace gf {
namespace cuda {
namespace {
struct Scalars {
  static constexpr bool kHasProduct = false;
  template <class H>
  __device__ static NoTensorScalars<double> at(double, double, const H&) { return {}; }
};
}  // namespace
void launch_rmsprop(const UpdateCall<RmspropHyper<double>>& call) { launch_update<RmspropRule, Scalars>(call); }
}  // namespace cuda
}  // namespace gf
