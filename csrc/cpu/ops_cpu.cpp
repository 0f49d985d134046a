// The torch-facing CPU implementations: validate a call, compute per-tensor scalars once, pack the
// tensors into slots and run the kernel over all chunks of all tensors in one parallel region.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <initializer_list>
#include <utility>
#include <vector>

#include "../common/pipeline.h"
#include "kernel_api.h"

namespace gf {
namespace cpu {
namespace {

using at::Tensor;
using at::TensorList;
using OptTensor = std::optional<Tensor>;

// Elements per chunk, the unit of parallel work. Fixed (never derived from the thread count), so the
// alignment statistics are summed in the same order whatever the number of threads.
constexpr int64_t kChunkSize = int64_t(1) << 15;

DType dtype_of(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::Float32;
    case at::kDouble: return DType::Float64;
    case at::kBFloat16: return DType::BFloat16;
    case at::kHalf: return DType::Float16;
    default: TORCH_CHECK(false, "unreachable: dtype checked in check_lists");
  }
}

struct NamedList {
  const char* name;
  TensorList tensors;
};

// One list checked against the parameters it belongs to.
void check_list_matches(const char* op, const NamedList& params, const NamedList& list) {
  TORCH_CHECK(list.tensors.size() == params.tensors.size(), op, ": ", list.name, " has ", list.tensors.size(),
              " tensors but ", params.name, " has ", params.tensors.size());
  for (size_t i = 0; i < list.tensors.size(); ++i) {
    const Tensor& t = list.tensors[i];
    const Tensor& p = params.tensors[i];
    TORCH_CHECK(t.defined(), op, ": ", list.name, "[", i, "] is undefined");
    TORCH_CHECK(t.layout() == at::kStrided, op, ": ", list.name, "[", i, "] is sparse (", t.layout(),
                "); gradfused does not support sparse ", list.name);
    TORCH_CHECK(t.device() == p.device(), op, ": ", list.name, "[", i, "] is on ", t.device(), " but ",
                params.name, "[", i, "] is on ", p.device());
    TORCH_CHECK(t.scalar_type() == p.scalar_type(), op, ": ", list.name, "[", i, "] has dtype ", t.scalar_type(),
                " but ", params.name, "[", i, "] has ", p.scalar_type());
    TORCH_CHECK(t.sizes() == p.sizes(), op, ": ", list.name, "[", i, "] has shape ", t.sizes(), " but ",
                params.name, "[", i, "] has ", p.sizes());
  }
}

// Every check runs before anything is written, so bad input never half-applies a step. The lists of
// `others` and `more_others` are checked alike (two arguments, so callers need not concatenate).
void check_lists(const char* op, const NamedList& params, at::ArrayRef<NamedList> others,
                 at::ArrayRef<NamedList> more_others = {}) {
  for (size_t i = 0; i < params.tensors.size(); ++i) {
    const Tensor& p = params.tensors[i];
    TORCH_CHECK(p.defined(), op, ": ", params.name, "[", i, "] is undefined");
    TORCH_CHECK(p.layout() == at::kStrided, op, ": ", params.name, "[", i, "] is sparse (", p.layout(),
                "); gradfused supports dense tensors only");
    TORCH_CHECK(!p.is_complex(), op, ": ", params.name, "[", i, "] is complex (", p.scalar_type(),
                "); pass torch.view_as_real of it");
    TORCH_CHECK(p.scalar_type() == at::kFloat || p.scalar_type() == at::kDouble ||
                    p.scalar_type() == at::kBFloat16 || p.scalar_type() == at::kHalf,
                op, ": ", params.name, "[", i, "] has dtype ", p.scalar_type(),
                "; expected float32, float64, bfloat16 or float16");
    TORCH_CHECK(p.device().is_cpu(), op, ": ", params.name, "[", i, "] is on ", p.device(),
                " but this call runs on cpu; all tensors of one call must be on one device");
  }
  for (const NamedList& list : others) check_list_matches(op, params, list);
  for (const NamedList& list : more_others) check_list_matches(op, params, list);
}

// Per-tensor scalar state (`state_steps`, NAdam's `mu_products`): one-element float32/float64 cpu tensors.
void check_scalar_list(const char* op, const char* name, TensorList list, size_t n) {
  TORCH_CHECK(list.size() == n, op, ": ", name, " has ", list.size(), " tensors but params has ", n);
  for (size_t i = 0; i < n; ++i) {
    const Tensor& s = list[i];
    TORCH_CHECK(s.defined() && s.device().is_cpu() && s.numel() == 1 &&
                    (s.scalar_type() == at::kFloat || s.scalar_type() == at::kDouble),
                op, ": ", name, "[", i, "] must be a one-element float32 or float64 cpu tensor");
  }
}

void check_scalar_tensor(const char* op, const char* name, const OptTensor& t) {
  if (!t) return;
  TORCH_CHECK(t->numel() == 1 && t->device().is_cpu() && t->is_floating_point(), op, ": ", name,
              " must be a one-element floating-point cpu tensor");
}

// [lo, hi) or [lo, hi] with finiteness; messages name the argument, as the Python classes do.
void check_range(const char* op, const char* name, double v, double lo, double hi, bool hi_inclusive) {
  TORCH_CHECK(std::isfinite(v) && v >= lo && (hi_inclusive ? v <= hi : v < hi), op, ": invalid ", name, "=", v,
              " (expected a finite value in [", lo, ", ", hi, hi_inclusive ? "]" : ")", ")");
}
void check_nonneg(const char* op, const char* name, double v) {
  TORCH_CHECK(std::isfinite(v) && v >= 0, op, ": invalid ", name, "=", v, " (expected a finite value >= 0)");
}

double lr_value(double lr) { return lr; }
double lr_value(const Tensor& lr) {
  TORCH_CHECK(lr.numel() == 1 && lr.device().is_cpu(), "lr must be a float or a one-element cpu tensor");
  return lr.item<double>();
}

bool step_is_skipped(const OptTensor& found_inf) { return found_inf && found_inf->item<double>() != 0.0; }

double read_scalar(const Tensor& s) {
  return s.scalar_type() == at::kFloat ? double(*s.data_ptr<float>()) : *s.data_ptr<double>();
}
// Writes v in the tensor's dtype and returns the value stored (rounded to float32 if it is one).
double write_scalar(const Tensor& s, double v) {
  if (s.scalar_type() == at::kFloat) return double(*s.data_ptr<float>() = float(v));
  return *s.data_ptr<double>() = v;
}
void increment_steps(TensorList steps) {
  for (const Tensor& s : steps) {
    if (s.scalar_type() == at::kFloat) *s.data_ptr<float>() += 1.0f;
    else *s.data_ptr<double>() += 1.0;
  }
}

// Gives each tensor of a call a flat pointer. A tensor that shares its parameter's dense layout is
// used in place; otherwise (a non-contiguous view, say) the kernel works on a dense copy that is
// written back afterwards.
class FlatViews {
 public:
  void* ptr(const Tensor& t, const Tensor& param, bool written) {
    if (param.is_non_overlapping_and_dense() && t.strides() == param.strides()) return t.data_ptr();
    Tensor dense = param.is_non_overlapping_and_dense() ? at::empty_like(param) : at::empty(t.sizes(), t.options());
    dense.copy_(t);
    if (written) writeback_.emplace_back(t, dense);
    else keep_alive_.push_back(dense);
    return dense.data_ptr();
  }
  void write_back() {
    for (auto& [orig, dense] : writeback_) orig.copy_(dense);
  }

