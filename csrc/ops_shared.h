// What the CPU and CUDA bindings share: the checks of every op's arguments and the ops themselves, each
// written once as a template over the backend (cpu/ops_cpu.cpp, cuda/ops_cuda.cpp). A backend supplies
//   template <Rule R, class Hyper, class Lr> static void update(const UpdateArgs<Hyper, Lr>&)
// and registers the ops with GF_REGISTER_UPDATE_OPS.
#pragma once
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "common/quantize.h"
#include "common/rules.h"

namespace gf {
namespace ops {

using at::Tensor;
using at::TensorList;
using OptTensor = std::optional<Tensor>;

enum class Rule { PersistentSgd, Adam, RAdam, Adema, NAdam, Rmsprop, GradientAscent };

struct NamedList {
  const char* name;
  TensorList tensors;
};

// [lo, hi) or [lo, hi] with finiteness; messages name the argument, as the Python classes do.
inline void check_range(const char* op, const char* name, double v, double lo, double hi, bool hi_inclusive) {
  TORCH_CHECK(std::isfinite(v) && v >= lo && (hi_inclusive ? v <= hi : v < hi), op, ": invalid ", name, "=", v,
              " (expected a finite value in [", lo, ", ", hi, hi_inclusive ? "]" : ")", ")");
}
inline void check_nonneg(const char* op, const char* name, double v) {
  TORCH_CHECK(std::isfinite(v) && v >= 0, op, ": invalid ", name, "=", v, " (expected a finite value >= 0)");
}

inline DType dtype_of(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::Float32;
    case at::kDouble: return DType::Float64;
    case at::kBFloat16: return DType::BFloat16;
    case at::kHalf: return DType::Float16;
    default: TORCH_CHECK(false, "unreachable: dtype checked in check_lists");
  }
}

inline bool is_half(const Tensor& t) { return t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf; }

// One list checked against the parameters it belongs to. With `fp32_ok` a list of 16-bit parameters may
// be float32 (NOTE: [mixed precision in one pass]); with `bf16_ok` a list of float32 parameters may be
// bfloat16 (states, state_dtype=torch.bfloat16).
inline void check_list_matches(const char* op, const NamedList& params, const NamedList& list, bool fp32_ok = false,
                               bool bf16_ok = false) {
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
    const bool fp32_state = fp32_ok && is_half(p) && t.scalar_type() == at::kFloat;
    const bool bf16_state = bf16_ok && p.scalar_type() == at::kFloat && t.scalar_type() == at::kBFloat16;
    TORCH_CHECK(t.scalar_type() == p.scalar_type() || fp32_state || bf16_state, op, ": ", list.name, "[", i,
                "] has dtype ", t.scalar_type(), " but ", params.name, "[", i, "] has ", p.scalar_type(),
                bf16_ok  ? " (expected the parameter's dtype, float32 for a 16-bit parameter, or bfloat16 for a "
                           "float32 one)"
                : fp32_ok ? " (expected the parameter's dtype, or float32 for a 16-bit parameter)"
                          : "");
    TORCH_CHECK(t.sizes() == p.sizes(), op, ": ", list.name, "[", i, "] has shape ", t.sizes(), " but ",
                params.name, "[", i, "] has ", p.sizes());
  }
}

// NOTE: [every element once]
// A tensor the op writes must hold each of its elements at its own address. An expanded view (a stride
// of 0) would take several updates per element, and writing its dense copy back fails only after other
// tensors were written: a half-applied step. Proven by the strides: sorted by stride, each dimension
// must step past everything the smaller ones span (as a dense or sliced tensor does); layouts beyond
// that (as_strided puzzles) are refused too, on the safe side.
inline bool owns_each_element(const Tensor& t) {
  if (t.is_non_overlapping_and_dense()) return true;  // a flag torch keeps: the common case costs nothing
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size) of the dimensions longer than 1
  for (int64_t d = 0; d < t.dim(); ++d)
    if (t.size(d) > 1) dims.emplace_back(t.stride(d), t.size(d));
  std::sort(dims.begin(), dims.end());
  int64_t span = 0;  // the largest offset the dimensions so far reach
  for (const auto& [stride, size] : dims) {
    if (stride <= span) return false;
    span += (size - 1) * stride;
  }
  return true;
}
inline void check_owns_each_element(const char* op, const NamedList& list) {
  for (size_t i = 0; i < list.tensors.size(); ++i)
    TORCH_CHECK(owns_each_element(list.tensors[i]), op, ": ", list.name, "[", i, "] (shape ", list.tensors[i].sizes(),
                ", strides ", list.tensors[i].strides(),
                ") has elements that share memory, as an expanded tensor does; an in-place update needs a tensor "
                "that holds each element once (.clone() it)");
}

