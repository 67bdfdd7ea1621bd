"""The numba backend: rnncore's sequence loops compiled by numba at first use, for
installs where the Cython extension was not built. `backend` holds the contract
functions, `kernels` the compiled loops, `_blas` the matrix product they call."""
