// Plain hyperparameter structs: what crosses from the torch-facing code into a kernel.
// S is the scalar type: double on the host, where every per-tensor scalar is computed once, and the
// compute type (float, or double for fp64 parameters) inside a kernel.
#pragma once
#include <cstdint>
#include "config.h"

namespace gf {

enum class WeightDecay : int { None = 0, L2 = 1, Decoupled = 2 };

// The element type of a call's tensors, as both engines' kernels take it.
enum class DType : int { Float32 = 0, Float64 = 1, BFloat16 = 2, Float16 = 3 };

// NOTE: [mixed precision in one pass]
// The parameter's dtype, the states' dtype (the parameter's or float32), the gradients' dtype (the
// parameter's or float32) and how the new parameter is stored (rounded to nearest, through an fp32
// master weight, or stochastically rounded) are picked per call, on both engines. The first two are
// template parameters; the gradient's load and the store are uniform branches, which keeps the number
// of kernels (and the compile time) down at no measurable cost to a memory-bound step.
enum class ParamStore : int { Nearest = 0, Master = 1, Stochastic = 2 };

// Pipeline steps 1-4 and 9 of docs/algorithms.md §1, per call.
template <class S>
struct PipelineScalars {
  S lr;
  S weight_decay;
  S decoupled_factor;  // 1 - lr * weight_decay
  template <class T>
  GF_HD PipelineScalars<T> cast() const { return {T(lr), T(weight_decay), T(decoupled_factor)}; }
};

// Pipeline steps 5, 6 and 8 of docs/algorithms.md §1 (gradient noise, gradient dropout, learning-rate
// dropout), per call. The noise's standard deviation depends on t, so it lives with each tensor.
struct RandomOptions {
  bool noise, grad_dropout, lr_dropout;  // which steps are on
  uint64_t seed;
  double grad_dropout_q, lr_dropout_q;  // the probability of dropping an element
};

// Which stream one tensor draws from in one step (philox.h).
struct RandomKey {
  uint64_t seed;
  uint32_t param_index;  // the parameter's position in its optimizer
  uint32_t step;         // t, after the increment
};

// ---- PersistentSGD / SGD ---------------------------------------------------------------------------
template <class S>
struct SgdHyper {
  S decay;
  S one_minus_dampening;
  bool buffer_starts_at_grad;  // torch.optim.SGD: the first step sets the buffer to g (PersistentSGD: to 0, then updates it)
  template <class T>
  GF_HD SgdHyper<T> cast() const { return {T(decay), T(one_minus_dampening), buffer_starts_at_grad}; }
};
// The buffer's update buf = buffer_decay·buf + grad_coef·g at this tensor's step: (decay, 1-dampening),
// or (0, 1) on torch's first step, which makes buf exactly g.
template <class S>
struct SgdTensorScalars {
  S buffer_decay, grad_coef;
  template <class T>
  GF_HD SgdTensorScalars<T> cast() const { return {T(buffer_decay), T(grad_coef)}; }
};
template <class S>
struct NoTensorScalars {  // a rule without per-tensor scalars
  template <class T>
  GF_HD NoTensorScalars<T> cast() const { return {}; }
};

// ---- Adam / AdamW ---------------------------------------------------------------------------------
// NOTE: [the kernels round as the reference does]
// Constants such as 1 - beta1 or 1 / bc1 are formed once in double and rounded to the compute type,
// and each element sees the same operations in the same order as in the reference's torch ops (a
// multiply by 1 / bc1 where docs/algorithms.md writes / bc1: one division per element instead of three).
// With -ffp-contract=off the fused kernels then round like the reference operation for operation,
// which keeps 16-bit states from drifting apart one rounding flip at a time.
template <class S>
struct AdamHyper {
  S beta1, beta2, eps;
  S one_minus_beta1, one_minus_beta2;
  template <class T>
  GF_HD AdamHyper<T> cast() const { return {T(beta1), T(beta2), T(eps), T(one_minus_beta1), T(one_minus_beta2)}; }
};
template <class S>
struct AdamTensorScalars {
  S inv_bc1;       // 1 / (1 - beta1^t)
  S inv_sqrt_bc2;  // 1 / sqrt(1 - beta2^t)
  template <class T>
  GF_HD AdamTensorScalars<T> cast() const { return {T(inv_bc1), T(inv_sqrt_bc2)}; }
};

// ---- RAdam -----------------------------------------------------------------------------------------
template <class S>
struct RAdamTensorScalars {
  bool rectified;  // rho_t > 5
  S inv_bc1;
  S rect_factor;  // r * sqrt(1 - beta2^t), used when rectified
  template <class T>
  GF_HD RAdamTensorScalars<T> cast() const { return {rectified, T(inv_bc1), T(rect_factor)}; }
};

// ---- AdEMA -----------------------------------------------------------------------------------------
template <class S>
struct AdemaHyper {
  S beta1, beta2, eps;
  S one_minus_beta1, one_minus_beta2;
  S beta3, alpha;  // final values; the warm-up lives in the per-tensor scalars
  S t_alpha_beta3;  // 0 = no warm-up
  template <class T>
  GF_HD AdemaHyper<T> cast() const {
    return {T(beta1), T(beta2), T(eps), T(one_minus_beta1), T(one_minus_beta2), T(beta3), T(alpha), T(t_alpha_beta3)};
  }
};
template <class S>
struct AdemaTensorScalars {
  S inv_bc1, inv_sqrt_bc2;
  S beta3_t, one_minus_beta3_t, alpha_t;
  template <class T>
  GF_HD AdemaTensorScalars<T> cast() const {
    return {T(inv_bc1), T(inv_sqrt_bc2), T(beta3_t), T(one_minus_beta3_t), T(alpha_t)};
  }
};

// ---- NAdam -----------------------------------------------------------------------------------------
template <class S>
struct NAdamHyper {
  S beta1, beta2, eps;
  S one_minus_beta1, one_minus_beta2;
  S momentum_decay;  // ψ
  template <class T>
  GF_HD NAdamHyper<T> cast() const {
    return {T(beta1), T(beta2), T(eps), T(one_minus_beta1), T(one_minus_beta2), T(momentum_decay)};
  }
};
template <class S>
struct NAdamTensorScalars {
  S inv_bc2;       // 1 / (1 - beta2^t)
  S grad_coef;     // (1 - μt) / (1 - mu_product)
  S exp_avg_coef;  // μt+1 / (1 - mu_product · μt+1)
  template <class T>
  GF_HD NAdamTensorScalars<T> cast() const { return {T(inv_bc2), T(grad_coef), T(exp_avg_coef)}; }
};

// ---- RMSprop ----------------------------------------------------------------------------------------
template <class S>
struct RmspropHyper {
  S alpha, one_minus_alpha, eps, momentum;
  template <class T>
  GF_HD RmspropHyper<T> cast() const { return {T(alpha), T(one_minus_alpha), T(eps), T(momentum)}; }
};
// ---- GradientAscent ---------------------------------------------------------------------------------
template <class S>
struct GradientAscentHyper {
  S momentum, one_minus_momentum, beta, one_minus_beta, eps;
  S clip_value;  // +inf when off: clamping to ±inf is the identity, NaN included
  S lr_decay;    // 1 when off
  S warmup_steps;
  template <class T>
  GF_HD GradientAscentHyper<T> cast() const {
    return {T(momentum), T(one_minus_momentum), T(beta), T(one_minus_beta), T(eps), T(clip_value), T(lr_decay),
            T(warmup_steps)};
  }
};
template <class S>
struct GradientAscentTensorScalars {
  S lr_factor;  // lr_decay^(t-1), times t / warmup_steps during the warm-up
  template <class T>
  GF_HD GradientAscentTensorScalars<T> cast() const { return {T(lr_factor)}; }
};

// ---- GradientAlignment statistics ------------------------------------------------------------------
template <class S>
struct AlignHyper {
  S beta, one_minus_beta;
  S grad_scale;  // the AMP scale to divide by, or 1
  template <class T>
  GF_HD AlignHyper<T> cast() const { return {T(beta), T(one_minus_beta), T(grad_scale)}; }
};

}  // namespace gf
