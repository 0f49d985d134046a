// The update rules of docs/algorithms.md §2, written once. Each rule is
//   direction(g, state, hyper, per_tensor) -> d
// on a value type V (float, double, a SIMD vector, a CUDA register) with scalars of type S, and
// updates its state in place. A rule is a template over an int whose bits select its compile-time
// variants (nesterov, amsgrad, ...), kNumVariants of them. The surrounding pipeline (pipeline.h) handles AMP, maximize, weight decay
// and the final apply. Per-tensor scalars (bias corrections, warm-ups) are computed once per tensor in
// double by the *_tensor_scalars functions below, on the host (CPU) or on the device (CUDA).
//
// Include order matters: the vector overloads of sqrt/max must be declared before this header.
#pragma once
#include "config.h"
#include "hyper.h"
#include "math.h"

GF_CODE_BEGIN

// The length of an array of a rule's states: C++ has no zero-length arrays, and SGD without momentum
// has no state.
template <class Rule>
constexpr int kStateArrayLength = Rule::kNumStates > 0 ? Rule::kNumStates : 1;

// ---- PersistentSGD / SGD ---------------------------------------------------------------------------
// buf = decay·buf + (1-dampening)·g (torch's SGD: buf = g at t = 1);  d = g + decay·buf (nesterov) or buf.
// Without a buffer (SGD with momentum 0): d = g, and the rule keeps no state.
template <int kVariant>
struct PersistentSgdRule {
  static constexpr int kNumVariants = 4;
  static constexpr bool kNesterov = kVariant & 1;
  static constexpr bool kNoBuffer = kVariant & 2;
  static constexpr int kNumStates = kNoBuffer ? 0 : 1;
  template <class S> using Hyper = SgdHyper<S>;
  template <class S> using TensorScalars = SgdTensorScalars<S>;

  template <class V, class S>
  GF_HD static V direction(V g, V* state, const SgdHyper<S>& h, const SgdTensorScalars<S>& t) {
    if constexpr (kNoBuffer) {
      return g;
    } else {
      V& buf = state[0];
      buf = t.buffer_decay * buf + t.grad_coef * g;
      if constexpr (kNesterov) return g + h.decay * buf;
      return buf;
    }
  }
};
GF_HD SgdTensorScalars<double> sgd_tensor_scalars(double t, const SgdHyper<double>& h) {
  if (h.buffer_starts_at_grad && t == 1.0) return {0.0, 1.0};
  return {h.decay, h.one_minus_dampening};
}

// m = β1 m + (1-β1) g;  v = β2 v + (1-β2) g², shared by the Adam family (NOTE: [the kernels round as
// the reference does]).
template <class V, class H>
GF_HD void adam_moments(V g, V& m, V& v, const H& h) {
  m = h.beta1 * m + h.one_minus_beta1 * g;
  v = h.beta2 * v + h.one_minus_beta2 * g * g;
}

// ---- Adam / AdamW ------------------------------------------------------------------------------------
// m = β1 m + (1-β1) g;  v = β2 v + (1-β2) g²;  v̂ = max(v̂, v) (amsgrad);  d = (m/bc1) / (sqrt(v̂)/sqrt(bc2) + eps)
template <int kVariant>
struct AdamRule {
  static constexpr int kNumVariants = 2;
  static constexpr bool kAmsgrad = kVariant & 1;
  static constexpr int kNumStates = kAmsgrad ? 3 : 2;
  template <class S> using Hyper = AdamHyper<S>;
  template <class S> using TensorScalars = AdamTensorScalars<S>;

  template <class V, class S>
  GF_HD static V direction(V g, V* state, const AdamHyper<S>& h, const AdamTensorScalars<S>& t) {
    V& m = state[0];
    V& v = state[1];
    adam_moments(g, m, v, h);
    V v_hat = v;
    if constexpr (kAmsgrad) {
      state[2] = max(state[2], v);
      v_hat = state[2];
    }
    return (m * t.inv_bc1) / (sqrt(v_hat) * t.inv_sqrt_bc2 + h.eps);
  }
};
GF_HD AdamTensorScalars<double> adam_tensor_scalars(double t, const AdamHyper<double>& h) {
  return {1.0 / (1.0 - ::pow(h.beta1, t)), 1.0 / ::sqrt(1.0 - ::pow(h.beta2, t))};
}

// ---- RAdam ---------------------------------------------------------------------------------------------
// m, v as Adam; m̂ = m/bc1; rectified (ρt > 5): d = m̂ · r · sqrt(bc2) / (sqrt(v) + eps), else d = m̂.
template <int /*RAdam has no variant*/>
struct RAdamRule {
  static constexpr int kNumVariants = 1;
  static constexpr int kNumStates = 2;
  template <class S> using Hyper = AdamHyper<S>;
  template <class S> using TensorScalars = RAdamTensorScalars<S>;

