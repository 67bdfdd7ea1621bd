"""`import rnncore.torch as rct`: the PyTorch adapter, rnncore.interop.torch, reached by
its public name; a module of its own so that `import rnncore` does not import torch."""
import sys

from .interop import torch as _adapter

sys.modules[__name__] = _adapter
