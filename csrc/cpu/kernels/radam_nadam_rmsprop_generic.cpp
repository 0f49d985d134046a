// The kernel unit of radam_nadam_rmsprop.h for the generic instruction set (NOTE: [kernel units]).
#include "../isa/generic.h"
#include "radam_nadam_rmsprop.h"
