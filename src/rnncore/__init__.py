"""rnncore: fast recurrent networks for the CPU, with PyTorch's names and numbers."""
from . import functional
from ._backend import backends, get_backend, get_num_threads, set_backend, set_num_threads, warmup
from ._backend import _init_threads_from_env
from .cells import GRUCell, LSTMCell, RNNCell
from .clip import clip_grad_norm_, clip_grad_value_
from .layers import GRU, LSTM, RNN, JordanRNN
from . import losses, optim, train
from .losses import CrossEntropyLoss, MSELoss
from .nn import Embedding, LastStep, Linear, ReLU, Sequential, Sigmoid, Tanh
from . import forecasting
from . import checkpoint, keras, onnx  # neither imports Keras or the onnx package until used
from .checkpoint import load, save

__version__ = "0.1.0"

__all__ = ["RNN", "LSTM", "GRU", "JordanRNN", "RNNCell", "LSTMCell", "GRUCell", "functional",
           "clip_grad_norm_", "clip_grad_value_", "backends", "set_backend", "get_backend",
           "set_num_threads", "get_num_threads", "warmup",
           "Linear", "Embedding", "Tanh", "ReLU", "Sigmoid", "LastStep", "Sequential", "MSELoss",
           "CrossEntropyLoss", "losses", "optim", "train", "save", "load", "checkpoint", "keras", "onnx", "forecasting"]

_init_threads_from_env()
del _init_threads_from_env
