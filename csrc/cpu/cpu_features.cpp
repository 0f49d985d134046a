// Each instruction set's kernel table, gathered from its kernel units (NOTE: [kernel units]), and the one
// this CPU runs, picked once (NOTE: [one source, several instruction sets]).
#include <cstdlib>
#include <cstring>
#include "kernel_api.h"

namespace gf {
namespace cpu {

#define GF_GENERIC_ENTRY(entry, Launch) &isa_generic::entry,
#define GF_AVX2_ENTRY(entry, Launch) &isa_avx2::entry,
#define GF_AVX512_ENTRY(entry, Launch) &isa_avx512::entry,
// An instruction set not built (not x86-64, or left out by GRADFUSED_CPU_ISAS: NOTE: [instruction sets
// built]) has an empty table, which choose() passes over.
const KernelTable kGenericKernels = {"generic", GF_CPU_KERNEL_ENTRIES(GF_GENERIC_ENTRY)};
#if defined(__x86_64__) && !defined(GF_WITHOUT_AVX2)
const KernelTable kAvx2Kernels = {"avx2", GF_CPU_KERNEL_ENTRIES(GF_AVX2_ENTRY)};
#else
const KernelTable kAvx2Kernels = {};
#endif
#if defined(__x86_64__) && !defined(GF_WITHOUT_AVX512)
const KernelTable kAvx512Kernels = {"avx512", GF_CPU_KERNEL_ENTRIES(GF_AVX512_ENTRY)};
#else
const KernelTable kAvx512Kernels = {};
#endif

namespace {

bool cpu_has_avx2() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

bool cpu_has_avx512() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#else
  return false;
#endif
}

const KernelTable& choose() {
  const char* cap = std::getenv("GRADFUSED_CPU_ISA");  // an upper bound, for testing the lower paths
  const bool allow_avx512 = !cap || std::strcmp(cap, "avx512") == 0;
  const bool allow_avx2 = allow_avx512 || std::strcmp(cap, "avx2") == 0;
  if (allow_avx512 && kAvx512Kernels.isa && cpu_has_avx512()) return kAvx512Kernels;
  if (allow_avx2 && kAvx2Kernels.isa && cpu_has_avx2()) return kAvx2Kernels;
  return kGenericKernels;
}

}  // namespace

const KernelTable& kernels() {
  static const KernelTable& table = choose();
  return table;
}

}  // namespace cpu
}  // namespace gf
