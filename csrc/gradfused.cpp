// The module stub and the single TORCH_LIBRARY block: every op's schema, once. Backends register
// their implementations with TORCH_LIBRARY_IMPL in csrc/cpu/ and csrc/cuda/.
#include <Python.h>
#include <torch/library.h>
#include <string>
#include "cpu/kernel_api.h"
#include "ops_shared.h"
#include "step_plan.h"

// Importing gradfused._C as a Python module runs the static registrations below.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "gradfused native ops (see torch.ops.gradfused)", -1,
                               nullptr};
  return PyModule_Create(&module);
}

namespace {

// The hyperparameters and pipeline options that every update op ends with (docs/algorithms.md §1).
// The random steps draw from (seed, param_indices[i], t, element) (csrc/common/philox.h). With
// `state_signed` (one 0/1 per state list) the states are 8-bit: uint8 codes laid out like the parameters,
// and `state_absmax` holds each one's float32 absmax per 256 elements, state list after state list
// (NOTE: [8-bit states in the kernel], csrc/cpu/kernels_impl.h).
constexpr const char* kPipelineArgs =
    "bool maximize=False, Tensor? grad_scale=None, Tensor? found_inf=None, Tensor? alignment_scales=None, "
    "float[]? grad_noise=None, float grad_dropout=0., float lr_dropout=0., int seed=0, int[]? param_indices=None, "
    "Tensor(z!)[]? master_weights=None, bool stochastic_rounding=False, Tensor(y!)[]? state_absmax=None, "
    "int[]? state_signed=None";

// NOTE: [lr as a float or a Tensor]
// As aten::_fused_adam_, each update op has two overloads: the default one takes `float lr`, and
// `.tensor_lr` takes `Tensor lr` (a scheduler may keep lr in a tensor, on the device, without a sync).
// Each also has `.plan` and `.plan_tensor_lr`, which take a StepPlan and a bucket in place of the lists
// (NOTE: [the step plan in C++]); they run the list op, whichever backend implements it.
struct NoBackend;  // the list ops' signatures do not depend on the backend
template <class Sig, class Name, bool kTensorLr>
struct PlanOp {
  static constexpr const char* name = Name::value();
  static constexpr const char* overload = kTensorLr ? "tensor_lr" : "";
  static constexpr auto call = &gf::ops::PlanOverload<Sig, PlanOp>::call;
};

template <class FloatSig, class TensorSig, class Name>
void def_update_op(torch::Library& m, const std::string& lists, const std::string& hyper) {
  const std::string name = Name::value() + std::string("gradfused::").size();
  for (const char* lr : {"float lr", "Tensor lr"}) {
    const bool tensor_lr = std::string(lr) == "Tensor lr";
    const std::string tail = std::string(lr) + ", " + hyper + ", " + kPipelineArgs + ") -> ()";
    m.def((name + (tensor_lr ? ".tensor_lr" : "") + "(" + lists + ", *, " + tail).c_str());
    const std::string plan = name + (tensor_lr ? ".plan_tensor_lr" : ".plan") +
                             "(__torch__.torch.classes.gradfused.StepPlan plan, int bucket, *, " + tail;
    if (tensor_lr) m.def(plan.c_str(), PlanOp<TensorSig, Name, true>::call);
    else m.def(plan.c_str(), PlanOp<FloatSig, Name, false>::call);
  }
}
// Defines update op `name` (adam_, say; implemented by gf::ops::adam_op) and its overloads.
#define GF_DEF_UPDATE_OP(m, name, lists, hyper)                                                    \
  do {                                                                                            \
    struct Name {                                                                                 \
      static constexpr const char* value() { return "gradfused::" #name; }                        \
    };                                                                                            \
    def_update_op<std::remove_pointer_t<decltype(&gf::ops::name##op<NoBackend, double>)>,           \
                  std::remove_pointer_t<decltype(&gf::ops::name##op<NoBackend, const at::Tensor&>)>, \
                  Name>(m, lists, hyper);                                                         \
  } while (0)

}  // namespace

TORCH_LIBRARY(gradfused, m) {
  m.class_<gf::ops::StepPlan>("StepPlan")  // NOTE: [the step plan in C++]
      .def(torch::init<std::vector<at::Tensor>>())
      .def("add_bucket", &gf::ops::StepPlan::add_bucket)
      .def("add_list", &gf::ops::StepPlan::add_list)
      .def("gather", &gf::ops::StepPlan::gather)
      .def("grads", &gf::ops::StepPlan::grads);
  // `grads` are written only with grad_scale: the unscaled gradients are stored back, as torch's fused
  // optimizers do (NOTE: [GradScaler and .grad]).
  // NOTE: [the op owns the step increment]
  // Every update op increments `state_steps` itself, after the update and only when found_inf is
  // unset, so a skipped AMP step leaves parameters, states and steps exactly as they were.
  // momentum_buffers may be [] when decay = 0 (plain SGD, no state). With buffer_starts_at_grad the first
  // step sets the buffer to the gradient, as torch.optim.SGD does; otherwise it starts at zero.
  GF_DEF_UPDATE_OP(m, persistent_sgd_,
                "Tensor(a!)[] params, Tensor(g!)[] grads, Tensor(b!)[] momentum_buffers, Tensor(c!)[] state_steps",
                "float decay, float dampening, float weight_decay, bool decoupled_weight_decay, bool nesterov, "
                "bool buffer_starts_at_grad=False");
  GF_DEF_UPDATE_OP(m, adam_,
                "Tensor(a!)[] params, Tensor(g!)[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
                "Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] state_steps",
                "float beta1, float beta2, float eps, float weight_decay, bool decoupled_weight_decay, bool amsgrad");
  GF_DEF_UPDATE_OP(m, radam_,
                "Tensor(a!)[] params, Tensor(g!)[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
                "Tensor(d!)[] state_steps",
                "float beta1, float beta2, float eps, float weight_decay, bool decoupled_weight_decay");
  GF_DEF_UPDATE_OP(m, adema_,
                "Tensor(a!)[] params, Tensor(g!)[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
                "Tensor(d!)[] exp_avg_slows, Tensor(e!)[] state_steps",
                "float beta1, float beta2, float beta3, float alpha, float eps, float weight_decay, "
                "float? t_alpha_beta3=None");
  // NAdam's running product of the momentum schedule is a one-element tensor per parameter, like the step.
  GF_DEF_UPDATE_OP(m, nadam_,
                "Tensor(a!)[] params, Tensor(g!)[] grads, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, "
                "Tensor(d!)[] mu_products, Tensor(e!)[] state_steps",
                "float beta1, float beta2, float eps, float weight_decay, bool decoupled_weight_decay, "
                "float momentum_decay");
  // RMSprop reads momentum_buffers only if momentum > 0 and grad_avgs only if centered (else pass []).
  GF_DEF_UPDATE_OP(m, rmsprop_,
                "Tensor(a!)[] params, Tensor(g!)[] grads, Tensor(b!)[] square_avgs, Tensor(c!)[] momentum_buffers, "
                "Tensor(d!)[] grad_avgs, Tensor(e!)[] state_steps",
                "float alpha, float eps, float weight_decay, float momentum, bool centered");
  GF_DEF_UPDATE_OP(m, gradient_ascent_,
                "Tensor(a!)[] params, Tensor(g!)[] grads, Tensor(b!)[] momentum_buffers, Tensor(c!)[] square_avgs, "
                "Tensor(d!)[] state_steps",
                "float momentum, float beta, float eps, bool momentum_ema, bool nesterov, float? clip_value=None, "
                "float? lr_decay=None, int warmup_steps=0");
  // Lookahead's slow-weight pass (docs/algorithms.md §4): slow = slow + alpha (param - slow); param = slow.
  m.def("lookahead_(Tensor(a!)[] params, Tensor(b!)[] slow_weights, *, float alpha) -> ()");
  // GradientAlignment statistics: updates each tensor's gradient EMA and writes its sums <g,a>, ‖g‖², ‖a‖²
  // into row i of `sums` (float64, [n, 3]), without touching the gradients. The scales are formed from the
  // sums in Python (gradfused/optim/alignment.py), after sharded tensors have summed them across ranks.
  m.def(
      "alignment_sums_(Tensor[] grads, Tensor(a!)[] alignment_emas, Tensor(b!) sums, *, float beta, "
      "Tensor? grad_scale=None, Tensor? found_inf=None) -> ()");
  // Block-wise 8-bit quantization (csrc/common/quantize.h, docs/low-bit-states.md): a state's uint8 codes,
  // laid out like it, and one float32 absmax per 256 elements in memory order; and back, in `dtype`.
  m.def("quantize_blockwise(Tensor x, bool is_signed) -> (Tensor codes, Tensor absmax)");
  m.def("dequantize_blockwise(Tensor codes, Tensor absmax, bool is_signed, ScalarType dtype=float) -> Tensor");
  // Build facts for `gradfused info`.
  m.def("cpu_isa() -> str", []() { return std::string(gf::cpu::kernels().isa); });
  // The CUDA engine, a library of its own (csrc/cuda/ops_cuda.cpp), adds cuda_architectures() and
  // cuda_driver_version() when it loads.
}

// NOTE: [no autograd kernel]
// The ops update in place outside autograd (the optimizers call them under no_grad), so the Autograd key
// falls through to the backend. Without this, parameters that require grad send every call through
// torch's boxed autograd fallback, which converts each list element to an IValue and back: about half
// of the host time of a step over 1000 small tensors. torch's fused optimizers bump no version counters
// either.
TORCH_LIBRARY_IMPL(gradfused, Autograd, m) {
  for (const char* name : gf::ops::kListOps) m.impl(name, torch::CppFunction::makeFallthrough());
}