  template <class V, class S>
  GF_HD static V direction(V g, V* state, const AdamHyper<S>& h, const RAdamTensorScalars<S>& t) {
    V& m = state[0];
    V& v = state[1];
    adam_moments(g, m, v, h);
    V m_hat = m * t.inv_bc1;
    if (t.rectified) return m_hat * t.rect_factor / (sqrt(v) + h.eps);
    return m_hat;
  }
};
GF_HD RAdamTensorScalars<double> radam_tensor_scalars(double t, const AdamHyper<double>& h) {
  const double bc1 = 1.0 - ::pow(h.beta1, t);
  const double bc2 = 1.0 - ::pow(h.beta2, t);
  const double rho_inf = 2.0 / (1.0 - h.beta2) - 1.0;
  const double rho_t = rho_inf - 2.0 * t * ::pow(h.beta2, t) / bc2;
  if (!(rho_t > 5.0)) return {false, 1.0 / bc1, 0.0};
  const double r = ::sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t));
  return {true, 1.0 / bc1, r * ::sqrt(bc2)};
}

// ---- AdEMA (AdEMAMix) ----------------------------------------------------------------------------------
// m1 = β1 m1 + (1-β1) g;  m2 = β3(t) m2 + (1-β3(t)) g;  v = β2 v + (1-β2) g²;
// d = (m1/bc1 + α(t) m2) / (sqrt(v)/sqrt(bc2) + eps). Without the slow EMA (alpha == 0) it is AdamW.
template <int kVariant>
struct AdemaRule {
  static constexpr int kNumVariants = 2;
  static constexpr bool kSlowEma = kVariant & 1;
  static constexpr int kNumStates = kSlowEma ? 3 : 2;  // exp_avg, exp_avg_sq[, exp_avg_slow]
  template <class S> using Hyper = AdemaHyper<S>;
  template <class S> using TensorScalars = AdemaTensorScalars<S>;

  template <class V, class S>
  GF_HD static V direction(V g, V* state, const AdemaHyper<S>& h, const AdemaTensorScalars<S>& t) {
    V& m1 = state[0];
    V& v = state[1];
    adam_moments(g, m1, v, h);
    V numerator = m1 * t.inv_bc1;
    if constexpr (kSlowEma) {
      V& m2 = state[2];
      m2 = t.beta3_t * m2 + t.one_minus_beta3_t * g;
      numerator = numerator + t.alpha_t * m2;
    }
    return numerator / (sqrt(v) * t.inv_sqrt_bc2 + h.eps);
  }
};
GF_HD AdemaTensorScalars<double> adema_tensor_scalars(double t, const AdemaHyper<double>& h) {
  double alpha_t = h.alpha;
  double beta3_t = h.beta3;
  if (h.t_alpha_beta3 > 0.0) {  // the warm-up of AdEMAMix
    const double T = h.t_alpha_beta3;
    alpha_t = ::fmin(t * h.alpha / T, h.alpha);
    const double ln_b1 = ::log(h.beta1), ln_b3 = ::log(h.beta3);
    beta3_t = ::fmin(::exp(ln_b1 * ln_b3 / ((1.0 - t / T) * ln_b3 + (t / T) * ln_b1)), h.beta3);
  }
  return {1.0 / (1.0 - ::pow(h.beta1, t)), 1.0 / ::sqrt(1.0 - ::pow(h.beta2, t)), beta3_t, 1.0 - beta3_t, alpha_t};
}

// ---- NAdam ---------------------------------------------------------------------------------------------
// m, v as Adam; denom = sqrt(v / bc2) + eps;  d = (1-μt)/(1-Πμ) · g/denom + μt+1/(1-Πμ·μt+1) · m/denom.
// The momentum schedule μ and its running product Πμ (state `mu_product`, one scalar per tensor) are
// per-tensor scalars: the op updates Πμ on the host and passes the two coefficients in.
template <int /*NAdam has no variant*/>
struct NAdamRule {
  static constexpr int kNumVariants = 1;
  static constexpr int kNumStates = 2;
  template <class S> using Hyper = NAdamHyper<S>;
  template <class S> using TensorScalars = NAdamTensorScalars<S>;

