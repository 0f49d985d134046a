#define GF_VEC_BYTES 32
#define GF_ISA avx2
#include <chrono>
#include <cstdio>
#include <vector>
#include <random>
#include "cpu/simd.h"
#include "cpu/quantize_simd.h"
using namespace gf;
using namespace gf::avx2::kernels;
using gf::avx2::vfloat;
using clk = std::chrono::steady_clock;

int main() {
  const int N = 16384, reps = 2000;  // L1/L2 resident
  std::vector<float> m(N), v(N), g(N), p(N), bm(256), bv(256);
  std::vector<uint8_t> cm(N), cv(N);
  std::mt19937 rng(0); std::normal_distribution<float> nd;
  for (int i = 0; i < N; ++i) { m[i] = nd(rng) * 1e-3f; v[i] = std::abs(nd(rng)) * 1e-6f; g[i] = nd(rng); p[i] = nd(rng); }
  float am[64], av[64];
  for (int b = 0; b < N / 256; ++b) { am[b] = encode_state_block(&m[b*256], 256, true, &cm[b*256]); av[b] = encode_state_block(&v[b*256], 256, false, &cv[b*256]); }
  auto time = [&](const char* name, auto&& f) {
    f(); auto t = clk::now(); for (int r = 0; r < reps; ++r) f();
    double ns = std::chrono::duration<double, std::nano>(clk::now() - t).count() / reps / N;
    std::printf("%-28s %.3f ns/element\n", name, ns);
  };
  volatile float sink = 0;
  time("decode 2 states", [&] { for (int b = 0; b < N/256; ++b) { decode_state_block(&cm[b*256], 256, am[b], quant_map(true), bm.data()); decode_state_block(&cv[b*256], 256, av[b], quant_map(false), bv.data()); sink = sink + bm[3] + bv[5]; } });
  time("absmax 2 states", [&] { for (int b = 0; b < N/256; ++b) { sink = sink + block_absmax_simd(&m[b*256], 256) + block_absmax_simd(&v[b*256], 256); } });
  time("absmax+encode(div) 2 states", [&] { for (int b = 0; b < N/256; ++b) { am[b] = encode_state_block(&m[b*256], 256, true, &cm[b*256]); av[b] = encode_state_block(&v[b*256], 256, false, &cv[b*256]); } });
  time("adam math (div+sqrt)", [&] {
    const vfloat b1 = vfloat{} + 0.9f, b2 = vfloat{} + 0.999f, lr = vfloat{} + 1e-3f, eps = vfloat{} + 1e-8f, c1 = vfloat{} + 0.1f, c2 = vfloat{} + 0.001f;
    for (int i = 0; i < N; i += 8) {
      vfloat gv = load(&g[i]), mv = load(&m[i]), vv = load(&v[i]), pv = load(&p[i]);
      mv = b1 * mv + (1.0f - b1) * gv; vv = b2 * vv + (1.0f - b2) * gv * gv;
      pv = pv * (1.0f - lr * 0.01f) - lr * (mv / c1) / (sqrt(vv / c2) + eps);
      store(&m[i], mv); store(&v[i], vv); store(&p[i], pv);
    } });
  return 0;
}

