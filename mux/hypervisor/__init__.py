"""Where domain records come from: the real hypercall or the simulated host."""
