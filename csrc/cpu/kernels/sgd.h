// PersistentSGD (and SGD), GradientAscent, and the passes of GradientAlignment and Lookahead: the rules of
// the kernel units sgd_<isa>.cpp, one list for every instruction set (NOTE: [kernel units]). Included after
// the unit's csrc/cpu/isa/<isa>.h.
GF_CPU_KERNEL(persistent_sgd, update_chunks<PersistentSgdRule>)
GF_CPU_KERNEL(gradient_ascent, update_chunks<GradientAscentRule>)
GF_CPU_KERNEL(alignment_stats, alignment_chunks)
GF_CPU_KERNEL(lookahead, lookahead_chunks)
