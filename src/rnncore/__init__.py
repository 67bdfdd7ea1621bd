"""rnncore: fast recurrent networks for the CPU, with PyTorch's names and numbers.

The package is built in wings (see the README's Layout): core/ (layers, cells, the
functional door to the backends), backends/, toolkit/ (training around the layers),
interop/ (checkpoints, ONNX, Keras, PyTorch) and app/ (the command line). This module
holds the public names only.
"""
import sys

from ._version import __version__
from .backends.registry import backends, get_backend, get_num_threads, set_backend, set_num_threads
from .core import cells, functional, layers, spec
from .core.cells import GRUCell, LSTMCell, RNNCell
from .core.functional import warmup
from .core.layers import GRU, LSTM, RNN, JordanRNN
from .core.stream import Stream
from .toolkit import clip, forecasting, losses, nn, optim, train
from .toolkit.clip import clip_grad_norm_, clip_grad_value_
from .toolkit.losses import CrossEntropyLoss, MSELoss
from .toolkit.nn import Embedding, LastStep, Linear, ReLU, Sequential, Sigmoid, Tanh
from .interop import checkpoint, keras, onnx  # neither imports Keras or the onnx package until used
from .interop.checkpoint import load, save

__all__ = ["RNN", "LSTM", "GRU", "JordanRNN", "RNNCell", "LSTMCell", "GRUCell", "functional",
           "clip_grad_norm_", "clip_grad_value_", "backends", "set_backend", "get_backend",
           "set_num_threads", "get_num_threads", "warmup", "Stream",
           "Linear", "Embedding", "Tanh", "ReLU", "Sigmoid", "LastStep", "Sequential", "MSELoss",
           "CrossEntropyLoss", "losses", "optim", "train", "save", "load", "checkpoint", "keras", "onnx", "forecasting"]

# The modules of 0.1.0's flat layout stay importable by their old names (`import
# rnncore.functional`, `from rnncore.checkpoint import CheckpointError`, pickles of
# 0.1.0 objects); rnncore.torch is a module of its own, as it imports torch.
for _module in (cells, functional, layers, clip, forecasting, losses, nn, optim, train, checkpoint, keras, onnx):
    sys.modules[f"{__name__}.{_module.__name__.rsplit('.', 1)[1]}"] = _module
sys.modules[f"{__name__}._spec"] = spec  # a 0.1.0 layer pickles its CellSpec under this name
del _module, spec
