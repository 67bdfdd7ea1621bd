"""The layers: parameters, validation, stacking, directions, dropout.

A layer owns PyTorch-named parameters and runs its stack one layer at a time through a
backend's `layer_forward` (one or two directions), feeding each layer's concatenated
output to the next. Everything a user can get wrong is checked here, once, before any
compute; the backends trust what they are given.
"""
from __future__ import annotations

import contextlib
import contextvars
import inspect
import math
import numbers
import threading
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, Optional, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import _backend, _validate
from ._repr import ConfigRepr
from ._spec import ACTIVATIONS, OUTPUT_ACTIVATIONS, CellSpec

__all__ = ["RNN", "LSTM", "GRU", "JordanRNN"]


def _param_name(base, layer, direction):
    return f"{base}_l{layer}" + ("_reverse" if direction else "")


def copy_state(params, mapping, strict=True):
    """Copy `mapping` (name -> array-like) into the live arrays `params`, in place so that
    references stay valid. Every name, shape and dtype is checked first, and each problem
    listed, so a bad mapping changes nothing."""
    if not isinstance(mapping, Mapping):
        raise TypeError(f"load_state_dict: expected a mapping of parameter names to arrays, got "
                        f"{type(mapping).__name__}")
    strict = _validate.flag("strict", strict)
    given = {name: _validate.to_numpy(value, name) for name, value in mapping.items()}
    if strict:
        missing = [n for n in params if n not in given]
        unexpected = [n for n in given if n not in params]
        if missing or unexpected:
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
    given = {n: v for n, v in given.items() if n in params}
    wrong = [f"{n}: expected shape {params[n].shape}, got {v.shape}" for n, v in given.items()
             if v.shape != params[n].shape]
    if wrong:
        raise ValueError("load_state_dict: " + "; ".join(wrong))
    bad_type = [f"{n}: expected a real number array, got dtype {v.dtype}" for n, v in given.items()
                if v.dtype.kind not in "iuf"]
    if bad_type:
        raise TypeError("load_state_dict: " + "; ".join(bad_type))
    for name, value in given.items():
        params[name][...] = value


# -- the one-context rule ------------------------------------------------------------------
# A training-mode forward saves one context in `module._saved`; the first backward through
# it consumes it (as PyTorch frees its graph without retain_graph=True), so a second one
# cannot silently add the same gradients again. A backward reads the context, computes,
# and only then, in `commit`, consumes it and adds its gradients: on error nothing changed.

_CONSUMED = object()  # `_saved` after backward consumed the context
# taken for a few identity checks and the gradient additions of one backward, so that
# of two threads back-propagating through one forward exactly one succeeds
_commit_lock = threading.Lock()
_deferred = threading.local()


def _consumed(module):
    return RuntimeError(f"{type(module).__name__}.backward: the last training-mode forward was already "
                        "back-propagated through; backward frees its saved context, as PyTorch does without "
                        "retain_graph=True (run the forward again, or use rnncore.functional, whose contexts "
                        "can be back-propagated more than once)")


def saved_context(module, missing):
    """The context `module`'s last training-mode forward saved, for its backward to read;
    `missing` is the error message when there was no such forward."""
    saved = module._saved
    if saved is _CONSUMED:
        raise _consumed(module)
    if saved is None:
        raise RuntimeError(missing)
    return saved


def commit(entries):
    """Consume the contexts a backward read and add its gradients, all or nothing.

    entries: [(module, the saved context its gradients came from, {name: gradient})], a
    gradient being an array of the parameter's shape or a pair (row indices, rows) that
    adds into those rows only. A context that another backward consumed, or a newer
    forward replaced, since it was read refuses the whole backward. Inside
    `deferred_commits` the entries are only collected."""
    pending = getattr(_deferred, "entries", None)
    if pending is not None:
        pending.extend(entries)
        return
    with _commit_lock:
        for module, saved, _ in entries:
            if module._saved is _CONSUMED:
                raise _consumed(module)
            if module._saved is not saved:
                raise RuntimeError(f"{type(module).__name__}.backward: a new forward replaced the saved context "
                                   "while this backward ran (forward and backward of one module must not run "
                                   "at the same time)")
        for module, _, grads in entries:
            module._saved = _CONSUMED
            for name, value in grads.items():
                if isinstance(value, tuple):
                    np.add.at(module.grads[name], *value)
                else:
                    module.grads[name] += value


