// The kernel unit of sgd.h for the avx512 instruction set (NOTE: [kernel units]).
#include "../isa/avx512.h"
#include "sgd.h"
