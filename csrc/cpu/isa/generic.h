// The prologue of a kernel unit for any CPU: the baseline instruction set of the target (SSE2 on x86-64)
// (NOTE: [kernel units]).
#pragma once
#define GF_ISA generic
#define GF_VEC_BYTES 16
#include "../kernels_impl.h"