// Every check runs before anything is written, so bad input never half-applies a step. All tensors of a
// call live on `device_type`, on params[0]'s device, and the params share params[0]'s dtype. With
// `fp32_ok`, the lists in `fp32_ok_lists` (the gradients) and `state_lists` of 16-bit parameters may be
// float32 (NOTE: [mixed precision in one pass]), and the state lists of float32 parameters bfloat16, each
// list in one dtype: one kernel serves one combination per call.
inline void check_lists(const char* op, c10::DeviceType device_type, const NamedList& params,
                        at::ArrayRef<NamedList> others, at::ArrayRef<NamedList> fp32_ok_lists = {},
                        bool fp32_ok = false, at::ArrayRef<NamedList> state_lists = {}) {
  for (size_t i = 0; i < params.tensors.size(); ++i) {
    const Tensor& p = params.tensors[i];
    TORCH_CHECK(p.defined(), op, ": ", params.name, "[", i, "] is undefined");
    TORCH_CHECK(p.layout() == at::kStrided, op, ": ", params.name, "[", i, "] is sparse (", p.layout(),
                "); gradfused supports dense tensors only");
    TORCH_CHECK(!p.is_complex(), op, ": ", params.name, "[", i, "] is complex (", p.scalar_type(),
                "); pass torch.view_as_real of it");
    TORCH_CHECK(p.scalar_type() == at::kFloat || p.scalar_type() == at::kDouble || is_half(p), op, ": ",
                params.name, "[", i, "] has dtype ", p.scalar_type(), "; expected float32, float64, bfloat16 or float16");
    TORCH_CHECK(p.device().type() == device_type && p.device() == params.tensors[0].device(), op, ": ", params.name,
                "[", i, "] is on ", p.device(), " but this call runs on ", params.tensors[0].device(),
                "; all tensors of one call must be on one device");
    TORCH_CHECK(p.scalar_type() == params.tensors[0].scalar_type(), op, ": ", params.name, "[", i, "] has dtype ",
                p.scalar_type(), " but ", params.name, "[0] has ", params.tensors[0].scalar_type(),
                "; group them by dtype before calling");
  }
  for (const NamedList& list : others) check_list_matches(op, params, list);
  for (const NamedList& list : state_lists) check_list_matches(op, params, list, fp32_ok, /*bf16_ok=*/fp32_ok);
  for (const NamedList& list : fp32_ok_lists) check_list_matches(op, params, list, fp32_ok);
  for (at::ArrayRef<NamedList> lists : {fp32_ok_lists, state_lists})
    for (const NamedList& list : lists)
      for (size_t i = 1; fp32_ok && i < list.tensors.size(); ++i)
        TORCH_CHECK(list.tensors[i].scalar_type() == list.tensors[0].scalar_type(), op, ": ", list.name, "[", i,
                    "] has dtype ", list.tensors[i].scalar_type(), " but ", list.name, "[0] has ",
                    list.tensors[0].scalar_type(), "; one call takes one dtype per list");
}

