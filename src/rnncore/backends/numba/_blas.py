"""The one matrix product the kernels use: BLAS gemm on row-major 2-D views.

`np.dot` in numba needs contiguous operands and cannot accumulate (beta = 1); the
kernels need both, to add each step's recurrent product into that step's slice of
the input projection and to address one gate block of a wider row. So they call
numba's own `numba_xxgemm` helper (the scipy.linalg.cython_blas gemm behind
np.dot) directly. It is found by symbol name when the code is linked, which is what
lets the kernels be cached on disk: a raw function address would differ in the next
process.
"""
import numpy as np
from numba import njit, types

# int numba_xxgemm(kind, transa, transb, m, n, k, *alpha, *a, lda, *b, ldb, *beta, *c, ldc)
_xxgemm = types.ExternalFunction("numba_xxgemm", types.intc(
    types.char, types.char, types.char, types.intp, types.intp, types.intp,
    types.voidptr, types.voidptr, types.intp, types.voidptr, types.intp,
    types.voidptr, types.voidptr, types.intp))

_NO_TRANSPOSE, _TRANSPOSE = ord("n"), ord("t")
_SINGLE, _DOUBLE = ord("s"), ord("d")


@njit
def gemm(a, transpose_a, b, transpose_b, c, accumulate, scalars):
    """c = op(a) @ op(b), plus the old c when `accumulate`; op(m) is m.T when asked.

    a, b, c: 2-D views of one float dtype with unit stride along rows (any row
    stride); `scalars` is [0, 1] in that dtype (BLAS takes alpha and beta by address).
    """
    rows, cols = c.shape
    inner = a.shape[0] if transpose_a else a.shape[1]
    if rows == 0 or cols == 0:
        return
    # BLAS is column-major, where a row-major (r, s) array is its (s, r) transpose:
    # c.T = op(b).T @ op(a).T is the product BLAS sees, so the operands swap places.
    _xxgemm(_SINGLE if c.itemsize == 4 else _DOUBLE,
            _TRANSPOSE if transpose_b else _NO_TRANSPOSE,
            _TRANSPOSE if transpose_a else _NO_TRANSPOSE,
            cols, rows, inner,
            scalars[1:].ctypes,
            b.ctypes, max(b.strides[0] // b.itemsize, b.shape[1], 1),
            a.ctypes, max(a.strides[0] // a.itemsize, a.shape[1], 1),
            scalars[0:].ctypes if not accumulate else scalars[1:].ctypes,
            c.ctypes, max(c.strides[0] // c.itemsize, cols, 1))

