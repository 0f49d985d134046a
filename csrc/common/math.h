// Element math for scalars. The CPU engine adds overloads for its SIMD vector types (csrc/cpu/simd.h)
// before it includes rules.h, so the same rule source serves float, double and vectors.
#pragma once
#include <cmath>
#include "config.h"

GF_CODE_BEGIN

GF_HD float sqrt(float x) { return ::sqrtf(x); }
GF_HD double sqrt(double x) { return ::sqrt(x); }
// NOTE: [max propagates NaN]: as torch.maximum, a NaN on either side is the result (amsgrad's running
// maximum must not heal a NaN). a > b is false for a NaN a, hence the a != a term.
GF_HD float max(float a, float b) { return (a > b || a != a) ? a : b; }
GF_HD double max(double a, double b) { return (a > b || a != a) ? a : b; }

GF_CODE_END
