// The torch-free boundary between the torch-facing CPU ops (ops_cpu.cpp) and the kernels, which are
// compiled once per instruction set (NOTE: [one source, several instruction sets]). Only plain data
// and function pointers cross it.
#pragma once
#include <cstdint>
#include "../common/hyper.h"

namespace gf {
namespace cpu {

// param, grad, up to three state tensors (in the order of the rule's state array) and the fp32 master
// weight
constexpr int kMaxLists = 6;
constexpr int kMasterList = 5;

// One tensor of a call, with its per-tensor scalars (computed once, in double).
template <class TensorScalars>
struct Slot {
  void* ptr[kMaxLists];  // 8-bit states: the states' entries point to uint8 codes
  float* absmax[kMaxLists - 3];  // 8-bit states: each state's absmax per block, else unused
  int64_t numel;
  int64_t first_chunk;  // index of this tensor's first chunk among all chunks of the call
  double grad_mul;      // docs/algorithms.md §1 steps 2-3 folded: ±s_T
  TensorScalars scalars;
  RandomKey random_key;  // (seed, parameter index, t) of the random steps
  double noise_std;      // σt = sqrt(η / (1 + t)^γ)
};

template <class Hyper, class TensorScalars>
struct UpdateLaunch {
  const Slot<TensorScalars>* slots;
  int64_t num_slots;
  int64_t chunk_size;
  DType dtype;        // the parameters'
  DType state_dtype;  // the parameters', or Float32 for 16-bit parameters (NOTE: [mixed precision in one pass])
  bool grad_fp32;     // float32 gradients of 16-bit parameters
  bool quantized;     // 8-bit states (NOTE: [8-bit states in the kernel])
  bool state_signed[kMaxLists - 3];  // which map each state takes
  bool unscale;       // divide the gradients by grad_scale and store them back (NOTE: [GradScaler and .grad])
  double grad_scale;
  ParamStore store;
  WeightDecay weight_decay_mode;
  int rule_variant;  // the bits of the rule's compile-time variants (rules.h)
  PipelineScalars<double> pipeline;
  RandomOptions random;
  Hyper hyper;
};

using SgdLaunch = UpdateLaunch<SgdHyper<double>, SgdTensorScalars<double>>;
using AdamLaunch = UpdateLaunch<AdamHyper<double>, AdamTensorScalars<double>>;
using RAdamLaunch = UpdateLaunch<AdamHyper<double>, RAdamTensorScalars<double>>;
using AdemaLaunch = UpdateLaunch<AdemaHyper<double>, AdemaTensorScalars<double>>;
using NAdamLaunch = UpdateLaunch<NAdamHyper<double>, NAdamTensorScalars<double>>;
using RmspropLaunch = UpdateLaunch<RmspropHyper<double>, NoTensorScalars<double>>;
using GradientAscentLaunch = UpdateLaunch<GradientAscentHyper<double>, GradientAscentTensorScalars<double>>;

struct AlignSlot {
  const void* grad;
  void* ema;
  int64_t numel;
  int64_t first_chunk;
};

struct AlignLaunch {
  const AlignSlot* slots;
  int64_t num_slots;
  int64_t chunk_size;
  DType dtype;
  bool unscale;
  AlignHyper<double> hyper;
  double* partials;  // 3 per chunk: <g,a>, ‖g‖², ‖a‖²; summed per tensor in chunk order (deterministic)
};

// Lookahead's slow-weight pass: φ = φ + α (θ - φ), then θ = φ.
struct LookaheadSlot {
  void* param;
  void* slow;
  int64_t numel;
  int64_t first_chunk;
};

struct LookaheadLaunch {
  const LookaheadSlot* slots;
  int64_t num_slots;
  int64_t chunk_size;
  DType dtype;
  double alpha;
};

// Every kernel processes the chunks [chunk_begin, chunk_end) of its launch.
struct KernelTable {
  const char* isa;
  void (*persistent_sgd)(const SgdLaunch&, int64_t chunk_begin, int64_t chunk_end);
  void (*adam)(const AdamLaunch&, int64_t, int64_t);
  void (*radam)(const RAdamLaunch&, int64_t, int64_t);
  void (*adema)(const AdemaLaunch&, int64_t, int64_t);
  void (*nadam)(const NAdamLaunch&, int64_t, int64_t);
  void (*rmsprop)(const RmspropLaunch&, int64_t, int64_t);
  void (*gradient_ascent)(const GradientAscentLaunch&, int64_t, int64_t);
  void (*alignment_stats)(const AlignLaunch&, int64_t, int64_t);
  void (*lookahead)(const LookaheadLaunch&, int64_t, int64_t);
};

// NOTE: [kernel units]
// Each instruction set's kernels are compiled in several units (csrc/cpu/kernels/<rules>_<isa>.cpp), a
// few rules each, so that a many-core build compiles them in parallel and a change to one rule rebuilds
// its units only. A unit includes its instruction set's prologue (isa/<isa>.h) and its list of rules
// (kernels/<rules>.h, one list for all three instruction sets), whose GF_CPU_KERNEL lines (kernels_impl.h)
// define the entries in namespace gf::cpu::isa_<isa>; cpu_features.cpp gathers them into the tables.
#define GF_CPU_KERNEL_ENTRIES(X)                                                                   \
  X(persistent_sgd, SgdLaunch) X(adam, AdamLaunch) X(radam, RAdamLaunch) X(adema, AdemaLaunch)      \
  X(nadam, NAdamLaunch) X(rmsprop, RmspropLaunch) X(gradient_ascent, GradientAscentLaunch)           \
  X(alignment_stats, AlignLaunch) X(lookahead, LookaheadLaunch)
#define GF_DECLARE_CPU_KERNEL(entry, Launch) void entry(const Launch&, int64_t chunk_begin, int64_t chunk_end);
namespace isa_generic { GF_CPU_KERNEL_ENTRIES(GF_DECLARE_CPU_KERNEL) }
namespace isa_avx2 { GF_CPU_KERNEL_ENTRIES(GF_DECLARE_CPU_KERNEL) }  // defined on x86-64, when built (NOTE: [instruction sets built])
namespace isa_avx512 { GF_CPU_KERNEL_ENTRIES(GF_DECLARE_CPU_KERNEL) }  // likewise

template <class F> struct LaunchOf;
template <class L> struct LaunchOf<void (*)(const L&, int64_t, int64_t)> { using type = L; };

extern const KernelTable kGenericKernels;
extern const KernelTable kAvx2Kernels;    // nullptr isa when not built (NOTE: [instruction sets built])
extern const KernelTable kAvx512Kernels;  // likewise

// The best table this CPU supports, chosen once; GRADFUSED_CPU_ISA=generic|avx2|avx512 caps it.
const KernelTable& kernels();

}  // namespace cpu
}  // namespace gf
