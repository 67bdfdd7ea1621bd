"""`registry.keep_freed_memory`: at import rnncore raises glibc malloc's mmap and trim
thresholds, so that a training call reuses the pages the previous call freed instead of
faulting fresh ones in; the user's own malloc settings, or RNNCORE_KEEP_FREED_MEMORY=0,
leave malloc alone."""
import os
import subprocess
import sys
import textwrap

import pytest

from rnncore.backends import registry

GLIBC = hasattr(os, "confstr") and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")

# ten 10 MB blocks (100 MB, as a large training step frees at once: more than glibc's
# own trim threshold would keep, and more than a 64 MB one) written, freed, and again:
# the minor page faults of the third round
_ROUNDS = textwrap.dedent("""
    import resource
    import numpy as np
    import rnncore
    def round_():
        blocks = [np.ones(10 * 2**20 // 8) for _ in range(10)]
        del blocks
    round_(); round_()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    round_()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _faults(**env):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "RNNCORE_KEEP_FREED_MEMORY"}
    environ.update(env)
    out = subprocess.run([sys.executable, "-c", _ROUNDS], env=environ, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only")
def test_freed_blocks_are_reused_without_faulting_pages_in():
    kept, given_back = _faults(), _faults(RNNCORE_KEEP_FREED_MEMORY="0")
    # 100 MB is about 25600 pages of 4 kB: glibc's own adaptive thresholds give back a
    # fifth or more of them each round, which are faulted in again
    assert given_back > 3000, given_back
    assert kept < 300, kept


def test_the_users_own_settings_are_left_alone():
    assert not registry.keep_freed_memory({"RNNCORE_KEEP_FREED_MEMORY": "0"})
    assert not registry.keep_freed_memory({"MALLOC_ARENA_MAX": "2"})
    assert not registry.keep_freed_memory({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000"})
    assert registry.keep_freed_memory({}) is GLIBC
