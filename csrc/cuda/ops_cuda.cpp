// The torch-facing CUDA binding: checks a call (csrc/ops_shared.h), packs each tensor's pointers, and
// hands the launch to the torch-free kernels (launch_api.h) on the current stream, under a device guard.
// NOTE: [no host synchronisation]: nothing here reads a CUDA tensor's value on the host. lr,
// grad_scale, found_inf, the steps and the alignment scales reach the kernels as device pointers.
#include <Python.h>
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "../ops_shared.h"
#include "launch_api.h"

namespace gf {
namespace cuda {
namespace {

using namespace gf::ops;

bool capturing() { return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None; }

// A host value, or a device pointer to a float32/float64 scalar (other dtypes are converted on the
// device and kept alive in `keep`). A CPU tensor is read on the host, which costs no device sync, but
// a CUDA graph would replay the value read at capture: refused while capturing.
DeviceScalar device_scalar(const char* op, const char* name, const OptTensor& t, double absent,
                           std::vector<Tensor>& keep) {
  if (!t) return {nullptr, false, absent};
  if (t->device().is_cpu()) {
    TORCH_CHECK(!capturing(), op, ": ", name, " is a CPU tensor, read on the host at each call; a CUDA graph "
                "would replay the value it had at capture. Put ", name, " on the GPU to capture the step.");
    return {nullptr, false, t->item<double>()};
  }
  Tensor s = *t;
  if (s.scalar_type() != at::kFloat && s.scalar_type() != at::kDouble) s = s.to(at::kFloat);
  keep.push_back(s);
  return {s.data_ptr(), s.scalar_type() == at::kDouble, 0.0};
}
DeviceScalar device_scalar(const char*, const char*, double v, double, std::vector<Tensor>&) {
  return {nullptr, false, v};
}

// NOTE: [blocks per chunk]; read at each call so that one process can compare the settings.
int blocks_per_chunk() {
  const char* v = std::getenv("GRADFUSED_CUDA_BLOCKS_PER_CHUNK");
  if (v == nullptr || *v == 0) return 4;
  const int n = std::atoi(v);
  TORCH_CHECK(n == 1 || n == 2 || n == 4 || n == 8, "GRADFUSED_CUDA_BLOCKS_PER_CHUNK must be 1, 2, 4 or 8, got '", v,
              "'");
  return n;
}

// NOTE: [8-bit occupancy variants]; read at each call so that one process can compare the settings.
int min_blocks_8bit() {
  const char* v = std::getenv("GRADFUSED_CUDA_8BIT_MIN_BLOCKS");
  if (v == nullptr || *v == 0) return 1;
  const int n = std::atoi(v);
  TORCH_CHECK(n == 1 || n == 2, "GRADFUSED_CUDA_8BIT_MIN_BLOCKS must be 1 or 2, got '", v, "'");
  return n;
}

template <Rule R> struct LaunchOf;
template <> struct LaunchOf<Rule::PersistentSgd> { static constexpr auto fn = &launch_persistent_sgd; };
template <> struct LaunchOf<Rule::Adam> { static constexpr auto fn = &launch_adam; };
template <> struct LaunchOf<Rule::RAdam> { static constexpr auto fn = &launch_radam; };
template <> struct LaunchOf<Rule::Adema> { static constexpr auto fn = &launch_adema; };
template <> struct LaunchOf<Rule::NAdam> { static constexpr auto fn = &launch_nadam; };
template <> struct LaunchOf<Rule::Rmsprop> { static constexpr auto fn = &launch_rmsprop; };
template <> struct LaunchOf<Rule::GradientAscent> { static constexpr auto fn = &launch_gradient_ascent; };

struct CudaBackend {
  template <Rule R, class Hyper, class Lr>
  static void update(const UpdateArgs<Hyper, Lr>& a) {
    check_update(a, c10::DeviceType::CUDA, /*fp32_ok=*/true);
    const size_t n = a.params.size();
    if (n == 0) return;
    const PipelineArgs& pipeline = a.pipeline;
    const c10::cuda::CUDAGuard guard(a.params[0].device());
    std::vector<Tensor> keep;
    FlatViews views;
    std::vector<UpdateTensor> tensors(n);
    std::vector<float*> absmax;
    for (const Tensor& m : pipeline.state_absmax) absmax.push_back(m.data_ptr<float>());
    for (size_t i = 0; i < n; ++i) {
      const Tensor& p = a.params[i];
      UpdateTensor& u = tensors[i];
      std::fill(std::begin(u.ptr), std::end(u.ptr), nullptr);
      u.numel = p.numel();
      u.step = a.steps[i].data_ptr();
      u.step_is_double = a.steps[i].scalar_type() == at::kDouble;
      u.product = a.products.empty() ? nullptr : a.products[i].template data_ptr<float>();
      u.param_index = pipeline.param_index(i);
      u.index = int32_t(i);
      if (u.numel == 0) continue;
      u.ptr[0] = views.ptr(p, p, true);
      u.ptr[1] = views.ptr(a.grads[i], p, /*written=*/pipeline.grad_scale.has_value());
      int j = 2;
      for (const NamedList& s : a.states) u.ptr[j++] = views.ptr(s.tensors[i], p, true);
      if (!pipeline.master_weights.empty()) u.ptr[kMasterList] = views.ptr(pipeline.master_weights[i], p, true);
    }
    UpdateCall<Hyper> call{};
    call.tensors = tensors.data();
    call.num_tensors = int64_t(n);
    call.param_dtype = dtype_of(a.params[0]);
    call.grad_fp32 = a.grad_fp32();
    call.unscale = pipeline.grad_scale.has_value();
    call.state_dtype = a.state_dtype();
    call.store = a.param_store();
    call.weight_decay_mode = a.weight_decay_mode();
    call.rule_variant = a.rule_variant;
    call.lr = device_scalar(a.op, "lr", a.lr, 0.0, keep);
    call.grad_scale = device_scalar(a.op, "grad_scale", pipeline.grad_scale, 1.0, keep);
    call.found_inf = device_scalar(a.op, "found_inf", pipeline.found_inf, 0.0, keep);
    call.alignment_scales = pipeline.alignment_scales ? pipeline.alignment_scales->template data_ptr<double>() : nullptr;
    call.weight_decay = a.weight_decay;
    call.maximize = pipeline.maximize;
    call.random = pipeline.random();
    call.noise_eta = pipeline.noise_eta();
    call.noise_gamma = pipeline.noise_gamma();
    call.hyper = a.hyper;
    call.blocks_per_chunk = blocks_per_chunk();
    call.min_blocks_8bit = min_blocks_8bit();
    call.stream = at::cuda::getCurrentCUDAStream().stream();
    call.quantized = pipeline.quantized();
    call.state_absmax = absmax.data();
    for (size_t k = 0; pipeline.quantized() && k < a.states.size(); ++k) call.state_signed[k] = (*pipeline.state_signed)[k] != 0;
    LaunchOf<R>::fn(call);
    views.write_back();
  }
};

void lookahead_cuda(TensorList params, TensorList slow_weights, double alpha) {
  check_lookahead("gradfused.lookahead_", c10::DeviceType::CUDA, params, slow_weights, alpha);
  if (params.empty()) return;
  const c10::cuda::CUDAGuard guard(params[0].device());
  FlatViews views;
  std::vector<LookaheadTensor> tensors(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& p = params[i];
    tensors[i] = {nullptr, nullptr, p.numel()};
    if (p.numel() == 0) continue;
    tensors[i].param = views.ptr(p, p, true);
    tensors[i].slow = views.ptr(slow_weights[i], p, true);
  }
  launch_lookahead({tensors.data(), int64_t(tensors.size()), dtype_of(params[0]), alpha,
                    at::cuda::getCurrentCUDAStream().stream()});
  views.write_back();
}

void alignment_sums_cuda(TensorList grads, TensorList alignment_emas, const Tensor& sums, double beta,
                         const OptTensor& grad_scale, const OptTensor& found_inf) {
  const char* op = "gradfused.alignment_sums_";
  check_alignment(op, c10::DeviceType::CUDA, grads, alignment_emas, sums, beta, grad_scale, found_inf);
  const size_t n = grads.size();
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(grads[0].device());
  std::vector<Tensor> keep;
  FlatViews views;
  std::vector<AlignTensor> tensors(n);
  int64_t num_chunks = 0;
  for (size_t i = 0; i < n; ++i) {
    const Tensor& g = grads[i];
    tensors[i] = {nullptr, nullptr, g.numel(), num_chunks, int32_t(i)};
    num_chunks += alignment_chunks_of(g.numel());
    if (g.numel() == 0) continue;
    tensors[i].grad = views.ptr(g, g, false);
    tensors[i].ema = views.ptr(alignment_emas[i], g, true);
  }
  // NOTE: [deterministic alignment sums]: one slot per chunk, each written once, no atomics.
  const Tensor partials = at::empty({std::max<int64_t>(num_chunks, 1) * 3}, sums.options());
  AlignCall call{};
  call.tensors = tensors.data();
  call.num_tensors = int64_t(n);
  call.dtype = dtype_of(grads[0]);
  call.grad_scale = device_scalar(op, "grad_scale", grad_scale, 1.0, keep);
  call.found_inf = device_scalar(op, "found_inf", found_inf, 0.0, keep);
  call.beta = beta;
  call.partials = partials.data_ptr<double>();
  call.sums = sums.data_ptr<double>();
  call.stream = at::cuda::getCurrentCUDAStream().stream();
  launch_alignment_sums(call);
  views.write_back();
}

}  // namespace
}  // namespace cuda
}  // namespace gf

