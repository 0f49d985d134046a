// The torch-free boundary between the torch-facing CUDA binding (ops_cuda.cpp) and the kernels (*.cu),
// as kernel_api.h is for the CPU: plain data and functions only, so the kernels include CUDA headers and
// csrc/common/ alone.
#pragma once
#include <cstdint>
#include "../common/hyper.h"

typedef struct CUstream_st* cudaStream_t;

namespace gf {
namespace cuda {

// A scalar the kernel reads on the device (a tensor's data) or, with ptr == nullptr, a value from the
// host. NOTE: [no host synchronisation]: lr, grad_scale and found_inf may live on the GPU; the host never
// reads them.
struct DeviceScalar {
  const void* ptr = nullptr;
  bool is_double = false;  // else float32
  double value = 0.0;
};

// param, grad, up to three states (in the rule's order), and the fp32 master weight
constexpr int kMaxLists = 6;
constexpr int kMasterList = 5;
constexpr int kMaxStates = kMaxLists - 3;

// One tensor of an update call.
struct UpdateTensor {
  void* ptr[kMaxLists];   // unused lists are nullptr
  int64_t numel;
  void* step;             // state_steps[i]: t = *step + 1 during the update
  bool step_is_double;    // float64 (exact past 2^24: NOTE: [exact step counts]), else float32
  float* product;         // NAdam's mu_products[i], else nullptr
  uint32_t param_index;   // the Philox key of the random steps and of stochastic rounding
  int32_t index;          // position in the call: alignment_scales[index]
};


template <class Hyper>
struct UpdateCall {
  const UpdateTensor* tensors;
  int64_t num_tensors;
  DType param_dtype, state_dtype;
  bool grad_fp32;  // float32 gradients of 16-bit parameters (torch's param.grad_dtype), read as such
  bool unscale;    // divide the gradients by grad_scale and store them back (NOTE: [GradScaler and .grad])
  ParamStore store;
  WeightDecay weight_decay_mode;
  int rule_variant;
  DeviceScalar lr, grad_scale, found_inf;
  const double* alignment_scales;  // on the device, [num_tensors], or nullptr
  double weight_decay;
  bool maximize;
  RandomOptions random;
  double noise_eta, noise_gamma;
  Hyper hyper;
  int blocks_per_chunk;  // NOTE: [blocks per chunk]
  int min_blocks_8bit;   // NOTE: [8-bit occupancy variants]
  cudaStream_t stream;
  // 8-bit states (NOTE: [8-bit states on CUDA]): the state lists hold uint8 codes; state_absmax[k *
  // num_tensors + i] is state k's absmax per block of tensor i (on the device).
  bool quantized;
  float* const* state_absmax;
  bool state_signed[kMaxStates];  // which map each state takes
};

void launch_persistent_sgd(const UpdateCall<SgdHyper<double>>&);
void launch_adam(const UpdateCall<AdamHyper<double>>&);
void launch_radam(const UpdateCall<AdamHyper<double>>&);
void launch_adema(const UpdateCall<AdemaHyper<double>>&);
void launch_nadam(const UpdateCall<NAdamHyper<double>>&);
void launch_rmsprop(const UpdateCall<RmspropHyper<double>>&);
void launch_gradient_ascent(const UpdateCall<GradientAscentHyper<double>>&);

// GradientAlignment statistics: sums[3 i + k] (float64, on the device) receives tensor i's <g,a>, ‖g‖²,
// ‖a‖². `partials` is scratch of 3 doubles per chunk of the call (alignment_chunks_of each tensor),
// tensor after tensor: first_chunk is where a tensor's own chunks start.
struct AlignTensor {
  const void* grad;
  void* ema;
  int64_t numel;
  int64_t first_chunk;
  int32_t index;
};
struct AlignCall {
  const AlignTensor* tensors;
  int64_t num_tensors;
  DType dtype;
  DeviceScalar grad_scale, found_inf;
  double beta;
  double* partials;
  double* sums;
  cudaStream_t stream;
};
int64_t alignment_chunks_of(int64_t numel);
void launch_alignment_sums(const AlignCall&);

struct LookaheadTensor {
  void* param;
  void* slow;
  int64_t numel;
};
struct LookaheadCall {
  const LookaheadTensor* tensors;
  int64_t num_tensors;
  DType dtype;
  double alpha;
  cudaStream_t stream;
};
void launch_lookahead(const LookaheadCall&);

// "8.0;9.0+PTX"-like list of the architectures this build holds, for `gradfused info`.
const char* compiled_architectures();
// The CUDA version the installed driver supports (cudaDriverGetVersion: 12010 is 12.1), 0 without a driver.
int driver_version();

}  // namespace cuda
}  // namespace gf