@contextlib.contextmanager
def deferred_commits():
    """Within the block, this thread's `commit` calls collect their entries into the list
    it yields instead of applying them: a chain of modules commits once, all or nothing."""
    outer = getattr(_deferred, "entries", None)
    _deferred.entries = entries = []
    try:
        yield entries
    finally:
        _deferred.entries = outer


class _Module(ConfigRepr):
    """Pickling and copying: the saved context is dropped (it holds a backend module and
    buffers only its own backward needs), so a copy needs a training-mode forward of its
    own before backward; parameters, gradients, mode and random generator are copied.
    The repr is the constructor call of get_config()."""

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_saved"] = None
        # a cache of views into the parameter arrays: rebuilt on first use by the copy
        state.pop("_by_layer", None)
        return state


class ParameterBudgetExceeded(ValueError):
    """Building an object would allocate more parameter bytes than `parameter_budget` allows."""


# [bytes left] while a parameter_budget is active in this thread or task, else None
_budget: contextvars.ContextVar[Optional[list[int]]] = contextvars.ContextVar("rnncore_parameter_budget", default=None)


@contextlib.contextmanager
def parameter_budget(nbytes: int) -> Iterator[None]:
    """Within this block, layers, cells, Linear and Embedding built here may allocate at
    most `nbytes` of parameters in all; one that would exceed it raises
    ParameterBudgetExceeded before allocating anything. Loading a checkpoint builds its
    model under the size of the arrays the file holds, so that a configuration claiming
    a larger model costs nothing."""
    token = _budget.set([int(nbytes)])
    try:
        yield
    finally:
        _budget.reset(token)


def _check_budget(count, dtype, charge):
    """Refuse `count` parameter values of `dtype` beyond the active budget; with `charge`,
    spend it."""
    left = _budget.get()
    if left is None:
        return
    need = count * np.dtype(dtype).itemsize
    if need > left[0]:
        raise ParameterBudgetExceeded(f"parameters of at least {need} bytes, beyond the {left[0]} bytes left of the "
                                      f"budget")
    if charge:
        left[0] -= need


