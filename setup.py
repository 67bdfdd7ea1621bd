"""Declares the compiled extensions; everything else is in pyproject.toml.

Each `src/rnncore/backends/cython/*.pyx` becomes an extension module that includes the C
kernels of `csrc/` (the products and the cells; no BLAS); `_probe` (the benchmarks' FMA-peak
loop) is one of them.

The extension is optional: where Cython or the C compiler fails, the package installs
without it (one message says so) and runs on numba or the NumPy reference. OpenMP is
used where the compiler accepts it; without it the extension's parallel loops (the two
directions of a bidirectional layer) run serially.

Environment:
- RNNCORE_NATIVE=1 builds with -march=native (the result runs only on CPUs like the
  build machine's).
- RNNCORE_REQUIRE_EXTENSION=1 makes a failed extension build an error (for CI and for
  packagers, who must not ship a wheel without it by accident).
- RNNCORE_EXTRA_CFLAGS / RNNCORE_EXTRA_LDFLAGS: extra flags, split on spaces (the
  sanitizer build, tools/sanitize.sh).
"""
import glob
import os
import sys
import tempfile
import textwrap

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CYTHON_DIRECTIVES = {"boundscheck": False, "wraparound": False, "cdivision": True, "initializedcheck": False}
HEADERS = sorted(glob.glob("csrc/*.h") + glob.glob("csrc/*.inc") + glob.glob("src/rnncore/backends/cython/*.pxd"))

_OPENMP_PROBE = textwrap.dedent("""
    #include <omp.h>
    int rnncore_openmp_probe(void) {
        int n = 0;
    #pragma omp parallel reduction(+:n)
        n += omp_get_thread_num() >= 0;
        return n;
    }
""")


def _env_flags(name):
    return os.environ.get(name, "").split()


class OptionalBuildExt(build_ext):
    """build_ext that cythonizes at build time, probes OpenMP, and skips what fails."""

    def build_extensions(self):
        unix = self.compiler.compiler_type != "msvc"
        compile_args = ["-O3", "-ffp-contract=fast"] if unix else ["/O2"]
        link_args = []
        if unix and os.environ.get("RNNCORE_NATIVE") == "1":
            compile_args.append("-march=native")
        openmp = unix and self._accepts_openmp()
        if openmp:
            compile_args.append("-fopenmp")
            link_args.append("-fopenmp")
        compile_args += _env_flags("RNNCORE_EXTRA_CFLAGS")
        link_args += _env_flags("RNNCORE_EXTRA_LDFLAGS")
        for ext in self.extensions:
            ext.extra_compile_args = compile_args + ext.extra_compile_args
            ext.extra_link_args = link_args + ext.extra_link_args
        self.built, self.failed = [], []
        super().build_extensions()
        # one message for the build, however many modules failed; the probe alone is no backend
        failed = dict(self.failed)
        backend = [name for name in failed if not name.endswith("._probe")]
        if backend:
            print(f"rnncore: the compiled backend could not be built ({failed[backend[0]]}); installing without "
                  f"it: the numba backend (if installed) or the NumPy reference will be used", file=sys.stderr)
        elif failed:
            print(f"rnncore: the FMA-peak probe of the benchmarks could not be built "
                  f"({next(iter(failed.values()))}); the benchmarks report no fraction of the peak",
                  file=sys.stderr)
        if unix and not openmp and self.built:  # said only when it matters: the build went through
            print("rnncore: the C compiler does not accept -fopenmp; built without OpenMP (the parallel "
                  "loops, over the directions of a bidirectional layer, then run serially)", file=sys.stderr)

    def build_extension(self, ext):
        try:
            from Cython.Build import cythonize
            import numpy
            ext.include_dirs.append(numpy.get_include())
            (cythonized,) = cythonize([ext], language_level=3, compiler_directives=CYTHON_DIRECTIVES,
                                      force=self.force, quiet=True)
            ext.sources = cythonized.sources
            super().build_extension(ext)
            self.built.append(ext.name)
        except Exception as exc:  # Cython missing or failing, no compiler, a compile or link error
            if os.environ.get("RNNCORE_REQUIRE_EXTENSION") == "1":
                raise
            reason = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
            if len(reason) > 200:  # a failed command is quoted whole; its head says enough
                reason = reason[:200] + "..."
            self.failed.append((ext.name, reason))

    def _accepts_openmp(self):
        """Whether the configured compiler compiles and links a tiny OpenMP function."""
        with tempfile.TemporaryDirectory() as tmp:
            source = os.path.join(tmp, "probe.c")
            with open(source, "w") as f:
                f.write(_OPENMP_PROBE)
            try:
                objects = self.compiler.compile([source], output_dir=tmp, extra_postargs=["-fopenmp"])
                self.compiler.link_shared_object(objects, os.path.join(tmp, "probe.so"),
                                                 extra_postargs=["-fopenmp"])
            except Exception:  # CompileError, LinkError, or no compiler at all
                return False
        return True


extensions = [
    Extension(
        "rnncore.backends.cython." + os.path.splitext(os.path.basename(path))[0],
        [path],
        include_dirs=["csrc"],
        depends=HEADERS,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    for path in sorted(glob.glob("src/rnncore/backends/cython/*.pyx"))
]

setup(ext_modules=extensions, cmdclass={"build_ext": OptionalBuildExt})
