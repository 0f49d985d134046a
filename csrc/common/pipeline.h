// The per-element pipeline of ALGORITHMS.md §1 around a rule (steps 1-4, 7 and 9; the random steps 5,
// 6 and 8 arrive with the Philox generator). Steps that are off are compile-time flags and cost nothing.
#pragma once
#include "rules.h"

GF_CODE_BEGIN

// Steps 1-3 (unscale by the AMP grad scale, the alignment scale s_T, maximize) fold into one
// per-tensor multiplier, grad_mul = ±s_T / grad_scale, applied only when kScaleGrad.
template <class Rule, bool kScaleGrad, WeightDecay kWd, class V, class S>
GF_HD void pipeline_step(V& p, V g, V* state, S grad_mul, const PipelineScalars<S>& ps,
                         const typename Rule::template Hyper<S>& hyper,
                         const typename Rule::template TensorScalars<S>& ts) {
  if constexpr (kScaleGrad) g = g * grad_mul;
  if constexpr (kWd == WeightDecay::L2) g = g + ps.weight_decay * p;  // step 4
  V d = Rule::direction(g, state, hyper, ts);                          // step 7
  if constexpr (kWd == WeightDecay::Decoupled) {                       // step 9
    p = p * ps.decoupled_factor - ps.lr * d;
  } else {
    p = p - ps.lr * d;
  }
}

// GradientAlignment, per element (ALGORITHMS.md §4): a = β a + (1-β) g on the unscaled gradient, which
// is returned for the statistics. Backends accumulate <g, a>, ‖g‖² and ‖a‖² in double, products
// included, so the cosine does not depend on the summation order beyond double rounding.
template <bool kUnscale, class V, class S>
GF_HD V alignment_ema_step(V g, V& a, const AlignHyper<S>& h) {
  if constexpr (kUnscale) g = g / h.grad_scale;
  a = h.beta * a + h.one_minus_beta * g;
  return g;
}

GF_CODE_END