class _Parametrised(_Module):
    """Parameters by name, their gradients, state_dict, train/eval: shared by layers
    and cells. Subclasses fill `self._params` in `_init_params` order."""

    def _init_params(self, shapes, hidden_size, seed):
        _check_budget(sum(math.prod(shape) for shape in shapes.values()), self.dtype, charge=True)
        # every parameter U(-1/sqrt(H), 1/sqrt(H)), as PyTorch; drawn in float64 so that
        # float32 and float64 layers with the same seed hold the same values
        bound = 1.0 / math.sqrt(hidden_size)
        self._rng = np.random.default_rng(_validate.seed(seed))
        self._params = {name: self._rng.uniform(-bound, bound, shape).astype(self.dtype)
                        for name, shape in shapes.items()}
        self.grads = {name: np.zeros_like(value) for name, value in self._params.items()}
        self.training = True
        self._saved = None

    def parameters(self) -> dict[str, np.ndarray]:
        """The live parameter arrays by name (updating them updates the layer)."""
        return dict(self._params)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters, with PyTorch's names, shapes and gate orders."""
        return {name: value.copy() for name, value in self._params.items()}

    def load_state_dict(self, mapping: Mapping[str, ArrayLike], strict: bool = True) -> None:
        """Copy parameters in from any mapping of name to array-like (a PyTorch
        state_dict as it is). Wrong names or shapes leave the layer unchanged."""
        copy_state(self._params, mapping, strict)

    def zero_grad(self) -> None:
        for g in self.grads.values():
            g.fill(0)

    def train(self, mode: bool = True) -> _Parametrised:
        self.training = _validate.flag("mode", mode)
        return self

    def eval(self) -> _Parametrised:
        return self.train(False)

    def _backend(self):
        return _backend.resolve(self._backend_name)

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this object (seed excepted), by name."""
        names = [n for n in inspect.signature(type(self).__init__).parameters if n not in ("self", "seed")]
        config = {n: getattr(self, n if n != "backend" else "_backend_name") for n in names}
        config["dtype"] = self.dtype.name
        return config


class _Recurrent(_Parametrised):
    """A stack of `num_layers` layers of one cell type, one or two directions each."""

    _state_names: tuple[str, ...] = ("h0",)

    def __init__(self, kind, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, dtype=np.float32, seed=None, backend=None,
                 **variant):
        self.input_size = _validate.positive_int("input_size", input_size)
        self.hidden_size = _validate.positive_int("hidden_size", hidden_size)
        self.num_layers = _validate.positive_int("num_layers", num_layers)
        self.dtype = _validate.float_dtype(dtype)
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout <= 1:
            raise ValueError(f"dropout: expected a number in [0, 1], got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn("dropout acts between layers; with num_layers=1 it does nothing", UserWarning,
                          stacklevel=3)
        if backend is not None:
            _backend._check_name(backend)
        self.bias = _validate.flag("bias", bias)
        self.batch_first = _validate.flag("batch_first", batch_first)
        self.dropout = float(dropout)
        self.bidirectional = _validate.flag("bidirectional", bidirectional)
        self.num_directions = 2 if bidirectional else 1
        self._backend_name = backend

        self.specs = []
        width = self.input_size
        planned = 0
        for _ in range(self.num_layers):
            spec = CellSpec(kind, width, self.hidden_size, self.bias, **variant)
            self.specs.append(spec)
            width = self.num_directions * spec.out_size
            # layer by layer, so that a huge num_layers stops within the budget's worth of specs
            planned += self.num_directions * sum(math.prod(shape) for shape in spec.param_shapes().values())
            _check_budget(planned, self.dtype, charge=False)
        self.output_width = width
        shapes = {_param_name(base, k, d): shape
                  for k, spec in enumerate(self.specs)
                  for d in range(self.num_directions)
                  for base, shape in spec.param_shapes().items()}
        self._init_params(shapes, self.hidden_size, seed)

    def load_keras_weights(self, *weights: Any, config: Optional[Mapping[str, Any]] = None) -> None:
        """Copy in the weights of the equivalent Keras layer, Bidirectional or stack:
        `(kernel, recurrent_kernel, bias)`, the list Keras' get_weights() returns, or the
        Keras layer(s) themselves; `config` (the Keras layer's get_config()) refuses what
        this layer does not compute (see rnncore.keras.load_weights)."""
        from . import keras  # lazily: rnncore.keras imports this module
        keras.load_weights(self, *weights, config=config)

    def _direction_params(self, layer):
        """[{base name: live array}] per direction of one layer of the stack. Built once:
        the arrays are never replaced (loading copies into them), and a short call
        (one step of decoding) would spend microseconds formatting names."""
        cache = self.__dict__.setdefault("_by_layer", {})
        if layer not in cache:
            cache[layer] = [{base: self._params[_param_name(base, layer, d)]
                             for base in self.specs[layer].param_shapes()}
                            for d in range(self.num_directions)]
        return cache[layer]

    # -- input handling --------------------------------------------------------------

    def _input(self, x, check_finite):
        """x as C-contiguous time-major (T, B, I), and whether it had a batch axis."""
        x = _validate.array("x", x, self.dtype)
        if x.ndim not in (2, 3):
            raise ValueError(f"x: expected 3 dimensions (T, B, I), or 2 (T, I) unbatched, got shape {x.shape}")
        given = x.shape  # errors report the caller's shape, not the time-major view
        batched = x.ndim == 3
        if not batched:
            x = x[:, None, :]
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        T, B, I = x.shape
        if I != self.input_size:
            raise ValueError(f"x: expected input_size {self.input_size} on the last axis, got shape {given}")
        if T < 1 or B < 1:
            raise ValueError(f"x: expected at least one step and one sequence, got shape {given}")
        if check_finite:
            _validate.finite("x", x)
        return _validate.kernel_input(x, self.training), batched

    def _states(self, given, names, B, batched, check_finite):
        """The initial (or final-gradient) states as (D*L, B, n) arrays, zeros for None."""
        rows = self.num_directions * self.num_layers
        lead = (rows, B) if batched else (rows,)
        out = _validate.states(given, names, self.specs[0].state_sizes, self.dtype, lead, check_finite)
        return out if batched else [s[:, None, :] for s in out]

    def _output(self, y, batched):
        if not batched:
            return y[:, 0, :]
        return np.ascontiguousarray(y.transpose(1, 0, 2)) if self.batch_first else y

    # -- forward and backward through the stack ----------------------------------------

    def _forward(self, x, states, lengths, check_finite):
        check_finite = _validate.flag("check_finite", check_finite)
        x, batched = self._input(x, check_finite)
        T, B, _ = x.shape
        if lengths is not None:
            if not batched:
                raise ValueError("lengths: expected None for unbatched input (slice x instead), got an array")
            lengths = _validate.lengths(lengths, B, T)
        states = self._states(states, self._state_names, B, batched, check_finite)
        dropout_mask = self._dropout_mask if self.training and self.dropout > 0 else None
        y, finals, saved = self._stack_forward(x, states, lengths, self.training, dropout_mask)
        self._saved = dict(saved, batched=batched) if saved is not None else None
        finals = [f if batched else f[:, 0, :] for f in finals]
        return self._output(y, batched), finals

    def _stack_forward(self, x, states, lengths, keep_context, dropout_mask=None):
        """The stack over validated time-major x (T, B, I) and states [(D*L, B, n)]:
        y (T, B, W), the final states, and what `_stack_backward` needs (None unless
        keep_context). `dropout_mask(shape)`, when given, draws the inverted-dropout mask
        of each layer's output but the last. It stores nothing on the layer, so calls
        may interleave."""
        T, B, _ = x.shape
        backend = self._backend()
        D = self.num_directions
        reverse = (False, True)[:D]
        finals = [np.empty_like(s) for s in states]
        contexts, masks = [], []
        layer_input = x
        for k, spec in enumerate(self.specs):
            rows = range(k * D, (k + 1) * D)
            states_k = [tuple(np.ascontiguousarray(s[r]) for s in states) for r in rows]
            y, states_n, ctx = backend.layer_forward(spec, self._direction_params(k), layer_input, states_k,
                                                     lengths, keep_context, reverse)
            for r, state in zip(rows, states_n):
                for final, value in zip(finals, state):
                    final[r] = value
            mask = None
            if dropout_mask is not None and k < self.num_layers - 1:
                mask = dropout_mask(y.shape)
                y = y * mask
            contexts.append(ctx)
            masks.append(mask)
            layer_input = y
        saved = dict(backend=backend, contexts=contexts, masks=masks,
                     y_shape=(T, B, self.output_width)) if keep_context else None
        return layer_input, finals, saved

    def _dropout_mask(self, shape):
        keep = 1.0 - self.dropout
        mask = (self._rng.random(shape) < keep).astype(self.dtype)
        if keep > 0:
            mask /= self.dtype.type(keep)
        return mask

    def _backward(self, dy, dstates_n):
        saved = saved_context(self, "backward: there is no training-mode forward to back-propagate through "
                                    "(call the layer in train() mode first)")
        batched = saved["batched"]
        T, B, W = saved["y_shape"]
        expected = (T, B, W) if not self.batch_first else (B, T, W)
        dy = _validate.array("dy", dy, self.dtype)
        _validate.shape("dy", dy, expected if batched else (T, W))
        _validate.finite("dy", dy, skippable=False)
        names = tuple("d" + n.replace("0", "_n") for n in self._state_names)
        dstates = self._states(dstates_n, names, B, batched, check_finite=True)
        if not batched:
            dy = dy[:, None, :]
        elif self.batch_first:
            dy = dy.transpose(1, 0, 2)
        dy = np.ascontiguousarray(dy)

        dy, dstates0, new_grads = self._stack_backward(saved, dy, dstates)
        commit([(self, saved, new_grads)])
        dx = dy[:, 0, :] if not batched else (dy.transpose(1, 0, 2) if self.batch_first else dy)
        return dx, [d if batched else d[:, 0, :] for d in dstates0]

    def _stack_backward(self, saved, dy, dstates):
        """Back through a `_stack_forward`, from C-contiguous time-major dy (T, B, W) and
        dstates [(D*L, B, n)]: dx (T, B, I), the initial states' gradients, and the
        parameter gradients as {name: array}, added nowhere."""
        backend, D = saved["backend"], self.num_directions
        dstates0 = [np.empty_like(s) for s in dstates]
        new_grads = {}
        for k in reversed(range(self.num_layers)):
            rows = range(k * D, (k + 1) * D)
            dstates_k = [tuple(np.ascontiguousarray(s[r]) for s in dstates) for r in rows]
            dx, ds0, grads = backend.layer_backward(saved["contexts"][k], dy, dstates_k)
            for r, state in zip(rows, ds0):
                for d0, value in zip(dstates0, state):
                    d0[r] = value
            for d, g in enumerate(grads):
                new_grads.update((_param_name(base, k, d), value) for base, value in g.items())
            if k > 0 and saved["masks"][k - 1] is not None:
                dx = dx * saved["masks"][k - 1]
            dy = np.ascontiguousarray(dx)
        return dy, dstates0, new_grads


class _OneState(_Recurrent):
    """Calling and backward of the layers whose state is h alone (RNN, GRU)."""

    def __call__(self, x: ArrayLike, h0: Optional[ArrayLike] = None, lengths: Optional[ArrayLike] = None,
                 check_finite: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Run the layer over a sequence: ``y, h_n = layer(x, h0=None, lengths=None)``.

        Parameters
        ----------
        x : array_like, (T, B, I), (B, T, I) if batch_first, or (T, I) unbatched
            The input sequence, of the layer's dtype.
        h0 : array_like, (D*num_layers, B, H) or (D*num_layers, H) unbatched, optional
            The initial state; zeros when None.
        lengths : array_like of int, (B,), optional
            Each sequence's length, 1 <= lengths[b] <= T: later steps give y = 0 and
            leave the state alone.
        check_finite : bool, default True
            Whether to refuse NaN and infinity in x and h0.

        Returns
        -------
        y : np.ndarray, (T, B, D*H) (or as x is laid out)
            The last layer's output at every step.
        h_n : np.ndarray, (D*num_layers, B, H)
            Every layer's final state.

        Raises
        ------
        ValueError, TypeError
            A wrong shape, dtype, length or non-finite value, before any compute.
        """
        y, (h_n,) = self._forward(x, (h0,), lengths, check_finite)
        return y, h_n

    forward = __call__

    def backward(self, dy: ArrayLike, dh_n: Optional[ArrayLike] = None) -> tuple[np.ndarray, np.ndarray]:
        """Back-propagate through the last training-mode forward, adding the parameter
        gradients into `grads`: ``dx, dh0 = layer.backward(dy, dh_n=None)``.

        Parameters
        ----------
        dy : array_like, the shape of that forward's y
            The gradient of the loss with respect to y.
        dh_n : array_like, the shape of h_n, optional
            The gradient with respect to h_n; zeros when None.

        Returns
        -------
        dx : np.ndarray, the shape of x
        dh0 : np.ndarray, the shape of h0

        Raises
        ------
        RuntimeError
            No training-mode forward, or its context was already consumed by a backward.
        ValueError, TypeError
            A wrong shape, dtype or non-finite gradient; nothing changes.
        """
        dx, (dh0,) = self._backward(dy, (dh_n,))
        return dx, dh0


# The parameter entries the layers' docstrings share, filled in by `_shared_docs`
_PARAMETER_DOCS = {
    'input_size': 'input_size : int\n        Features per step of the input, I.',
    'hidden_size': 'hidden_size : int\n        Units of the hidden state, H.',
    'num_layers': "num_layers : int, default 1\n        Layers stacked, each reading the previous one's output.",
    'bias': 'bias : bool, default True\n        Whether the layer has the biases `bias_ih_l{k}`, `bias_hh_l{k}`.',
    'batch_first': 'batch_first : bool, default False\n        Whether batched input and output are (B, T, features) instead of (T, B, features).',
    'dropout': 'dropout : float in [0, 1], default 0.0\n        Dropout on the output of every layer but the last, in training mode only.',
    'bidirectional': "bidirectional : bool, default False\n        Whether each layer also runs backwards in time, its output concatenated after\n        the forward one's.",
    'dtype': 'dtype : np.float32 or np.float64, default np.float32\n        The dtype of the parameters, and the one inputs must have.',
    'seed': 'seed : int, optional\n        Seeds the initialisation, U(-1/sqrt(H), 1/sqrt(H)), and the dropout masks.',
    'backend': 'backend : str, optional\n        "cython", "numba" or "numpy"; None follows `rnncore.set_backend`.',
    'raises': 'Raises\n    ------\n    ValueError, TypeError\n        A size, option or dtype out of range, naming the argument.',
}


def _shared_docs(cls):
    """Fill the `%(name)s` entries of `cls`'s docstring from `_PARAMETER_DOCS`."""
    cls.__doc__ = cls.__doc__ % _PARAMETER_DOCS
    return cls


@_shared_docs
class RNN(_OneState):
    """Elman RNN: h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), act tanh or relu.

    Parameters
    ----------
    %(input_size)s
    %(hidden_size)s
    %(num_layers)s
    nonlinearity : {"tanh", "relu"}, default "tanh"
    %(bias)s
    %(batch_first)s
    %(dropout)s
    %(bidirectional)s
    %(dtype)s
    %(seed)s
    %(backend)s

    %(raises)s

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> rnn = rc.RNN(3, 5, num_layers=2, seed=0)
    >>> y, h_n = rnn(np.zeros((7, 2, 3), dtype=np.float32))
    >>> y.shape, h_n.shape
    ((7, 2, 5), (2, 2, 5))
    >>> dx, dh0 = rnn.backward(np.ones_like(y))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 dtype: DTypeLike = np.float32, seed: Optional[int] = None, backend: Optional[str] = None) -> None:
        _validate.choice("nonlinearity", nonlinearity, ACTIVATIONS)
        super().__init__("rnn", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype, seed, backend, nonlinearity=nonlinearity)
        self.nonlinearity = nonlinearity


@_shared_docs
class GRU(_OneState):
    """GRU, gates r, z, n. reset_after=True: n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    (PyTorch, cuDNN); False: n = tanh(W_in x + b_in + W_hn (r * h) + b_hn) (Cho et al.).

    Parameters
    ----------
    %(input_size)s
    %(hidden_size)s
    %(num_layers)s
    %(bias)s
    %(batch_first)s
    %(dropout)s
    %(bidirectional)s
    reset_after : bool, default True
        Which form of the candidate n (above).
    %(dtype)s
    %(seed)s
    %(backend)s

    %(raises)s

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> gru = rc.GRU(3, 4, batch_first=True, bidirectional=True, seed=0)
    >>> y, h_n = gru(np.zeros((2, 7, 3), dtype=np.float32))
    >>> y.shape, h_n.shape
    ((2, 7, 8), (2, 2, 4))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 reset_after: bool = True, dtype: DTypeLike = np.float32, seed: Optional[int] = None,
                 backend: Optional[str] = None) -> None:
        reset_after = _validate.flag("reset_after", reset_after)
        super().__init__("gru", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype, seed, backend, reset_after=reset_after)
        self.reset_after = reset_after


