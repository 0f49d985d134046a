// The kernel unit of radam_nadam_rmsprop.h for the avx2 instruction set (NOTE: [kernel units]).
#include "../isa/avx2.h"
#include "radam_nadam_rmsprop.h"
