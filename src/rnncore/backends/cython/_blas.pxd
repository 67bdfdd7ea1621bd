# The one door to BLAS: row-major GEMM for float and double over scipy.linalg.cython_blas.
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k, floating alpha,
                      const floating *a, int lda, const floating *b, int ldb,
                      floating beta, floating *c, int ldc) noexcept nogil:
    """Row-major C (m, n) := alpha op(A) op(B) + beta C, with op(A) (m, k), op(B) (k, n)."""
    # Fortran BLAS is column-major and a row-major C is a column-major C^T = op(B)^T op(A)^T:
    # the operands swap places and keep their own transpose flags.
    cdef char flag_a = b'T' if trans_a else b'N'
    cdef char flag_b = b'T' if trans_b else b'N'
    cdef Py_ssize_t i, j
    if m <= 0 or n <= 0:
        return
    if k <= 0:
        # an empty product: C := beta C, where beta 0 overwrites (C may be uninitialised)
        for i in range(m):
            for j in range(n):
                c[i * ldc + j] = 0 if beta == 0 else beta * c[i * ldc + j]
        return
    if floating is float:
        sgemm(&flag_b, &flag_a, &n, &m, &k, &alpha, <float *>b, &ldb, <float *>a, &lda, &beta, c, &ldc)
    else:
        dgemm(&flag_b, &flag_a, &n, &m, &k, &alpha, <double *>b, &ldb, <double *>a, &lda, &beta, c, &ldc)
