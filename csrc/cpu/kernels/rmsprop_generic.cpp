// RMSprop: centered or not, with momentum or not (NOTE: [kernel units]).
#include "../isa/generic.h"
GF_CPU_KERNEL(rmsprop, update_chunks<RmspropRule>)
