// Element math for scalars. The CPU engine adds overloads for its SIMD vector types (csrc/cpu/simd.h)
// before it includes rules.h, so the same rule source serves float, double and vectors.
#pragma once
#include <cmath>
#include "config.h"

GF_CODE_BEGIN

GF_HD float sqrt(float x) { return ::sqrtf(x); }
GF_HD double sqrt(double x) { return ::sqrt(x); }
GF_HD float max(float a, float b) { return a > b ? a : b; }
GF_HD double max(double a, double b) { return a > b ? a : b; }

GF_CODE_END
