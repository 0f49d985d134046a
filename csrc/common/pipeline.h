// The per-element pipeline of docs/algorithms.md §1 around a rule. The random steps (5, 6 and 8) are one
// compile-time flag, kRandom, so that a call without them costs nothing; with it, each is switched by
// RandomOptions, uniform over the call.
#pragma once
#include "philox.h"
#include "rules.h"

GF_CODE_BEGIN

// One element's (or one vector's) draws for the random steps (philox.h): the noise σt·ξ and the 0/1 keep
// masks of gradient and learning-rate dropout, in the compute type.
template <class V>
struct StepDraws {
  V noise, grad_keep, lr_keep;
};

// The draws of one element, from its Philox counter; the noise is formed in double and rounded once.
template <class S>
GF_HD StepDraws<S> element_draws(const RandomOptions& random, const RandomKey& key, double noise_std,
                                 uint64_t element) {
  const ElementDraw e = draw_element(key, element, random.noise);
  return {S(noise_std * e.normal), S(e.grad_uniform >= random.grad_dropout_q ? 1 : 0),
          S(e.lr_uniform >= random.lr_dropout_q ? 1 : 0)};
}

// Step 1, the AMP unscale, is unscale_grad below, which the backends apply (and store back to the
// gradient) before this. Steps 2-3 (the alignment scale s_T, maximize) fold into one per-tensor
// multiplier, grad_mul = ±s_T (exactly 1 when none applies).
template <class Rule, bool kRandom, WeightDecay kWd, class V, class S>
GF_HD void pipeline_step(V& p, V g, V* state, S grad_mul, const PipelineScalars<S>& ps,
                         const typename Rule::template Hyper<S>& hyper,
                         const typename Rule::template TensorScalars<S>& ts, const RandomOptions& random,
                         const StepDraws<V>& draws) {
  g = g * grad_mul;
  if constexpr (kWd == WeightDecay::L2) g = g + ps.weight_decay * p;  // step 4
  if constexpr (kRandom) {
    if (random.noise) g = g + draws.noise;                 // step 5
    if (random.grad_dropout) g = g * draws.grad_keep;      // step 6
  }
  V d = Rule::direction(g, state, hyper, ts);              // step 7
  if constexpr (kRandom) {
    if (random.lr_dropout) d = d * draws.lr_keep;          // step 8
  }
  if constexpr (kWd == WeightDecay::Decoupled) {           // step 9
    p = p * ps.decoupled_factor - ps.lr * d;
  } else {
    p = p - ps.lr * d;
  }
}

// NOTE: [GradScaler and .grad]
// Step 1, as torch's fused optimizers do it: the gradient is divided by the AMP scale (a true division,
// not a product with 1/scale, which differs in the last bit for scales that are not powers of two), and
// the quotient is stored back into .grad, so that after GradScaler's step .grad holds the unscaled
// gradient on every path. A skipped step (found_inf != 0) leaves .grad as it was, scaled.
template <class V, class S>
GF_HD V unscale_grad(V g, S grad_scale) {
  return g / grad_scale;
}

// GradientAlignment, per element (docs/algorithms.md §4): a = β a + (1-β) g on the unscaled gradient, which
// is returned for the statistics. Backends accumulate <g, a>, ‖g‖² and ‖a‖² in double, products
// included, so the cosine does not depend on the summation order beyond double rounding.
template <bool kUnscale, class V, class S>
GF_HD V alignment_ema_step(V g, V& a, const AlignHyper<S>& h) {
  if constexpr (kUnscale) g = unscale_grad(g, h.grad_scale);
  a = h.beta * a + h.one_minus_beta * g;
  return g;
}

// Lookahead (docs/algorithms.md §4): the new slow weight φ + α (θ - φ), which both φ and θ take.
template <class V, class S>
GF_HD V lookahead_slow_step(V theta, V phi, S alpha) {
  return phi + alpha * (theta - phi);
}

GF_CODE_END