 private:
  std::vector<std::pair<Tensor, Tensor>> writeback_;
  std::vector<Tensor> keep_alive_;
};

template <class F>
void parallel_over_chunks(int64_t num_chunks, const F& f) {
  if (num_chunks == 1) f(0, 1);
  else if (num_chunks > 1) at::parallel_for(0, num_chunks, 1, f);
}

// The arguments every update op ends with (kPipelineArgs in csrc/gradfused.cpp), as parameters and as
// the struct that carries them into run_update.
#define GF_PIPELINE_PARAMS                                                                                   \
  bool maximize, const OptTensor &grad_scale, const OptTensor &found_inf, const OptTensor &alignment_scales, \
      std::optional<at::ArrayRef<double>> grad_noise, double grad_dropout, double lr_dropout, int64_t seed,  \
      at::OptionalIntArrayRef param_indices
#define GF_PIPELINE_ARGS \
  PipelineArgs { maximize, grad_scale, found_inf, alignment_scales, grad_noise, grad_dropout, lr_dropout, seed, param_indices }

struct PipelineArgs {
  bool maximize;
  const OptTensor& grad_scale;
  const OptTensor& found_inf;
  const OptTensor& alignment_scales;
  std::optional<at::ArrayRef<double>> grad_noise;  // (η, γ)
  double grad_dropout, lr_dropout;
  int64_t seed;
  at::OptionalIntArrayRef param_indices;  // each tensor's position in its optimizer; default 0..n-1
};

void check_pipeline(const char* op, const PipelineArgs& a, size_t n) {
  check_scalar_tensor(op, "grad_scale", a.grad_scale);
  check_scalar_tensor(op, "found_inf", a.found_inf);
  if (a.alignment_scales) {
    const Tensor& s = *a.alignment_scales;
    TORCH_CHECK(s.device().is_cpu() && s.scalar_type() == at::kDouble && s.dim() == 1 && size_t(s.numel()) == n &&
                    s.is_contiguous(),
                op, ": alignment_scales must be a contiguous float64 cpu tensor of shape [", n, "]");
  }
  if (a.grad_noise) {
    TORCH_CHECK(a.grad_noise->size() == 2, op, ": grad_noise must be (eta, gamma), got ", a.grad_noise->size(),
                " numbers");
    check_nonneg(op, "grad_noise eta", (*a.grad_noise)[0]);
    check_nonneg(op, "grad_noise gamma", (*a.grad_noise)[1]);
  }
  check_range(op, "grad_dropout", a.grad_dropout, 0.0, 1.0, false);
  check_range(op, "lr_dropout", a.lr_dropout, 0.0, 1.0, false);
  if (a.param_indices) {
    TORCH_CHECK(a.param_indices->size() == n, op, ": param_indices has ", a.param_indices->size(),
                " entries but params has ", n);
    for (size_t i = 0; i < n; ++i)
      TORCH_CHECK((*a.param_indices)[i] >= 0 && (*a.param_indices)[i] <= int64_t(UINT32_MAX), op,
                  ": param_indices[", i, "]=", (*a.param_indices)[i], " is outside [0, 2^32)");
  }
}

// The common body of every update op. `states` are in the rule's state order; `tensor_scalars(i, t)`
// gives tensor i's per-tensor scalars at step t. Returns false when found_inf skipped the step.
template <class Launch, class TensorScalarsFn>
bool run_update(const char* op, TensorList params, TensorList grads, at::ArrayRef<NamedList> states,
                TensorList steps, double lr, double weight_decay, bool decoupled, int rule_variant,
                const PipelineArgs& pipeline, const decltype(Launch::hyper)& hyper, TensorScalarsFn tensor_scalars,
                void (*kernel)(const Launch&, int64_t, int64_t)) {
  const size_t n = params.size();
  check_lists(op, {"params", params}, {{"grads", grads}}, states);
  check_scalar_list(op, "state_steps", steps, n);
  check_nonneg(op, "lr", lr);
  check_nonneg(op, "weight_decay", weight_decay);
  check_pipeline(op, pipeline, n);
  if (n == 0 || step_is_skipped(pipeline.found_inf)) return false;

  for (size_t i = 1; i < n; ++i)
    TORCH_CHECK(params[i].scalar_type() == params[0].scalar_type(), op, ": params[", i, "] has dtype ",
                params[i].scalar_type(), " but params[0] has ", params[0].scalar_type(),
                "; group parameters by dtype before calling");

  const OptTensor& grad_scale = pipeline.grad_scale;
  const double grad_mul_base = (pipeline.maximize ? -1.0 : 1.0) / (grad_scale ? grad_scale->item<double>() : 1.0);
  const double* align = pipeline.alignment_scales ? pipeline.alignment_scales->data_ptr<double>() : nullptr;
  const double noise_eta = pipeline.grad_noise ? (*pipeline.grad_noise)[0] : 0.0;
  const double noise_gamma = pipeline.grad_noise ? (*pipeline.grad_noise)[1] : 0.0;

  using SlotT = std::remove_cv_t<std::remove_pointer_t<decltype(Launch::slots)>>;
  static thread_local std::vector<SlotT> slots;  // reused: no allocation per step once warm
  slots.resize(n);
  FlatViews views;
  int64_t num_chunks = 0;
  for (size_t i = 0; i < n; ++i) {
    const Tensor& p = params[i];
    SlotT& slot = slots[i];
    const double t = read_scalar(steps[i]) + 1.0;
    slot.numel = p.numel();
    slot.first_chunk = num_chunks;
    num_chunks += (slot.numel + kChunkSize - 1) / kChunkSize;
    slot.grad_mul = grad_mul_base * (align ? align[i] : 1.0);
    slot.scalars = tensor_scalars(i, t);
    slot.random_key = {uint64_t(pipeline.seed),
                       uint32_t(pipeline.param_indices ? (*pipeline.param_indices)[i] : int64_t(i)), uint32_t(t)};
    slot.noise_std = std::sqrt(noise_eta / std::pow(1.0 + t, noise_gamma));
    if (slot.numel == 0) continue;
    slot.ptr[0] = views.ptr(p, p, true);
    slot.ptr[1] = views.ptr(grads[i], p, false);
    int j = 2;
    for (const NamedList& s : states) slot.ptr[j++] = views.ptr(s.tensors[i], p, true);
  }

  Launch launch{};
  launch.slots = slots.data();
  launch.num_slots = int64_t(n);
  launch.chunk_size = kChunkSize;
  launch.dtype = dtype_of(params[0]);
  launch.weight_decay_mode =
      weight_decay == 0.0 ? WeightDecay::None : (decoupled ? WeightDecay::Decoupled : WeightDecay::L2);
  launch.rule_variant = rule_variant;
  launch.pipeline = {lr, weight_decay, 1.0 - lr * weight_decay};
  launch.random = {noise_eta > 0.0, pipeline.grad_dropout > 0.0, pipeline.lr_dropout > 0.0, uint64_t(pipeline.seed),
                   pipeline.grad_dropout, pipeline.lr_dropout};
  launch.hyper = hyper;
  parallel_over_chunks(num_chunks, [&](int64_t b, int64_t e) { kernel(launch, b, e); });
  views.write_back();
  increment_steps(steps);
  return true;
}

// Per-tensor scalars that depend on t alone.
template <class Hyper, class Fn>
auto scalars_of_t(const Hyper& hyper, Fn fn) {
  return [&hyper, fn](size_t, double t) { return fn(t, hyper); };
}

template <class Lr>
void persistent_sgd_cpu(TensorList params, TensorList grads, TensorList momentum_buffers, TensorList state_steps,
                        Lr lr, double decay, double dampening, double weight_decay, bool decoupled_weight_decay,
                        bool nesterov, GF_PIPELINE_PARAMS) {
  const char* op = "gradfused.persistent_sgd_";
  check_nonneg(op, "decay", decay);
  check_range(op, "dampening", dampening, 0.0, 1.0, true);
  TORCH_CHECK(!nesterov || (decay > 0 && dampening == 0), op, ": nesterov requires decay > 0 and dampening = 0");
  const SgdHyper<double> hyper{decay, 1.0 - dampening};
  run_update<SgdLaunch>(op, params, grads, {{"momentum_buffers", momentum_buffers}}, state_steps, lr_value(lr),
                        weight_decay, decoupled_weight_decay, nesterov, GF_PIPELINE_ARGS, hyper,
                        scalars_of_t(hyper, sgd_tensor_scalars), kernels().persistent_sgd);
}

// The Adam family's hyperparameters, checked, with 1 - beta formed once in double.
AdamHyper<double> adam_hyper(const char* op, double beta1, double beta2, double eps) {
  check_range(op, "beta1", beta1, 0.0, 1.0, false);
  check_range(op, "beta2", beta2, 0.0, 1.0, false);
  check_nonneg(op, "eps", eps);
  return {beta1, beta2, eps, 1.0 - beta1, 1.0 - beta2};
}

template <class Lr>
void adam_cpu(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
              TensorList max_exp_avg_sqs, TensorList state_steps, Lr lr, double beta1, double beta2, double eps,
              double weight_decay, bool decoupled_weight_decay, bool amsgrad, GF_PIPELINE_PARAMS) {
  const char* op = "gradfused.adam_";
  const AdamHyper<double> hyper = adam_hyper(op, beta1, beta2, eps);
  if (amsgrad) {
    run_update<AdamLaunch>(op, params, grads,
                           {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}, {"max_exp_avg_sqs", max_exp_avg_sqs}},
                           state_steps, lr_value(lr), weight_decay, decoupled_weight_decay, 1, GF_PIPELINE_ARGS, hyper,
                           scalars_of_t(hyper, adam_tensor_scalars), kernels().adam);
  } else {
    run_update<AdamLaunch>(op, params, grads, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}}, state_steps,
                           lr_value(lr), weight_decay, decoupled_weight_decay, 0, GF_PIPELINE_ARGS, hyper,
                           scalars_of_t(hyper, adam_tensor_scalars), kernels().adam);
  }
}