// Per-tensor scalar state (`state_steps`, NAdam's `mu_products`): one-element float tensors on the
// parameters' device; float64 is allowed for the steps, and for everything on the CPU.
// NOTE: [exact step counts]: a float32 count stops at 2^24 (16.7M steps), where the random streams,
// keyed by t, would repeat; the optimizers keep float64 counts for the groups that draw.
inline void check_scalar_list(const char* op, const char* name, TensorList list, TensorList params,
                              bool float64_ok = false) {
  TORCH_CHECK(list.size() == params.size(), op, ": ", name, " has ", list.size(), " tensors but params has ",
              params.size());
  for (size_t i = 0; i < list.size(); ++i) {
    const Tensor& s = list[i];
    const bool double_ok = float64_ok || params[i].device().is_cpu();
    TORCH_CHECK(s.defined() && s.numel() == 1 && s.device() == params[i].device() &&
                    (s.scalar_type() == at::kFloat || (double_ok && s.scalar_type() == at::kDouble)),
                op, ": ", name, "[", i, "] must be a one-element ", double_ok ? "float32 or float64" : "float32",
                " tensor on ", params[i].device(), " (params[", i, "]'s device)");
  }
}

// grad_scale, found_inf, a tensor lr: one-element floating tensors on the CPU or on the call's device.
inline void check_scalar_tensor(const char* op, const char* name, const OptTensor& t, TensorList params) {
  if (!t) return;
  const bool device_ok = t->device().is_cpu() || (!params.empty() && t->device() == params[0].device());
  TORCH_CHECK(t->numel() == 1 && device_ok && t->is_floating_point(), op, ": ", name,
              " must be a one-element floating-point tensor on the cpu",
              params.empty() || params[0].device().is_cpu() ? "" : " or on the parameters' device");
}

// The arguments every update op ends with (kPipelineArgs in csrc/gradfused.cpp), as parameters and as
// the struct that carries them.
#define GF_PIPELINE_PARAMS                                                                                   \
  bool maximize, const OptTensor &grad_scale, const OptTensor &found_inf, const OptTensor &alignment_scales, \
      std::optional<at::ArrayRef<double>> grad_noise, double grad_dropout, double lr_dropout, int64_t seed,  \
      at::OptionalIntArrayRef param_indices, std::optional<TensorList> master_weights, bool stochastic_rounding, \
      std::optional<TensorList> state_absmax, at::OptionalIntArrayRef state_signed
#define GF_PIPELINE_ARGS                                                                                         \
  PipelineArgs {                                                                                                 \
    maximize, grad_scale, found_inf, alignment_scales, grad_noise, grad_dropout, lr_dropout, seed, param_indices, \
        master_weights.value_or(TensorList()), stochastic_rounding, state_absmax.value_or(TensorList()),          \
        state_signed                                                                                             \
  }

struct PipelineArgs {
  bool maximize;
  const OptTensor& grad_scale;
  const OptTensor& found_inf;
  const OptTensor& alignment_scales;
  std::optional<at::ArrayRef<double>> grad_noise;  // (η, γ)
  double grad_dropout, lr_dropout;
  int64_t seed;
  at::OptionalIntArrayRef param_indices;  // each tensor's position in its optimizer; default 0..n-1
  TensorList master_weights;              // fp32 master weights of 16-bit params, or empty
  bool stochastic_rounding;
  TensorList state_absmax;                // 8-bit states: each state's absmax per block, list after list
  at::OptionalIntArrayRef state_signed;   // 8-bit states: 1 where a state list takes the signed map

  bool quantized() const { return state_signed.has_value(); }

  double noise_eta() const { return grad_noise ? (*grad_noise)[0] : 0.0; }
  double noise_gamma() const { return grad_noise ? (*grad_noise)[1] : 0.0; }
  uint32_t param_index(size_t i) const { return uint32_t(param_indices ? (*param_indices)[i] : int64_t(i)); }
  RandomOptions random() const {
    return {noise_eta() > 0.0, grad_dropout > 0.0, lr_dropout > 0.0, uint64_t(seed), grad_dropout, lr_dropout};
  }
};

