// The kernel unit of radam_nadam_rmsprop.h for the avx512 instruction set (NOTE: [kernel units]).
#include "../isa/avx512.h"
#include "radam_nadam_rmsprop.h"