template <class Lr>
void radam_cpu(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
               TensorList state_steps, Lr lr, double beta1, double beta2, double eps, double weight_decay,
               bool decoupled_weight_decay, GF_PIPELINE_PARAMS) {
  const char* op = "gradfused.radam_";
  const AdamHyper<double> hyper = adam_hyper(op, beta1, beta2, eps);
  run_update<RAdamLaunch>(op, params, grads, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}}, state_steps,
                          lr_value(lr), weight_decay, decoupled_weight_decay, 0, GF_PIPELINE_ARGS, hyper,
                          scalars_of_t(hyper, radam_tensor_scalars), kernels().radam);
}

template <class Lr>
void adema_cpu(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
               TensorList exp_avg_slows, TensorList state_steps, Lr lr, double beta1, double beta2, double beta3,
               double alpha, double eps, double weight_decay, std::optional<double> t_alpha_beta3, GF_PIPELINE_PARAMS) {
  const char* op = "gradfused.adema_";
  const AdamHyper<double> adam = adam_hyper(op, beta1, beta2, eps);
  check_range(op, "beta3", beta3, 0.0, 1.0, false);
  check_nonneg(op, "alpha", alpha);
  TORCH_CHECK(!t_alpha_beta3 || (std::isfinite(*t_alpha_beta3) && *t_alpha_beta3 > 0), op,
              ": invalid t_alpha_beta3=", t_alpha_beta3.value_or(0), " (expected None or a number > 0)");
  const AdemaHyper<double> hyper{adam.beta1, adam.beta2, adam.eps, adam.one_minus_beta1, adam.one_minus_beta2,
                                 beta3, alpha, t_alpha_beta3.value_or(0.0)};
  const bool slow = alpha != 0.0;  // alpha == 0 is AdamW: the slow EMA is neither read nor allocated
  if (slow) {
    run_update<AdemaLaunch>(op, params, grads,
                            {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}, {"exp_avg_slows", exp_avg_slows}},
                            state_steps, lr_value(lr), weight_decay, true, 1, GF_PIPELINE_ARGS, hyper,
                            scalars_of_t(hyper, adema_tensor_scalars), kernels().adema);
  } else {
    run_update<AdemaLaunch>(op, params, grads, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}}, state_steps,
                            lr_value(lr), weight_decay, true, 0, GF_PIPELINE_ARGS, hyper,
                            scalars_of_t(hyper, adema_tensor_scalars), kernels().adema);
  }
}