// `bf16_states`: float32 parameters with bfloat16 states, whose states stochastic_rounding rounds.
inline void check_pipeline(const char* op, const PipelineArgs& a, TensorList params, bool bf16_states = false) {
  const size_t n = params.size();
  check_scalar_tensor(op, "grad_scale", a.grad_scale, params);
  check_scalar_tensor(op, "found_inf", a.found_inf, params);
  if (a.alignment_scales) {
    const Tensor& s = *a.alignment_scales;
    const bool device_ok = n == 0 || s.device() == params[0].device();
    TORCH_CHECK(device_ok && s.scalar_type() == at::kDouble && s.dim() == 1 && size_t(s.numel()) == n &&
                    s.is_contiguous(),
                op, ": alignment_scales must be a contiguous float64 tensor of shape [", n, "] on the parameters' device");
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
  TORCH_CHECK(!(a.stochastic_rounding && !a.master_weights.empty()), op,
              ": stochastic_rounding and master_weights exclude each other");
  if (!a.master_weights.empty()) {
    TORCH_CHECK(a.master_weights.size() == n, op, ": master_weights has ", a.master_weights.size(),
                " tensors but params has ", n);
    for (size_t i = 0; i < n; ++i) {
      const Tensor& m = a.master_weights[i];
      TORCH_CHECK(is_half(params[i]), op, ": master_weights are for bfloat16/float16 params, but params[", i,
                  "] has ", params[i].scalar_type());
      TORCH_CHECK(m.defined() && m.scalar_type() == at::kFloat && m.device() == params[i].device() &&
                      m.sizes() == params[i].sizes() && m.layout() == at::kStrided,
                  op, ": master_weights[", i, "] must be a float32 tensor of params[", i, "]'s shape and device");
    }
  }
  if (a.stochastic_rounding && !bf16_states)
    for (size_t i = 0; i < n; ++i)
      TORCH_CHECK(params[i].scalar_type() == at::kBFloat16, op, ": stochastic_rounding needs bfloat16 params, or "
                  "float32 params with bfloat16 states, but params[", i, "] has ", params[i].scalar_type());
}

// Everything an update op hands its backend, checked by check_update (the backend adds its own checks).
template <class Hyper, class Lr>
struct UpdateArgs {
  const char* op;
  TensorList params, grads;
  std::vector<NamedList> states;  // in the rule's state order
  TensorList products;            // NAdam's mu_products, else empty
  TensorList steps;
  Lr lr;
  double weight_decay;
  bool decoupled;
  int rule_variant;
  PipelineArgs pipeline;
  Hyper hyper;

  WeightDecay weight_decay_mode() const {
    return weight_decay == 0.0 ? WeightDecay::None : (decoupled ? WeightDecay::Decoupled : WeightDecay::L2);
  }
  // NOTE: [mixed precision in one pass], for a checked call with parameters
  DType state_dtype() const {  // 8-bit states are decoded into the compute type: the parameters' layout
    return states.empty() || pipeline.quantized() ? dtype_of(params[0]) : dtype_of(states[0].tensors[0]);
  }
  bool grad_fp32() const { return grads[0].scalar_type() != params[0].scalar_type(); }
  ParamStore param_store() const {
    return !pipeline.master_weights.empty() ? ParamStore::Master
           : pipeline.stochastic_rounding   ? ParamStore::Stochastic
                                            : ParamStore::Nearest;
  }
};

// Whether t's elements lie in memory in p's order (dimensions of size 1 aside; p dense).
inline bool same_memory_order(const Tensor& t, const Tensor& p) {
  for (int64_t d = 0; d < p.dim(); ++d)
    if (p.size(d) > 1 && t.stride(d) != p.stride(d)) return false;
  return true;
}

// 8-bit states: uint8 codes shaped like the parameters and laid out in their memory order (the kernels
// walk blocks of kQuantBlock codes in the parameter's order), a 0/1 per state list in state_signed, and per
// state and tensor a contiguous float32 absmax of one element per kQuantBlock.
inline void check_quantized_states(const char* op, TensorList params, const std::vector<NamedList>& states,
                                   const PipelineArgs& pipeline) {
  const size_t n = params.size();
  TORCH_CHECK(pipeline.state_signed->size() == states.size(), op, ": state_signed has ",
              pipeline.state_signed->size(), " entries but the call has ", states.size(), " state lists");
  for (int64_t s : *pipeline.state_signed)
    TORCH_CHECK(s == 0 || s == 1, op, ": state_signed entries must be 0 or 1, got ", s);
  TORCH_CHECK(pipeline.state_absmax.size() == states.size() * n, op, ": state_absmax has ",
              pipeline.state_absmax.size(), " tensors but ", states.size(), " state lists of ", n, " need ",
              states.size() * n);
  for (size_t k = 0; k < states.size(); ++k) {
    const NamedList& list = states[k];
    TORCH_CHECK(list.tensors.size() == n, op, ": ", list.name, " has ", list.tensors.size(), " tensors but params has ", n);
    for (size_t i = 0; i < n; ++i) {
      const Tensor& c = list.tensors[i];
      const Tensor& p = params[i];
      TORCH_CHECK(c.defined() && c.layout() == at::kStrided && c.scalar_type() == at::kByte && c.device() == p.device() &&
                      c.sizes() == p.sizes(),
                  op, ": ", list.name, "[", i, "] must hold uint8 codes of params[", i, "]'s shape and device (8-bit "
                  "states), got ", c.scalar_type(), " of shape ", c.sizes(), " on ", c.device());
      TORCH_CHECK(p.is_non_overlapping_and_dense() ? same_memory_order(c, p) : c.is_contiguous(), op, ": ", list.name,
                  "[", i, "] holds 8-bit codes laid out unlike params[", i, "] (strides ", c.strides(), " against ",
                  p.strides(), "): a block is ", kQuantBlock, " codes in the parameter's memory order, so encode "
                  "them again in its layout");
      const Tensor& m = pipeline.state_absmax[k * n + i];
      const int64_t blocks = (p.numel() + kQuantBlock - 1) / kQuantBlock;
      TORCH_CHECK(m.defined() && m.scalar_type() == at::kFloat && m.dim() == 1 && m.numel() == blocks &&
                      m.is_contiguous() && m.device() == p.device(),
                  op, ": state_absmax[", k * n + i, "] (", list.name, "[", i, "]) must be a contiguous float32 "
                  "tensor of ", blocks, " elements on ", p.device());
    }
  }
}

template <class Hyper, class Lr>
void check_update(const UpdateArgs<Hyper, Lr>& a, c10::DeviceType device_type, bool fp32_ok) {
  const bool quantized = a.pipeline.quantized();
  std::vector<NamedList> lists{{"grads", a.grads}};
  check_lists(a.op, device_type, {"params", a.params}, {}, lists, fp32_ok,
              quantized ? at::ArrayRef<NamedList>() : at::ArrayRef<NamedList>(a.states));
  if (quantized) check_quantized_states(a.op, a.params, a.states, a.pipeline);
  for (size_t k = 1; fp32_ok && !quantized && !a.params.empty() && k < a.states.size(); ++k)  // one state dtype
    TORCH_CHECK(a.states[k].tensors[0].scalar_type() == a.states[0].tensors[0].scalar_type(), a.op, ": ",
                a.states[k].name, " has dtype ", a.states[k].tensors[0].scalar_type(), " but ", a.states[0].name,
                " has ", a.states[0].tensors[0].scalar_type(), "; all states of one call share a dtype");
  check_owns_each_element(a.op, {"params", a.params});  // NOTE: [every element once]: each list written
  for (const NamedList& list : a.states) check_owns_each_element(a.op, list);
  if (a.pipeline.grad_scale) check_owns_each_element(a.op, {"grads", a.grads});  // NOTE: [GradScaler and .grad]
  if (!a.pipeline.master_weights.empty()) check_owns_each_element(a.op, {"master_weights", a.pipeline.master_weights});
  check_scalar_list(a.op, "state_steps", a.steps, a.params, /*float64_ok=*/true);
  if (!a.products.empty() || std::is_same<Hyper, NAdamHyper<double>>::value)
    check_scalar_list(a.op, "mu_products", a.products, a.params);
  if constexpr (std::is_same<Lr, double>::value) check_nonneg(a.op, "lr", a.lr);
  else check_scalar_tensor(a.op, "lr", a.lr, a.params);
  check_nonneg(a.op, "weight_decay", a.weight_decay);
  const bool bf16_states = !quantized && !a.states.empty() && !a.params.empty() &&
                           a.params[0].scalar_type() == at::kFloat &&
                           a.states[0].tensors[0].scalar_type() == at::kBFloat16;
  check_pipeline(a.op, a.pipeline, a.params, bf16_states);
}

// Gives each tensor of a call a flat pointer. A tensor that shares its parameter's dense layout is
// used in place; otherwise (a non-contiguous view, say) the kernel works on a dense copy that is
// written back afterwards (on CUDA both copies are ordered on the current stream).
class FlatViews {
 public:
  void* ptr(const Tensor& t, const Tensor& param, bool written) {
    if (param.is_non_overlapping_and_dense() && t.strides() == param.strides()) return t.data_ptr();
    Tensor dense = param.is_non_overlapping_and_dense() ? at::empty_like(param, t.options())  // t's dtype: fp32 grads
                                                        : at::empty(t.sizes(), t.options());
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

// ---- the update ops, once for every backend ----

template <class Backend, class Lr>
void persistent_sgd_op(TensorList params, TensorList grads, TensorList momentum_buffers, TensorList state_steps, Lr lr,
                       double decay, double dampening, double weight_decay, bool decoupled_weight_decay, bool nesterov,
                       bool buffer_starts_at_grad, GF_PIPELINE_PARAMS) {
  const char* op = "gradfused.persistent_sgd_";
  check_nonneg(op, "decay", decay);
  check_range(op, "dampening", dampening, 0.0, 1.0, true);
  TORCH_CHECK(!nesterov || (decay > 0 && dampening == 0), op, ": nesterov requires decay > 0 and dampening = 0");
  // No buffers at all: plain SGD (torch.optim.SGD with momentum 0), which keeps no state.
  const bool no_buffer = momentum_buffers.empty() && !params.empty();
  TORCH_CHECK(!no_buffer || decay == 0, op, ": momentum_buffers is empty, which only decay = 0 allows (got decay=",
              decay, ")");
  std::vector<NamedList> states;
  if (!no_buffer) states.push_back({"momentum_buffers", momentum_buffers});
  Backend::template update<Rule::PersistentSgd>(UpdateArgs<SgdHyper<double>, Lr>{
      op, params, grads, states, {}, state_steps, lr, weight_decay, decoupled_weight_decay,
      int(nesterov) | (no_buffer ? 2 : 0), GF_PIPELINE_ARGS, {decay, 1.0 - dampening, buffer_starts_at_grad}});
}

// The Adam family's hyperparameters, checked, with 1 - beta formed once in double.
inline AdamHyper<double> adam_hyper(const char* op, double beta1, double beta2, double eps) {
  check_range(op, "beta1", beta1, 0.0, 1.0, false);
  check_range(op, "beta2", beta2, 0.0, 1.0, false);
  check_nonneg(op, "eps", eps);
  return {beta1, beta2, eps, 1.0 - beta1, 1.0 - beta2};
}

template <class Backend, class Lr>
void adam_op(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
             TensorList max_exp_avg_sqs, TensorList state_steps, Lr lr, double beta1, double beta2, double eps,
             double weight_decay, bool decoupled_weight_decay, bool amsgrad, GF_PIPELINE_PARAMS) {
  const char* op = "gradfused.adam_";
  std::vector<NamedList> states{{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}};
  if (amsgrad) states.push_back({"max_exp_avg_sqs", max_exp_avg_sqs});
  Backend::template update<Rule::Adam>(UpdateArgs<AdamHyper<double>, Lr>{
      op, params, grads, states, {}, state_steps, lr, weight_decay, decoupled_weight_decay, int(amsgrad),
      GF_PIPELINE_ARGS, adam_hyper(op, beta1, beta2, eps)});
}

template <class Backend, class Lr>
void radam_op(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs, TensorList state_steps,
              Lr lr, double beta1, double beta2, double eps, double weight_decay, bool decoupled_weight_decay,
              GF_PIPELINE_PARAMS) {
  const char* op = "gradfused.radam_";
  Backend::template update<Rule::RAdam>(UpdateArgs<AdamHyper<double>, Lr>{
      op, params, grads, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}}, {}, state_steps, lr, weight_decay,
      decoupled_weight_decay, 0, GF_PIPELINE_ARGS, adam_hyper(op, beta1, beta2, eps)});
}

template <class Backend, class Lr>
void adema_op(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs,
              TensorList exp_avg_slows, TensorList state_steps, Lr lr, double beta1, double beta2, double beta3,
              double alpha, double eps, double weight_decay, std::optional<double> t_alpha_beta3, GF_PIPELINE_PARAMS) {
  const char* op = "gradfused.adema_";
  const AdamHyper<double> adam = adam_hyper(op, beta1, beta2, eps);
  check_range(op, "beta3", beta3, 0.0, 1.0, false);
  check_nonneg(op, "alpha", alpha);
  TORCH_CHECK(!t_alpha_beta3 || (std::isfinite(*t_alpha_beta3) && *t_alpha_beta3 > 0), op,
              ": invalid t_alpha_beta3=", t_alpha_beta3.value_or(0), " (expected None or a number > 0)");
  const bool slow = alpha != 0.0;  // alpha == 0 is AdamW: the slow EMA is neither read nor allocated
  std::vector<NamedList> states{{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}};
  if (slow) states.push_back({"exp_avg_slows", exp_avg_slows});
  Backend::template update<Rule::Adema>(UpdateArgs<AdemaHyper<double>, Lr>{
      op, params, grads, states, {}, state_steps, lr, weight_decay, true, int(slow), GF_PIPELINE_ARGS,
      {adam.beta1, adam.beta2, adam.eps, adam.one_minus_beta1, adam.one_minus_beta2, beta3, alpha,
       t_alpha_beta3.value_or(0.0)}});
}

template <class Backend, class Lr>
void nadam_op(TensorList params, TensorList grads, TensorList exp_avgs, TensorList exp_avg_sqs, TensorList mu_products,
              TensorList state_steps, Lr lr, double beta1, double beta2, double eps, double weight_decay,
              bool decoupled_weight_decay, double momentum_decay, GF_PIPELINE_PARAMS) {
  const char* op = "gradfused.nadam_";
  const AdamHyper<double> adam = adam_hyper(op, beta1, beta2, eps);
  check_nonneg(op, "momentum_decay", momentum_decay);
  Backend::template update<Rule::NAdam>(UpdateArgs<NAdamHyper<double>, Lr>{
      op, params, grads, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}}, mu_products, state_steps, lr,
      weight_decay, decoupled_weight_decay, 0, GF_PIPELINE_ARGS,
      {adam.beta1, adam.beta2, adam.eps, adam.one_minus_beta1, adam.one_minus_beta2, momentum_decay}});
}

