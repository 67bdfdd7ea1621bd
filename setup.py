"""Declares the compiled extensions; everything else is in pyproject.toml.

Each `src/rnncore/_cython/*.pyx` becomes an extension module that reaches BLAS through
scipy.linalg.cython_blas and includes the C element-wise kernels of `csrc/`.
Set RNNCORE_NATIVE=1 to build with -march=native (opt-in: the result runs only on CPUs
like the build machine's).
"""
import glob
import os
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

compile_args = ["-O3", "-ffp-contract=fast"] if sys.platform != "win32" else ["/O2"]
link_args = []
if sys.platform != "win32":
    compile_args.append("-fopenmp")
    link_args.append("-fopenmp")
    if os.environ.get("RNNCORE_NATIVE") == "1":
        compile_args.append("-march=native")

extensions = [
    Extension(
        "rnncore._cython." + os.path.splitext(os.path.basename(path))[0],
        [path],
        include_dirs=["csrc", numpy.get_include()],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    for path in sorted(glob.glob("src/rnncore/_cython/*.pyx"))
]

setup(ext_modules=cythonize(extensions, language_level=3, compiler_directives={
    "boundscheck": False, "wraparound": False, "cdivision": True, "initializedcheck": False,
}))
