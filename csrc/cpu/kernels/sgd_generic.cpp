// The kernel unit of sgd.h for the generic instruction set (NOTE: [kernel units]).
#include "../isa/generic.h"
#include "sgd.h"
