// RAdam, NAdam and RMSprop: the rules of the kernel units radam_nadam_rmsprop_<isa>.cpp, one list for every
// instruction set (NOTE: [kernel units]). Included after the unit's csrc/cpu/isa/<isa>.h.
GF_CPU_KERNEL(radam, update_chunks<RAdamRule>)
GF_CPU_KERNEL(nadam, update_chunks<NAdamRule>)
GF_CPU_KERNEL(rmsprop, update_chunks<RmspropRule>)
