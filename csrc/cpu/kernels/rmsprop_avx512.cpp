// RMSprop: centered or not, with momentum or not (NOTE: [kernel units]).
#include "../isa/avx512.h"
GF_CPU_KERNEL(rmsprop, update_chunks<RmspropRule>)