  template <class V, class S>
  GF_HD static V direction(V g, V* state, const NAdamHyper<S>& h, const NAdamTensorScalars<S>& t) {
    V& m = state[0];
    V& v = state[1];
    adam_moments(g, m, v, h);
    const V denom = sqrt(v * t.inv_bc2) + h.eps;
    return (t.grad_coef * g) / denom + (t.exp_avg_coef * m) / denom;
  }
};
// μt = β1 (1 - 0.5 · 0.96^(t ψ))
GF_HD double nadam_mu(double t, const NAdamHyper<double>& h) {
  return h.beta1 * (1.0 - 0.5 * ::pow(0.96, t * h.momentum_decay));
}
// Πμ up to and including μt, from the product up to μt-1 (the state `mu_product` before step t). As
// torch.optim.NAdam's `mu_product *= mu`, the product is taken in the state's dtype: with a float32 state,
// μt is rounded to float32 first (the product of two floats is exact in double; the caller rounds it).
GF_HD double nadam_mu_product(double t, double previous, const NAdamHyper<double>& h, bool float32_state) {
  const double mu = nadam_mu(t, h);
  return previous * (float32_state ? double(float(mu)) : mu);
}
// mu_product: Πμ up to and including μt.
GF_HD NAdamTensorScalars<double> nadam_tensor_scalars(double t, double mu_product, const NAdamHyper<double>& h) {
  const double mu = nadam_mu(t, h);
  const double mu_next = nadam_mu(t + 1.0, h);
  return {1.0 / (1.0 - ::pow(h.beta2, t)), (1.0 - mu) / (1.0 - mu_product), mu_next / (1.0 - mu_product * mu_next)};
}

// ---- RMSprop -------------------------------------------------------------------------------------------
// v = α v + (1-α) g²;  avg = sqrt(v - ga²) + eps with ga = α ga + (1-α) g (centered), else sqrt(v) + eps;
// d = buf = μ buf + g/avg (momentum), else g/avg. States: square_avg[, momentum_buffer][, grad_avg].
template <int kVariant>
struct RmspropRule {
  static constexpr int kNumVariants = 4;
  static constexpr bool kMomentum = kVariant & 1;
  static constexpr bool kCentered = kVariant & 2;
  static constexpr int kNumStates = 1 + int(kMomentum) + int(kCentered);
  template <class S> using Hyper = RmspropHyper<S>;
  template <class S> using TensorScalars = NoTensorScalars<S>;

  template <class V, class S>
  GF_HD static V direction(V g, V* state, const RmspropHyper<S>& h, const NoTensorScalars<S>&) {
    V& v = state[0];
    v = h.alpha * v + h.one_minus_alpha * g * g;
    V avg;
    if constexpr (kCentered) {
      V& ga = state[kNumStates - 1];
      ga = h.alpha * ga + h.one_minus_alpha * g;
      avg = sqrt(v - ga * ga) + h.eps;
    } else {
      avg = sqrt(v) + h.eps;
    }
    if constexpr (kMomentum) {
      V& buf = state[1];
      buf = h.momentum * buf + g / avg;
      return buf;
    }
    return g / avg;
  }
};

// ---- GradientAscent ------------------------------------------------------------------------------------
// g = clamp(g, ±clip);  gn = g + μ v (nesterov) or g;  v = μ v + (1-μ) gn (EMA) or μ v + gn;
// m = β m + (1-β) gn²;  d = v / (sqrt(m) + eps) · lr_factor(t). States: momentum_buffer, square_avg.
template <int kVariant>
struct GradientAscentRule {
  static constexpr int kNumVariants = 4;
  static constexpr bool kNesterov = kVariant & 1;
  static constexpr bool kMomentumEma = kVariant & 2;
  static constexpr int kNumStates = 2;
  template <class S> using Hyper = GradientAscentHyper<S>;
  template <class S> using TensorScalars = GradientAscentTensorScalars<S>;

  template <class V, class S>
  GF_HD static V direction(V g, V* state, const GradientAscentHyper<S>& h, const GradientAscentTensorScalars<S>& t) {
    V& v = state[0];
    V& m = state[1];
    const V hi = V{} + h.clip_value, lo = V{} - h.clip_value;  // comparisons let NaN through, as torch.clamp
    g = g > hi ? hi : g;
    g = g < lo ? lo : g;
    V gn = g;
    if constexpr (kNesterov) gn = g + h.momentum * v;
    if constexpr (kMomentumEma) v = h.momentum * v + h.one_minus_momentum * gn;
    else v = h.momentum * v + gn;
    m = h.beta * m + h.one_minus_beta * gn * gn;
    return (v / (sqrt(m) + h.eps)) * t.lr_factor;
  }
};
GF_HD GradientAscentTensorScalars<double> gradient_ascent_tensor_scalars(double t, const GradientAscentHyper<double>& h) {
  double factor = ::pow(h.lr_decay, t - 1.0);
  if (t <= h.warmup_steps) factor *= t / h.warmup_steps;
  return {factor};
}

GF_CODE_END
