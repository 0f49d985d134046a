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
using clk = std::chrono::steady_clock;
#ifdef FORMAT1
#define SGN(s) quant_map(s)
#else
#define SGN(s) s
#endif
int main() {
  std::mt19937 rng(1); std::normal_distribution<float> nd;
  const int N = 16384, reps = 2000;
  std::vector<float> m(N), v(N), bm(256), bv(256);
  std::vector<uint8_t> cm(N), cv(N);
  for (int i = 0; i < N; ++i) { m[i] = nd(rng) * 1e-3f; v[i] = std::abs(nd(rng)) * 1e-6f; }
  float am[64], av[64];
  auto time = [&](const char* name, auto&& f) {
    f(); auto t = clk::now(); for (int r = 0; r < reps; ++r) f();
    double ns = std::chrono::duration<double, std::nano>(clk::now() - t).count() / reps / N;
    std::printf("%-28s %.3f ns/element\n", name, ns);
  };
  volatile float sink = 0;
  for (int rep = 0; rep < 3; ++rep) {
  time("absmax+encode 2 states", [&] { for (int b = 0; b < N/256; ++b) { am[b] = encode_state_block(&m[b*256], 256, true, &cm[b*256]); av[b] = encode_state_block(&v[b*256], 256, false, &cv[b*256]); } });
  time("decode 2 states", [&] { for (int b = 0; b < N/256; ++b) { decode_state_block(&cm[b*256], 256, am[b], SGN(true), bm.data()); decode_state_block(&cv[b*256], 256, av[b], SGN(false), bv.data()); sink = sink + bm[3] + bv[5]; } });
  }
}
