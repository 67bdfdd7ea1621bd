"""The compiled backend: sequence loops in Cython over BLAS and the C cell kernels of csrc/."""