// NOTE: [two engines]
// The CUDA engine is a library of its own (gradfused._C_cuda), loaded after the CPU one (gradfused._C,
// which holds every schema): a CUDA build that fails, or cannot load, leaves the CPU kernels working.
extern "C" PyObject* PyInit__C_cuda(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C_cuda", "gradfused CUDA kernels (see torch.ops.gradfused)",
                               -1, nullptr};
  return PyModule_Create(&module);
}

// Build facts for `gradfused info` and for the check that the driver can run the kernels.
TORCH_LIBRARY_FRAGMENT(gradfused, m) {
  // The CUDA architectures compiled in, e.g. "800,900".
  m.def("cuda_architectures() -> str", []() { return std::string(gf::cuda::compiled_architectures()); });
  m.def("cuda_driver_version() -> int", []() { return int64_t(gf::cuda::driver_version()); });
}

TORCH_LIBRARY_IMPL(gradfused, CUDA, m) {
  GF_REGISTER_UPDATE_OPS(m, gf::cuda::CudaBackend);
  m.impl("alignment_sums_", &gf::cuda::alignment_sums_cuda);
  m.impl("lookahead_", &gf::cuda::lookahead_cuda);
}

TORCH_LIBRARY_IMPL(gradfused, SparseCUDA, m) { GF_REGISTER_SPARSE_REJECTION(m); }
