"""Packaging: the sdist holds every source the build reads, and the build survives a
machine where the extension cannot be built (no compiler, no OpenMP, Cython failing).

Each build runs in a temporary copy of the build inputs, never in the checkout. The
files skip where the build inputs are not next to the tests (an installed package) or
no C compiler is there. CI (.ci/run) also builds the sdist and the wheel with
`python -m build` and installs them into fresh virtualenvs.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAILED = "rnncore: the compiled backend could not be built"


def _missing_build_requirements():
    """Why this environment cannot run setup.py (pyproject's build-system), or None."""
    if not (ROOT / "setup.py").is_file() or not (ROOT / "csrc").is_dir():
        return "the build inputs (setup.py, csrc/) are not next to the tests"
    try:
        import Cython  # noqa: F401
        import setuptools
    except ImportError as exc:
        return f"a build requirement is not installed: {exc}"
    if int(setuptools.__version__.split(".")[0]) < 77:
        return f"setuptools {setuptools.__version__} is older than the build needs (77)"
    return None


MISSING = _missing_build_requirements()
pytestmark = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))


def _build_tree(dest):
    """The files a build reads, copied (generated C kept, with its time stamp, when up to date)."""
    dest.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "csrc", dest / "csrc")
    shutil.copytree(ROOT / "src", dest / "src", ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__",
                                                                                 "*.egg-info"))
    shutil.copytree(ROOT / "tests", dest / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _build_ext(tree, **env):
    out = tree / "out"
    base = {k: v for k, v in os.environ.items() if k != "RNNCORE_REQUIRE_EXTENSION"}
    done = subprocess.run([sys.executable, "setup.py", "build_ext", "-b", str(out), "-t", str(tree / "tmp")],
                          cwd=tree, env=dict(base, **env), capture_output=True, text=True, timeout=900)
    built = sorted(p.name for p in out.rglob("_recurrent*" + sysconfig.get_config_var("EXT_SUFFIX")))
    return done, built


def _compiler():
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc)


def test_sdist_holds_every_build_input(tmp_path):
    tree = _build_tree(tmp_path / "tree")
    subprocess.run([sys.executable, "-c", "from setuptools import build_meta; build_meta.build_sdist('dist')"],
                   cwd=tree, check=True, capture_output=True, timeout=300)
    (sdist,) = (tree / "dist").glob("rnncore-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    needed = ["setup.py", "pyproject.toml", "README.md", "LICENSE", "tests/conftest.py", "tests/cases.py"]
    needed += [str(p.relative_to(ROOT)) for pattern in ("csrc/*", "src/rnncore/backends/cython/*.pyx",
                                                        "src/rnncore/backends/cython/*.pxd", "src/rnncore/data/*")
               for p in ROOT.glob(pattern)]
    missing = sorted(set(needed) - names)
    assert not missing, f"sdist lacks {missing}"
    generated = sorted(n for n in names if n.endswith((".c", ".so")))
    assert not generated, f"sdist holds build outputs {generated}"


@pytest.mark.parametrize("breakage", ["no compiler", "cython error"])
def test_failed_extension_build_still_installs_with_one_message(tmp_path, breakage):
    tree = _build_tree(tmp_path / "tree")
    env = {}
    if breakage == "no compiler":
        env = {"CC": "/bin/false", "CXX": "/bin/false", "LDSHARED": "/bin/false"}
    else:
        for generated in (tree / "src/rnncore/backends/cython").glob("*.c"):
            generated.unlink()
        with open(tree / "src/rnncore/backends/cython/_recurrent.pyx", "a") as f:
            f.write("\ncdef int broken(:\n")
    done, built = _build_ext(tree, **env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert built == []
    assert (done.stdout + done.stderr).count(FAILED) == 1, done.stdout[-2000:] + done.stderr[-2000:]
    # and where the extension is required, the same failure is an error
    done, _ = _build_ext(tree, RNNCORE_REQUIRE_EXTENSION="1", **env)
    assert done.returncode != 0


@pytest.mark.skipif(_compiler() is None or sys.platform != "linux", reason="needs the Linux C compiler")
def test_compiler_without_openmp_builds_without_it(tmp_path):
    """A compiler that refuses -fopenmp (Apple's clang does) still builds the extension."""
    tree = _build_tree(tmp_path / "tree")
    wrapper = tmp_path / "cc-without-openmp"
    wrapper.write_text(f'#!/bin/sh\nfor a in "$@"; do [ "$a" = -fopenmp ] && exit 1; done\nexec {_compiler()} "$@"\n')
    wrapper.chmod(0o755)
    ldshared = sysconfig.get_config_var("LDSHARED").split()
    done, built = _build_ext(tree, CC=str(wrapper), LDSHARED=" ".join([str(wrapper)] + ldshared[1:]))
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(built) == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "does not accept -fopenmp" in done.stderr
    assert FAILED not in done.stdout + done.stderr
    linked = subprocess.run(["ldd", str(next((tree / "out").rglob(built[0])))], capture_output=True, text=True)
    assert "libgomp" not in linked.stdout
