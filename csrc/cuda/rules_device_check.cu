// Compile check, not the CUDA engine (that is issue #3): instantiates every rule of csrc/common/ and the
// pipeline in device code for float and double, so that nvcc proves in CI that the rules stay
// host/device code. Includes only csrc/common/, never torch, so it builds beside a CPU build of torch.
#include "../common/pipeline.h"

namespace {

template <class Rule, bool kRandom, gf::WeightDecay kWd, class S>
__global__ void check_rule(S* p, const S* g, S* states, int n, typename Rule::template Hyper<S> hyper,
                           typename Rule::template TensorScalars<S> ts, gf::PipelineScalars<S> ps,
                           gf::RandomOptions random, gf::RandomKey key) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  S pv = p[i];
  S st[Rule::kNumStates];
  for (int j = 0; j < Rule::kNumStates; ++j) st[j] = states[j * n + i];
  gf::StepDraws<S> draws{};
  if (kRandom) draws = gf::element_draws<S>(random, key, 0.1, uint64_t(i));
  gf::pipeline_step<Rule, kRandom, kWd>(pv, g[i], st, S(1), ps, hyper, ts, random, draws);
  p[i] = pv;
  for (int j = 0; j < Rule::kNumStates; ++j) states[j * n + i] = st[j];
}

template <class S>
__global__ void check_lookahead(S* p, S* slow, int n, S alpha) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  p[i] = slow[i] = gf::lookahead_slow_step(p[i], slow[i], alpha);
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
  out[3] = gf::nadam_tensor_scalars(t, 0.5, {0.9, 0.999, 1e-8, 0.1, 0.001, 4e-3}).grad_coef;
  out[4] = gf::gradient_ascent_tensor_scalars(t, {0.9, 0.1, 0.999, 0.001, 1e-8, 1.0, 0.99, 10.0}).lr_factor;
}

template <class S>
void instantiate_all() {
  using gf::WeightDecay;
  void* kernels[] = {
      (void*)&check_rule<gf::PersistentSgdRule<1>, true, WeightDecay::L2, S>,
      (void*)&check_rule<gf::PersistentSgdRule<0>, false, WeightDecay::Decoupled, S>,
      (void*)&check_rule<gf::AdamRule<1>, true, WeightDecay::Decoupled, S>,
      (void*)&check_rule<gf::AdamRule<0>, false, WeightDecay::None, S>,
      (void*)&check_rule<gf::RAdamRule<0>, true, WeightDecay::L2, S>,
      (void*)&check_rule<gf::AdemaRule<1>, false, WeightDecay::Decoupled, S>,
      (void*)&check_rule<gf::AdemaRule<0>, true, WeightDecay::None, S>,
      (void*)&check_rule<gf::NAdamRule<0>, true, WeightDecay::Decoupled, S>,
      (void*)&check_rule<gf::RmspropRule<3>, true, WeightDecay::L2, S>,
      (void*)&check_rule<gf::RmspropRule<0>, false, WeightDecay::None, S>,
      (void*)&check_rule<gf::GradientAscentRule<3>, true, WeightDecay::None, S>,
      (void*)&check_rule<gf::GradientAscentRule<0>, false, WeightDecay::None, S>,
      (void*)&check_alignment<S>,
      (void*)&check_lookahead<S>,
  };
  (void)kernels;
}

}  // namespace

void gradfused_rules_device_check() {
  instantiate_all<float>();
  instantiate_all<double>();
  (void)&check_tensor_scalars;
}
