// Adam/AdamW and AdEMA (NOTE: [kernel units]).
#include "../isa/avx512.h"
GF_CPU_KERNEL(adam, update_chunks<AdamRule>)
GF_CPU_KERNEL(adema, update_chunks<AdemaRule>)