template <class Lr>
void nadam_cpu(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs, TensorList mu_products,
               TensorList state_steps, Lr lr, double beta1, double beta2, double eps, double weight_decay,
               bool decoupled_weight_decay, double momentum_decay, GF_PIPELINE_PARAMS) {
  const char* op = "gradfused.nadam_";
  const AdamHyper<double> adam = adam_hyper(op, beta1, beta2, eps);
  check_nonneg(op, "momentum_decay", momentum_decay);
  check_scalar_list(op, "mu_products", mu_products, params.size());
  const NAdamHyper<double> hyper{adam.beta1, adam.beta2, adam.eps, adam.one_minus_beta1, adam.one_minus_beta2,
                                 momentum_decay};
  // Πμ advances only if the step runs: the new products are written after the update.
  std::vector<double> products(params.size());
  auto scalars = [&](size_t i, double t) {
    products[i] = read_scalar(mu_products[i]) * nadam_mu(t, hyper);
    const double stored = mu_products[i].scalar_type() == at::kFloat ? double(float(products[i])) : products[i];
    return nadam_tensor_scalars(t, stored, hyper);  // from the value as stored, as torch.optim.NAdam
  };
  const bool stepped = run_update<NAdamLaunch>(
      op, params, grads, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}}, state_steps, lr_value(lr),
      weight_decay, decoupled_weight_decay, 0, GF_PIPELINE_ARGS, hyper, scalars, kernels().nadam);
  if (stepped)
    for (size_t i = 0; i < params.size(); ++i) write_scalar(mu_products[i], products[i]);
}

