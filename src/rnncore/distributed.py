"""`import rnncore.distributed as rd`: data-parallel training over MPI,
rnncore.interop.distributed, reached by its public name; a module of its own, as the
adapter for torch is, so that `import rnncore` never touches MPI."""
import sys

from .interop import distributed as _distributed

sys.modules[__name__] = _distributed
