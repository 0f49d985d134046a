// Adam/AdamW and AdEMA: the rules of the kernel units adam_<isa>.cpp, one list for every instruction set
// (NOTE: [kernel units]). Included after the unit's csrc/cpu/isa/<isa>.h.
GF_CPU_KERNEL(adam, update_chunks<AdamRule>)
GF_CPU_KERNEL(adema, update_chunks<AdemaRule>)