template <class Lr>
void rmsprop_cpu(TensorList params, TensorList grads, TensorList square_avgs, TensorList momentum_buffers,
                 TensorList grad_avgs, TensorList state_steps, Lr lr, double alpha, double eps, double weight_decay,
                 double momentum, bool centered, GF_PIPELINE_PARAMS) {
  const char* op = "gradfused.rmsprop_";
  check_range(op, "alpha", alpha, 0.0, 1.0, false);
  check_nonneg(op, "eps", eps);
  check_nonneg(op, "momentum", momentum);
  const RmspropHyper<double> hyper{alpha, 1.0 - alpha, eps, momentum};
  const bool with_momentum = momentum > 0.0;
  std::vector<NamedList> states{{"square_avgs", square_avgs}};
  if (with_momentum) states.push_back({"momentum_buffers", momentum_buffers});
  if (centered) states.push_back({"grad_avgs", grad_avgs});
  const int variant = int(with_momentum) | (int(centered) << 1);
  run_update<RmspropLaunch>(op, params, grads, states, state_steps, lr_value(lr), weight_decay, false, variant,
                            GF_PIPELINE_ARGS, hyper, [](size_t, double) { return NoTensorScalars<double>{}; },
                            kernels().rmsprop);
}

template <class Lr>
void gradient_ascent_cpu(TensorList params, TensorList grads, TensorList momentum_buffers, TensorList square_avgs,
                         TensorList state_steps, Lr lr, double momentum, double beta, double eps, bool momentum_ema,
                         bool nesterov, std::optional<double> clip_value, std::optional<double> lr_decay,
                         int64_t warmup_steps, GF_PIPELINE_PARAMS) {
  const char* op = "gradfused.gradient_ascent_";
  check_range(op, "momentum", momentum, 0.0, 1.0, false);
  check_range(op, "beta", beta, 0.0, 1.0, false);
  check_nonneg(op, "eps", eps);
  TORCH_CHECK(!clip_value || (std::isfinite(*clip_value) && *clip_value > 0), op, ": invalid clip_value=",
              clip_value.value_or(0), " (expected None or a finite number > 0)");
  TORCH_CHECK(!lr_decay || (std::isfinite(*lr_decay) && *lr_decay > 0), op, ": invalid lr_decay=",
              lr_decay.value_or(0), " (expected None or a finite number > 0)");
  TORCH_CHECK(warmup_steps >= 0, op, ": invalid warmup_steps=", warmup_steps, " (expected an integer >= 0)");
  const GradientAscentHyper<double> hyper{momentum, 1.0 - momentum, beta, 1.0 - beta, eps,
                                          clip_value.value_or(INFINITY), lr_decay.value_or(1.0), double(warmup_steps)};
  const int variant = int(nesterov) | (int(momentum_ema) << 1);
  run_update<GradientAscentLaunch>(op, params, grads, {{"momentum_buffers", momentum_buffers}, {"square_avgs", square_avgs}},
                                   state_steps, lr_value(lr), 0.0, false, variant, GF_PIPELINE_ARGS, hyper,
                                   scalars_of_t(hyper, gradient_ascent_tensor_scalars), kernels().gradient_ascent);
}

