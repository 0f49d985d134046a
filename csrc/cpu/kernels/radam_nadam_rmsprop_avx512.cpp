// RAdam, NAdam and RMSprop (NOTE: [kernel units]).
#include "../isa/avx512.h"
GF_CPU_KERNEL(radam, update_chunks<RAdamRule>)
GF_CPU_KERNEL(nadam, update_chunks<NAdamRule>)
GF_CPU_KERNEL(rmsprop, update_chunks<RmspropRule>)
