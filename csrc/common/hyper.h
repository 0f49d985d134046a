// Plain hyperparameter structs: what crosses from the torch-facing code into a kernel.
// S is the scalar type: double on the host, where every per-tensor scalar is computed once, and the
// compute type (float, or double for fp64 parameters) inside a kernel.
#pragma once
#include "config.h"

namespace gf {

enum class WeightDecay : int { None = 0, L2 = 1, Decoupled = 2 };

// Pipeline steps 1-4 and 9 of ALGORITHMS.md §1, per call.
template <class S>
struct PipelineScalars {
  S lr;
  S weight_decay;
  S decoupled_factor;  // 1 - lr * weight_decay
  template <class T>
  GF_HD PipelineScalars<T> cast() const { return {T(lr), T(weight_decay), T(decoupled_factor)}; }
};

// ---- PersistentSGD -------------------------------------------------------------------------------
template <class S>
struct SgdHyper {
  S decay;
  S one_minus_dampening;
  template <class T>
  GF_HD SgdHyper<T> cast() const { return {T(decay), T(one_minus_dampening)}; }
};
template <class S>
struct SgdTensorScalars {
  template <class T>
  GF_HD SgdTensorScalars<T> cast() const { return {}; }
};

// ---- Adam / AdamW ---------------------------------------------------------------------------------
// NOTE: [the kernels round as the reference does]
// Constants such as 1 - beta1 or 1 / bc1 are formed once in double and rounded to the compute type,
// and each element sees the same operations in the same order as in the reference's torch ops (a
// multiply by 1 / bc1 where ALGORITHMS.md writes / bc1: one division per element instead of three).
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

// ---- GradientAlignment statistics ------------------------------------------------------------------
template <class S>
struct AlignHyper {
  S beta, one_minus_beta;
  S grad_scale;  // the AMP scale to divide by, or 1
  template <class T>
  GF_HD AlignHyper<T> cast() const { return {T(beta), T(one_minus_beta), T(grad_scale)}; }
};

}  // namespace gf