void lookahead_cpu(TensorList params, TensorList slow_weights, double alpha) {
  const char* op = "gradfused.lookahead_";
  check_lists(op, {"params", params}, {{"slow_weights", slow_weights}});
  check_range(op, "alpha", alpha, 0.0, 1.0, true);
  const size_t n = params.size();
  if (n == 0) return;
  for (size_t i = 1; i < n; ++i)
    TORCH_CHECK(params[i].scalar_type() == params[0].scalar_type(), op, ": params[", i, "] has dtype ",
                params[i].scalar_type(), " but params[0] has ", params[0].scalar_type());
  static thread_local std::vector<LookaheadSlot> slots;
  slots.resize(n);
  FlatViews views;
  int64_t num_chunks = 0;
  for (size_t i = 0; i < n; ++i) {
    const Tensor& p = params[i];
    slots[i] = LookaheadSlot{nullptr, nullptr, p.numel(), num_chunks};
    num_chunks += (p.numel() + kChunkSize - 1) / kChunkSize;
    if (p.numel() == 0) continue;
    slots[i].param = views.ptr(p, p, true);
    slots[i].slow = views.ptr(slow_weights[i], p, true);
  }
  const LookaheadLaunch launch{slots.data(), int64_t(n), kChunkSize, dtype_of(params[0]), alpha};
  parallel_over_chunks(num_chunks, [&](int64_t b, int64_t e) { kernels().lookahead(launch, b, e); });
  views.write_back();
}

