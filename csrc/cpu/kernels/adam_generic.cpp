// The kernel unit of adam.h for the generic instruction set (NOTE: [kernel units]).
#include "../isa/generic.h"
#include "adam.h"
