"""`import rnncore.dask as rdk`: scoring many series on a Dask cluster,
rnncore.interop.dask, reached by its public name; a module of its own, as the adapter
for torch is, so that `import rnncore` never imports dask."""
import sys

from .interop import dask as _dask

sys.modules[__name__] = _dask