template <class Backend, class Lr>
void rmsprop_op(TensorList params, TensorList grads, TensorList square_avgs, TensorList momentum_buffers,
                TensorList grad_avgs, TensorList state_steps, Lr lr, double alpha, double eps, double weight_decay,
                double momentum, bool centered, GF_PIPELINE_PARAMS) {
  const char* op = "gradfused.rmsprop_";
  check_range(op, "alpha", alpha, 0.0, 1.0, false);
  check_nonneg(op, "eps", eps);
  check_nonneg(op, "momentum", momentum);
  const bool with_momentum = momentum > 0.0;
  std::vector<NamedList> states{{"square_avgs", square_avgs}};
  if (with_momentum) states.push_back({"momentum_buffers", momentum_buffers});
  if (centered) states.push_back({"grad_avgs", grad_avgs});
  Backend::template update<Rule::Rmsprop>(UpdateArgs<RmspropHyper<double>, Lr>{
      op, params, grads, states, {}, state_steps, lr, weight_decay, false,
      int(with_momentum) | (int(centered) << 1), GF_PIPELINE_ARGS, {alpha, 1.0 - alpha, eps, momentum}});
}

template <class Backend, class Lr>
void gradient_ascent_op(TensorList params, TensorList grads, TensorList momentum_buffers, TensorList square_avgs,
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
  Backend::template update<Rule::GradientAscent>(UpdateArgs<GradientAscentHyper<double>, Lr>{
      op, params, grads, {{"momentum_buffers", momentum_buffers}, {"square_avgs", square_avgs}}, {}, state_steps, lr,
      0.0, false, int(nesterov) | (int(momentum_ema) << 1), GF_PIPELINE_ARGS,
      {momentum, 1.0 - momentum, beta, 1.0 - beta, eps, clip_value.value_or(INFINITY), lr_decay.value_or(1.0),
       double(warmup_steps)}});
}

