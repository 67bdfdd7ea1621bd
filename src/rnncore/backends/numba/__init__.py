"""The numba backend: rnncore's sequence loops compiled by numba at first use, for
installs where the Cython extension was not built. `backend` holds the contract
functions, `kernels` the compiled loops, `_blas` the matrix product they call."""
import warnings

try:
    from numba.core.errors import NumbaIRAssumptionWarning
except ImportError:  # no numba: importing `backend` fails and the registry moves on
    pass
else:
    # inlining the typed activation helpers trips a pedantic scope check in numba's IR
    # (a note to numba's developers, not a fault in the compiled code)
    warnings.filterwarnings("ignore", message=r".*variable '_(tanh|sigmoid)_typed", category=NumbaIRAssumptionWarning)
