// The kernel unit of adam.h for the avx2 instruction set (NOTE: [kernel units]).
#include "../isa/avx2.h"
#include "adam.h"