@_shared_docs
class LSTM(_Recurrent):
    """LSTM, gates i, f, g, o; optional projection (proj_size), peepholes and coupled
    input-forget gate (then the weights hold i, g, o and f = 1 - i).

    Parameters
    ----------
    %(input_size)s
    %(hidden_size)s
    %(num_layers)s
    %(bias)s
    %(batch_first)s
    %(dropout)s
    %(bidirectional)s
    proj_size : int, default 0
        With 0 < proj_size < hidden_size, h is projected to proj_size by `weight_hr_l{k}`.
    peephole : bool, default False
        Whether i and f see c_{t-1} and o sees c_t, through `weight_ci_l{k}`,
        `weight_cf_l{k}`, `weight_co_l{k}` of shape (H,).
    coupled_input_forget : bool, default False
        Whether f = 1 - i (the weights then hold three gates, i, g, o).
    %(dtype)s
    %(seed)s
    %(backend)s

    %(raises)s

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> lstm = rc.LSTM(3, 8, proj_size=4, seed=0)
    >>> y, (h_n, c_n) = lstm(np.zeros((7, 2, 3), dtype=np.float32))
    >>> y.shape, h_n.shape, c_n.shape
    ((7, 2, 4), (1, 2, 4), (1, 2, 8))
    >>> dx, (dh0, dc0) = lstm.backward(np.ones_like(y))
    """

    _state_names = ("h0", "c0")

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 peephole: bool = False, coupled_input_forget: bool = False, dtype: DTypeLike = np.float32,
                 seed: Optional[int] = None, backend: Optional[str] = None) -> None:
        _validate.positive_int("proj_size", proj_size, minimum=0)
        if proj_size >= _validate.positive_int("hidden_size", hidden_size):
            raise ValueError(f"proj_size: expected 0 or less than hidden_size ({hidden_size}), got {proj_size}")
        super().__init__("lstm", input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, dtype, seed, backend, proj_size=int(proj_size),
                         peephole=_validate.flag("peephole", peephole),
                         coupled_input_forget=_validate.flag("coupled_input_forget", coupled_input_forget))
        self.proj_size = int(proj_size)
        self.peephole = bool(peephole)
        self.coupled_input_forget = bool(coupled_input_forget)

    def __call__(self, x: ArrayLike, hx: Optional[tuple[Optional[ArrayLike], Optional[ArrayLike]]] = None,
                 lengths: Optional[ArrayLike] = None, check_finite: bool = True,
                 ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Run the LSTM over a sequence: ``y, (h_n, c_n) = lstm(x, hx=None, lengths=None)``.

        Parameters
        ----------
        x : array_like, (T, B, I), (B, T, I) if batch_first, or (T, I) unbatched
            The input sequence, of the layer's dtype.
        hx : pair (h0, c0), optional
            h0 (D*num_layers, B, proj_size or H) and c0 (D*num_layers, B, H), either None
            for zeros; without the B axis for unbatched x.
        lengths : array_like of int, (B,), optional
            Each sequence's length; later steps give y = 0 and leave the state alone.
        check_finite : bool, default True
            Whether to refuse NaN and infinity in x and hx.

        Returns
        -------
        y : np.ndarray, (T, B, D*(proj_size or H)) (or as x is laid out)
        (h_n, c_n) : pair of np.ndarray, shaped as h0 and c0

        Raises
        ------
        ValueError, TypeError
            A wrong shape, dtype, length or non-finite value, before any compute.
        """
        y, (h_n, c_n) = self._forward(x, _pair("hx", hx), lengths, check_finite)
        return y, (h_n, c_n)

    forward = __call__

    def backward(self, dy: ArrayLike, dh_n: Optional[tuple[Optional[ArrayLike], Optional[ArrayLike]]] = None,
                 ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Back-propagate through the last training-mode forward, adding the parameter
        gradients into `grads`: ``dx, (dh0, dc0) = lstm.backward(dy, (dh_n, dc_n))``.

        Parameters
        ----------
        dy : array_like, the shape of that forward's y
        dh_n : pair (dh_n, dc_n), optional
            Gradients with respect to h_n and c_n, either None for zeros.

        Returns
        -------
        dx : np.ndarray, the shape of x
        (dh0, dc0) : pair of np.ndarray, shaped as h0 and c0

        Raises
        ------
        RuntimeError
            No training-mode forward, or its context was already consumed by a backward.
        ValueError, TypeError
            A wrong shape, dtype or non-finite gradient; nothing changes.
        """
        dx, (dh0, dc0) = self._backward(dy, _pair("dh_n", dh_n))
        return dx, (dh0, dc0)


def _pair(name, value):
    if value is None:
        return (None, None)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name}: expected a pair (h, c) or None, got {type(value).__name__}")
    return tuple(value)


