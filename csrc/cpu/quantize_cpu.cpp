// The block-wise quantization ops on the CPU (csrc/common/quantize.h over whole tensors): a state's codes
// and absmax from its values and back, for checkpoints that change format and for the tests that hold
// the C++ maps to the reference's (gradfused/quantization.py), bit for bit.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../common/quantize.h"

namespace gf {
namespace cpu {
namespace {

// x's elements lie in memory order over [data_ptr, data_ptr + numel) when x is dense; else a contiguous
// copy serves (logical order).
at::Tensor dense(const at::Tensor& x) { return x.is_non_overlapping_and_dense() ? x : x.contiguous(); }

std::tuple<at::Tensor, at::Tensor> quantize_blockwise_cpu(const at::Tensor& x, bool is_signed) {
  TORCH_CHECK(x.device().is_cpu() && x.layout() == at::kStrided && at::isFloatingType(x.scalar_type()) &&
                  !x.is_complex(),
              "gradfused.quantize_blockwise: x must be a dense floating-point CPU tensor, got ", x.scalar_type(),
              " on ", x.device());
  const bool wide = x.scalar_type() == at::kDouble;
  const at::Tensor values = dense(x).to(wide ? at::kDouble : at::kFloat);
  const int64_t n = values.numel(), blocks = (n + kQuantBlock - 1) / kQuantBlock;
  at::Tensor codes = at::empty_like(values, values.options().dtype(at::kByte));
  at::Tensor absmax = at::empty({blocks}, x.options().dtype(at::kFloat));
  uint8_t* out = codes.data_ptr<uint8_t>();
  float* scales = absmax.data_ptr<float>();
  auto run = [&](auto* in) {
    at::parallel_for(0, blocks, 64, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t begin = b * kQuantBlock;
        scales[b] = encode_block(in + begin, int(std::min<int64_t>(kQuantBlock, n - begin)), is_signed, out + begin);
      }
    });
  };
  if (wide) run(values.data_ptr<double>());
  else run(values.data_ptr<float>());
  return {codes, absmax};
}

at::Tensor dequantize_blockwise_cpu(const at::Tensor& codes, const at::Tensor& absmax, bool is_signed,
                                    at::ScalarType dtype) {
  const char* op = "gradfused.dequantize_blockwise";
  TORCH_CHECK(codes.device().is_cpu() && codes.scalar_type() == at::kByte, op, ": codes must be a uint8 CPU tensor");
  const int64_t n = codes.numel(), blocks = (n + kQuantBlock - 1) / kQuantBlock;
  TORCH_CHECK(absmax.device().is_cpu() && absmax.scalar_type() == at::kFloat && absmax.dim() == 1 &&
                  absmax.numel() == blocks,
              op, ": absmax must be a float32 CPU tensor of ", blocks, " elements (one per ", kQuantBlock,
              " codes), got ", absmax.scalar_type(), " of shape ", absmax.sizes());
  TORCH_CHECK(at::isFloatingType(dtype), op, ": dtype must be a floating-point dtype, got ", dtype);
  const bool wide = dtype == at::kDouble;
  const at::Tensor in = dense(codes);
  at::Tensor values = at::empty_like(in, in.options().dtype(wide ? at::kDouble : at::kFloat));
  const uint8_t* c = in.data_ptr<uint8_t>();
  const at::Tensor scales = absmax.contiguous();
  const float* s = scales.data_ptr<float>();
  auto run = [&](auto* out) {
    using S = std::remove_pointer_t<decltype(out)>;
    at::parallel_for(0, blocks, 64, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t begin = b * kQuantBlock;
        decode_block(c + begin, int(std::min<int64_t>(kQuantBlock, n - begin)), S(s[b]), is_signed,
                     out + begin);
      }
    });
  };
  if (wide) run(values.data_ptr<double>());
  else run(values.data_ptr<float>());
  return values.to(dtype);
}

}  // namespace
}  // namespace cpu
}  // namespace gf

TORCH_LIBRARY_IMPL(gradfused, CPU, m) {
  m.impl("quantize_blockwise", &gf::cpu::quantize_blockwise_cpu);
  m.impl("dequantize_blockwise", &gf::cpu::dequantize_blockwise_cpu);
}