void alignment_sums_cpu(TensorList grads, TensorList alignment_emas, const Tensor& sums, double beta,
                        const OptTensor& grad_scale, const OptTensor& found_inf) {
  const char* op = "gradfused.alignment_sums_";
  const size_t n = grads.size();
  check_lists(op, {"grads", grads}, {{"alignment_emas", alignment_emas}});
  check_range(op, "beta", beta, 0.0, 1.0, false);
  check_scalar_tensor(op, "grad_scale", grad_scale);
  check_scalar_tensor(op, "found_inf", found_inf);
  TORCH_CHECK(sums.device().is_cpu() && sums.scalar_type() == at::kDouble && sums.dim() == 2 &&
                  size_t(sums.size(0)) == n && sums.size(1) == 3 && sums.is_contiguous(),
              op, ": sums must be a contiguous float64 cpu tensor of shape [", n, ", 3]");
  if (n == 0 || step_is_skipped(found_inf)) return;

  for (size_t i = 1; i < n; ++i)
    TORCH_CHECK(grads[i].scalar_type() == grads[0].scalar_type(), op, ": grads[", i, "] has dtype ",
                grads[i].scalar_type(), " but grads[0] has ", grads[0].scalar_type());

  static thread_local std::vector<AlignSlot> slots;
  static thread_local std::vector<double> partials;
  slots.resize(n);
  FlatViews views;
  int64_t num_chunks = 0;
  for (size_t i = 0; i < n; ++i) {
    const Tensor& g = grads[i];
    slots[i] = AlignSlot{nullptr, nullptr, g.numel(), num_chunks};
    num_chunks += (g.numel() + kChunkSize - 1) / kChunkSize;
    if (g.numel() == 0) continue;
    slots[i].grad = views.ptr(g, g, false);
    slots[i].ema = views.ptr(alignment_emas[i], g, true);
  }
  partials.assign(size_t(3 * num_chunks), 0.0);
  AlignLaunch launch{slots.data(), int64_t(n), kChunkSize, dtype_of(grads[0]), bool(grad_scale),
                     {beta, 1.0 - beta, grad_scale ? grad_scale->item<double>() : 1.0}, partials.data()};
  parallel_over_chunks(num_chunks, [&](int64_t b, int64_t e) { kernels().alignment_stats(launch, b, e); });
  views.write_back();

  double* out = sums.data_ptr<double>();
  for (size_t i = 0; i < n; ++i) {
    double total[3] = {0.0, 0.0, 0.0};
    const int64_t chunks = (slots[i].numel + kChunkSize - 1) / kChunkSize;
    for (int64_t c = slots[i].first_chunk; c < slots[i].first_chunk + chunks; ++c)
      for (int k = 0; k < 3; ++k) total[k] += partials[size_t(3 * c + k)];
    for (int k = 0; k < 3; ++k) out[3 * i + k] = total[k];
  }
}

}  // namespace
}  // namespace cpu
}  // namespace gf

