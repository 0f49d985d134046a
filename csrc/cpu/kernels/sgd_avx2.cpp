// The kernel unit of sgd.h for the avx2 instruction set (NOTE: [kernel units]).
#include "../isa/avx2.h"
#include "sgd.h"