@_shared_docs
class JordanRNN(_Recurrent):
    """Jordan RNN, fed back from the previous output:
    h_t = act(W_ih x_t + b_ih + W_hh y_{t-1} + b_hh),  y_t = act_o(W_ho h_t + b_ho).

    One layer, one direction. `y, y_n = jordan(x, y0=None, lengths=None)` with y (T, B,
    output_size) and y0, y_n of shape (1, B, output_size), as a one-layer h0/h_n.

    Parameters
    ----------
    %(input_size)s
    %(hidden_size)s
    output_size : int
        Units of the output y, O, which is fed back.
    nonlinearity : {"tanh", "relu"}, default "tanh"
    output_activation : {"identity", "tanh", "sigmoid"}, default "identity"
    %(bias)s
    %(batch_first)s
    %(dtype)s
    %(seed)s
    %(backend)s

    %(raises)s

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> jordan = rc.JordanRNN(3, 8, 2, seed=0)
    >>> y, y_n = jordan(np.zeros((7, 4, 3), dtype=np.float32))
    >>> y.shape, y_n.shape
    ((7, 4, 2), (1, 4, 2))
    """

    _state_names = ("y0",)

    def __init__(self, input_size: int, hidden_size: int, output_size: int, nonlinearity: str = "tanh",
                 output_activation: str = "identity", bias: bool = True, batch_first: bool = False,
                 dtype: DTypeLike = np.float32, seed: Optional[int] = None, backend: Optional[str] = None) -> None:
        _validate.choice("nonlinearity", nonlinearity, ACTIVATIONS)
        _validate.choice("output_activation", output_activation, OUTPUT_ACTIVATIONS)
        super().__init__("jordan", input_size, hidden_size, 1, bias, batch_first, 0.0, False, dtype, seed,
                         backend, nonlinearity=nonlinearity, output_activation=output_activation,
                         output_size=_validate.positive_int("output_size", output_size))
        self.output_size = int(output_size)
        self.nonlinearity = nonlinearity
        self.output_activation = output_activation

    def __call__(self, x: ArrayLike, y0: Optional[ArrayLike] = None, lengths: Optional[ArrayLike] = None,
                 check_finite: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Run the layer: ``y, y_n = jordan(x, y0=None, lengths=None)``, y (T, B, O) (or as
        x is laid out), y0 and y_n (1, B, O) (y0 None: zeros); otherwise as `RNN.__call__`."""
        y, (y_n,) = self._forward(x, (y0,), lengths, check_finite)
        return y, y_n

    forward = __call__

    def backward(self, dy: ArrayLike, dy_n: Optional[ArrayLike] = None) -> tuple[np.ndarray, np.ndarray]:
        """``dx, dy0 = jordan.backward(dy, dy_n=None)``: as `RNN.backward`, with dy_n and dy0
        shaped as y_n and y0."""
        dx, (dy0,) = self._backward(dy, (dy_n,))
        return dx, dy0