TORCH_LIBRARY_IMPL(gradfused, CPU, m) {
  using namespace gf::cpu;
  m.impl("persistent_sgd_", &persistent_sgd_cpu<double>);
  m.impl("persistent_sgd_.tensor_lr", &persistent_sgd_cpu<const at::Tensor&>);
  m.impl("adam_", &adam_cpu<double>);
  m.impl("adam_.tensor_lr", &adam_cpu<const at::Tensor&>);
  m.impl("radam_", &radam_cpu<double>);
  m.impl("radam_.tensor_lr", &radam_cpu<const at::Tensor&>);
  m.impl("adema_", &adema_cpu<double>);
  m.impl("adema_.tensor_lr", &adema_cpu<const at::Tensor&>);
  m.impl("nadam_", &nadam_cpu<double>);
  m.impl("nadam_.tensor_lr", &nadam_cpu<const at::Tensor&>);
  m.impl("rmsprop_", &rmsprop_cpu<double>);
  m.impl("rmsprop_.tensor_lr", &rmsprop_cpu<const at::Tensor&>);
  m.impl("gradient_ascent_", &gradient_ascent_cpu<double>);
  m.impl("gradient_ascent_.tensor_lr", &gradient_ascent_cpu<const at::Tensor&>);
  m.impl("alignment_sums_", &alignment_sums_cpu);
  m.impl("lookahead_", &lookahead_cpu);
}

// A sparse tensor anywhere in a call dispatches here instead of "could not run with SparseCPU": name it.
namespace {
void reject_sparse(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto& args = op.schema().arguments();
  const size_t first = stack->size() - args.size();
  for (size_t a = 0; a < args.size(); ++a) {
    const c10::IValue& v = (*stack)[first + a];
    if (v.isTensor() && v.toTensor().defined() && v.toTensor().layout() != at::kStrided)
      TORCH_CHECK(false, "gradfused.", op.schema().name().substr(std::string("gradfused::").size()), ": ",
                  args[a].name(), " is sparse; gradfused supports dense tensors only");
    if (v.isTensorList()) {
      const auto list = v.toTensorList();
      for (size_t i = 0; i < list.size(); ++i) {
        const at::Tensor t = list[i];
        TORCH_CHECK(!t.defined() || t.layout() == at::kStrided, "gradfused.",
                    op.schema().name().substr(std::string("gradfused::").size()), ": ", args[a].name(), "[", i,
                    "] is sparse; gradfused supports dense tensors only");
      }
    }
  }
  TORCH_CHECK(false, op.schema().name(), ": unexpected sparse dispatch");
}
}  // namespace

TORCH_LIBRARY_IMPL(gradfused, SparseCPU, m) {
  for (const char* op : {"persistent_sgd_", "persistent_sgd_.tensor_lr", "adam_", "adam_.tensor_lr", "radam_",
                         "radam_.tensor_lr", "adema_", "adema_.tensor_lr", "nadam_", "nadam_.tensor_lr", "rmsprop_",
                         "rmsprop_.tensor_lr", "gradient_ascent_", "gradient_ascent_.tensor_lr", "alignment_sums_",
                         "lookahead_"})
    m.impl(op, torch::CppFunction::makeFromBoxedFunction<&reject_sparse>());
}