inline void check_lookahead(const char* op, c10::DeviceType device_type, TensorList params, TensorList slow_weights,
                            double alpha) {
  check_lists(op, device_type, {"params", params}, {{"slow_weights", slow_weights}});
  check_owns_each_element(op, {"params", params});
  check_owns_each_element(op, {"slow_weights", slow_weights});
  check_range(op, "alpha", alpha, 0.0, 1.0, true);
}

inline void check_alignment(const char* op, c10::DeviceType device_type, TensorList grads, TensorList alignment_emas,
                            const Tensor& sums, double beta, const OptTensor& grad_scale, const OptTensor& found_inf) {
  const size_t n = grads.size();
  check_lists(op, device_type, {"grads", grads}, {{"alignment_emas", alignment_emas}});
  check_owns_each_element(op, {"alignment_emas", alignment_emas});
  check_range(op, "beta", beta, 0.0, 1.0, false);
  check_scalar_tensor(op, "grad_scale", grad_scale, grads);
  check_scalar_tensor(op, "found_inf", found_inf, grads);
  TORCH_CHECK((n == 0 || sums.device() == grads[0].device()) && sums.scalar_type() == at::kDouble && sums.dim() == 2 &&
                  size_t(sums.size(0)) == n && sums.size(1) == 3 && sums.is_contiguous(),
              op, ": sums must be a contiguous float64 tensor of shape [", n, ", 3] on the gradients' device");
}

