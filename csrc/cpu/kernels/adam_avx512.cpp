// The kernel unit of adam.h for the avx512 instruction set (NOTE: [kernel units]).
#include "../isa/avx512.h"
#include "adam.h"
