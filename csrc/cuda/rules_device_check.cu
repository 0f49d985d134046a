// Compile check, not the CUDA engine (that is issue #3): instantiates every rule of csrc/common/ and the
// pipeline in device code for float and double, so that nvcc proves in CI that the rules stay
// host/device code. Includes only csrc/common/, never torch, so it builds beside a CPU build of torch.
#include "../common/pipeline.h"

namespace {

template <class Rule, bool kScaleGrad, gf::WeightDecay kWd, class S>
__global__ void check_rule(S* p, const S* g, S* states, int n, typename Rule::template Hyper<S> hyper,
                           typename Rule::template TensorScalars<S> ts, gf::PipelineScalars<S> ps) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  S pv = p[i];
  S st[Rule::kNumStates];
  for (int j = 0; j < Rule::kNumStates; ++j) st[j] = states[j * n + i];
  gf::pipeline_step<Rule, kScaleGrad, kWd>(pv, g[i], st, S(1), ps, hyper, ts);
  p[i] = pv;
  for (int j = 0; j < Rule::kNumStates; ++j) states[j * n + i] = st[j];
}

template <class S>
__global__ void check_alignment(const S* g, S* a, double* out, int n, gf::AlignHyper<S> h) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  S av = a[i];
  const S gv = gf::alignment_ema_step<true>(g[i], av, h);
  a[i] = av;
  out[i] = double(gv) * double(av);
}

__global__ void check_tensor_scalars(double t, double* out) {
  out[0] = gf::adam_tensor_scalars(t, {0.9, 0.999, 1e-8, 0.1, 0.001}).inv_bc1;
  out[1] = gf::radam_tensor_scalars(t, {0.9, 0.999, 1e-8, 0.1, 0.001}).rect_factor;
  out[2] = gf::adema_tensor_scalars(t, {0.9, 0.999, 1e-8, 0.1, 0.001, 0.9999, 5.0, 100.0}).beta3_t;
}

template <class S>
void instantiate_all() {
  using gf::WeightDecay;
  void* kernels[] = {
      (void*)&check_rule<gf::PersistentSgdRule<true>, true, WeightDecay::L2, S>,
      (void*)&check_rule<gf::PersistentSgdRule<false>, false, WeightDecay::Decoupled, S>,
      (void*)&check_rule<gf::AdamRule<true>, true, WeightDecay::Decoupled, S>,
      (void*)&check_rule<gf::AdamRule<false>, false, WeightDecay::None, S>,
      (void*)&check_rule<gf::RAdamRule<false>, true, WeightDecay::L2, S>,
      (void*)&check_rule<gf::AdemaRule<true>, false, WeightDecay::Decoupled, S>,
      (void*)&check_rule<gf::AdemaRule<false>, true, WeightDecay::None, S>,
      (void*)&check_alignment<S>,
  };
  (void)kernels;
}

}  // namespace

void gradfused_rules_device_check() {
  instantiate_all<float>();
  instantiate_all<double>();
  (void)&check_tensor_scalars;
}
