// The torch-facing CPU implementations: validate a call, compute per-tensor scalars once, pack the
// tensors into slots and run the kernel over all chunks of all tensors in one parallel region. The ops
// themselves (their arguments and checks) are shared with CUDA in csrc/ops_shared.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "../common/pipeline.h"
#include "../ops_shared.h"
#include "kernel_api.h"

namespace gf {
namespace cpu {
namespace {

using namespace gf::ops;

// Elements per chunk, the unit of parallel work. Fixed (never derived from the thread count), so the
// alignment statistics are summed in the same order whatever the number of threads.
constexpr int64_t kChunkSize = int64_t(1) << 15;

double lr_value(double lr) { return lr; }
double lr_value(const Tensor& lr) { return lr.item<double>(); }

bool step_is_skipped(const OptTensor& found_inf) { return found_inf && found_inf->item<double>() != 0.0; }

double read_scalar(const Tensor& s) {
  return s.scalar_type() == at::kFloat ? double(*s.data_ptr<float>()) : *s.data_ptr<double>();
}
// Writes v in the tensor's dtype.
void write_scalar(const Tensor& s, double v) {
  if (s.scalar_type() == at::kFloat) *s.data_ptr<float>() = float(v);
  else *s.data_ptr<double>() = v;
}
void increment_steps(TensorList steps) {
  for (const Tensor& s : steps) {
    if (s.scalar_type() == at::kFloat) *s.data_ptr<float>() += 1.0f;
    else *s.data_ptr<double>() += 1.0;
  }
}

template <class F>
void parallel_over_chunks(int64_t num_chunks, const F& f) {
  if (num_chunks == 1) f(0, 1);
  else if (num_chunks > 1) at::parallel_for(0, num_chunks, 1, f);
}

// Per rule: the kernel of the table and the per-tensor scalars at step t.
template <Rule R> struct RuleOf;
template <> struct RuleOf<Rule::PersistentSgd> {
  static auto kernel() { return kernels().persistent_sgd; }
  static auto scalars(double t, const SgdHyper<double>& h) { return sgd_tensor_scalars(t, h); }
};
template <> struct RuleOf<Rule::Adam> {
  static auto kernel() { return kernels().adam; }
  static auto scalars(double t, const AdamHyper<double>& h) { return adam_tensor_scalars(t, h); }
};
template <> struct RuleOf<Rule::RAdam> {
  static auto kernel() { return kernels().radam; }
  static auto scalars(double t, const AdamHyper<double>& h) { return radam_tensor_scalars(t, h); }
};
template <> struct RuleOf<Rule::Adema> {
  static auto kernel() { return kernels().adema; }
  static auto scalars(double t, const AdemaHyper<double>& h) { return adema_tensor_scalars(t, h); }
};
template <> struct RuleOf<Rule::NAdam> {  // the scalars need mu_product: see CpuBackend::update
  static auto kernel() { return kernels().nadam; }
};
template <> struct RuleOf<Rule::Rmsprop> {
  static auto kernel() { return kernels().rmsprop; }
  static auto scalars(double, const RmspropHyper<double>&) { return NoTensorScalars<double>{}; }
};
template <> struct RuleOf<Rule::GradientAscent> {
  static auto kernel() { return kernels().gradient_ascent; }
  static auto scalars(double t, const GradientAscentHyper<double>& h) { return gradient_ascent_tensor_scalars(t, h); }
};

// Computes tensor i's per-tensor scalars at step t; NAdam's also advance its mu_product (written back by
// the caller only if the step runs).
template <Rule R, class Hyper, class Lr>
auto tensor_scalars_fn(const UpdateArgs<Hyper, Lr>& a, std::vector<double>& products) {
  if constexpr (R == Rule::NAdam) {
    products.resize(a.params.size());
    return [&a, &products](size_t i, double t) {
      const bool float32_state = a.products[i].scalar_type() == at::kFloat;
      products[i] = nadam_mu_product(t, read_scalar(a.products[i]), a.hyper, float32_state);
      const double stored = float32_state ? double(float(products[i])) : products[i];
      return nadam_tensor_scalars(t, stored, a.hyper);  // from the value as stored, as torch.optim.NAdam
    };
  } else {  // the tensors of a call mostly share t: its pow()s are computed once
    using Scalars = decltype(RuleOf<R>::scalars(0.0, a.hyper));
    return [&a, last_t = std::numeric_limits<double>::quiet_NaN(), last = Scalars{}](size_t, double t) mutable {
      if (t != last_t) {
        last = RuleOf<R>::scalars(t, a.hyper);
        last_t = t;
      }
      return last;
    };
  }
}

struct CpuBackend {
  template <Rule R, class Hyper, class Lr>
  static void update(const UpdateArgs<Hyper, Lr>& a) {
    check_update(a, c10::DeviceType::CPU, /*fp32_ok=*/true);  // NOTE: [mixed precision in one pass]
    const size_t n = a.params.size();
    if (n == 0 || step_is_skipped(a.pipeline.found_inf)) return;

    const PipelineArgs& pipeline = a.pipeline;
    const bool unscale = pipeline.grad_scale.has_value();  // NOTE: [GradScaler and .grad]
    const double grad_mul_base = pipeline.maximize ? -1.0 : 1.0;
    const double* align = pipeline.alignment_scales ? pipeline.alignment_scales->data_ptr<double>() : nullptr;
    const double noise_eta = pipeline.noise_eta(), noise_gamma = pipeline.noise_gamma();
    const double lr = lr_value(a.lr);
    std::vector<double> products;
    auto tensor_scalars = tensor_scalars_fn<R>(a, products);

    using Launch = UpdateLaunch<Hyper, decltype(tensor_scalars(size_t(0), 0.0))>;
    using SlotT = std::remove_cv_t<std::remove_pointer_t<decltype(Launch::slots)>>;
    static thread_local std::vector<SlotT> slots;  // reused: no allocation per step once warm
    slots.resize(n);
    FlatViews views;
    int64_t num_chunks = 0;
    for (size_t i = 0; i < n; ++i) {
      const Tensor& p = a.params[i];
      SlotT& slot = slots[i];
      const double t = read_scalar(a.steps[i]) + 1.0;
      slot.numel = p.numel();
      slot.first_chunk = num_chunks;
      num_chunks += (slot.numel + kChunkSize - 1) / kChunkSize;
      slot.grad_mul = grad_mul_base * (align ? align[i] : 1.0);
      slot.scalars = tensor_scalars(i, t);
      slot.random_key = {uint64_t(pipeline.seed), pipeline.param_index(i), uint32_t(uint64_t(t))};
      slot.noise_std = noise_eta == 0.0 ? 0.0 : std::sqrt(noise_eta / std::pow(1.0 + t, noise_gamma));
      if (slot.numel == 0) continue;
      slot.ptr[0] = views.ptr(p, p, true);
      slot.ptr[1] = views.ptr(a.grads[i], p, /*written=*/unscale);
      int j = 2;
      for (const NamedList& s : a.states) slot.ptr[j++] = views.ptr(s.tensors[i], p, true);
      for (size_t k = 0; pipeline.quantized() && k < a.states.size(); ++k)
        slot.absmax[k] = pipeline.state_absmax[k * n + i].data_ptr<float>();
      slot.ptr[kMasterList] = pipeline.master_weights.empty() ? nullptr : views.ptr(pipeline.master_weights[i], p, true);
    }

    Launch launch{};
    launch.slots = slots.data();
    launch.num_slots = int64_t(n);
    launch.chunk_size = kChunkSize;
    launch.dtype = dtype_of(a.params[0]);
    launch.state_dtype = a.state_dtype();
    launch.grad_fp32 = a.grad_fp32();
    launch.unscale = unscale;
    launch.quantized = pipeline.quantized();
    for (size_t k = 0; launch.quantized && k < a.states.size(); ++k) launch.state_signed[k] = (*pipeline.state_signed)[k] != 0;
    launch.grad_scale = unscale ? pipeline.grad_scale->item<double>() : 1.0;
    launch.store = a.param_store();
    launch.weight_decay_mode = a.weight_decay_mode();
    launch.rule_variant = a.rule_variant;
    launch.pipeline = {lr, a.weight_decay, 1.0 - lr * a.weight_decay};
    launch.random = pipeline.random();
    launch.hyper = a.hyper;
    const auto kernel = RuleOf<R>::kernel();
    parallel_over_chunks(num_chunks, [&](int64_t b, int64_t e) { kernel(launch, b, e); });
    views.write_back();
    increment_steps(a.steps);
    for (size_t i = 0; i < products.size(); ++i) write_scalar(a.products[i], products[i]);
  }
};

void lookahead_cpu(TensorList params, TensorList slow_weights, double alpha) {
  check_lookahead("gradfused.lookahead_", c10::DeviceType::CPU, params, slow_weights, alpha);
  const size_t n = params.size();
  if (n == 0) return;
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
  check_alignment("gradfused.alignment_sums_", c10::DeviceType::CPU, grads, alignment_emas, sums, beta, grad_scale,
                  found_inf);
  const size_t n = grads.size();
  if (n == 0 || step_is_skipped(found_inf)) return;

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
  GF_REGISTER_UPDATE_OPS(m, gf::cpu::CpuBackend);
  m.impl("alignment_sums_", &gf::cpu::alignment_sums_cpu);
  m.impl("lookahead_", &gf::cpu::lookahead_cpu);
}

TORCH_LIBRARY_IMPL(gradfused, SparseCPU, m) { GF_REGISTER_SPARSE_REJECTION(m); }