// Registers the update ops of a backend, both overloads (NOTE: [lr as a float or a Tensor]).
#define GF_REGISTER_UPDATE_OPS(m, Backend)                                                         \
  m.impl("persistent_sgd_", &gf::ops::persistent_sgd_op<Backend, double>);                         \
  m.impl("persistent_sgd_.tensor_lr", &gf::ops::persistent_sgd_op<Backend, const at::Tensor&>);    \
  m.impl("adam_", &gf::ops::adam_op<Backend, double>);                                             \
  m.impl("adam_.tensor_lr", &gf::ops::adam_op<Backend, const at::Tensor&>);                        \
  m.impl("radam_", &gf::ops::radam_op<Backend, double>);                                           \
  m.impl("radam_.tensor_lr", &gf::ops::radam_op<Backend, const at::Tensor&>);                      \
  m.impl("adema_", &gf::ops::adema_op<Backend, double>);                                           \
  m.impl("adema_.tensor_lr", &gf::ops::adema_op<Backend, const at::Tensor&>);                      \
  m.impl("nadam_", &gf::ops::nadam_op<Backend, double>);                                           \
  m.impl("nadam_.tensor_lr", &gf::ops::nadam_op<Backend, const at::Tensor&>);                      \
  m.impl("rmsprop_", &gf::ops::rmsprop_op<Backend, double>);                                       \
  m.impl("rmsprop_.tensor_lr", &gf::ops::rmsprop_op<Backend, const at::Tensor&>);                  \
  m.impl("gradient_ascent_", &gf::ops::gradient_ascent_op<Backend, double>);                       \
  m.impl("gradient_ascent_.tensor_lr", &gf::ops::gradient_ascent_op<Backend, const at::Tensor&>)

// Every op that takes tensor lists, with each overload.
inline constexpr const char* kListOps[] = {
    "persistent_sgd_", "persistent_sgd_.tensor_lr", "adam_", "adam_.tensor_lr", "radam_", "radam_.tensor_lr",
    "adema_", "adema_.tensor_lr", "nadam_", "nadam_.tensor_lr", "rmsprop_", "rmsprop_.tensor_lr",
    "gradient_ascent_", "gradient_ascent_.tensor_lr", "alignment_sums_", "lookahead_"};

// A sparse tensor anywhere in a call dispatches to the Sparse* key instead of the backend: name it.
inline void reject_sparse(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
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
#define GF_REGISTER_SPARSE_REJECTION(m) \
  for (const char* name : gf::ops::kListOps) m.impl(name, torch::CppFunction::makeFromBoxedFunction<&gf::ops::reject_sparse>())

}  // namespace ops
}  // namespace gf
