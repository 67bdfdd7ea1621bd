"""Feed-forward pieces that sit around the recurrent layers, and `Sequential` to chain
them. Each has `forward` (calling it) and `backward`, and the layers' conventions:
`parameters()`, `grads`, `zero_grad()`, `state_dict()`, `load_state_dict()`,
`train()/eval()`. `backward` adds parameter gradients into `grads` and returns the
gradient of the input of the last training-mode forward, whose saved context it consumes
(the one-context rule of rnncore.layers).
"""
from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping
from typing import Any, Optional

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from ..core import functional, validate
from ..core.docs import filled
from ..core.layers import _Recurrent
from ..core.module import Module, commit, copy_state, deferred_commits, indent, register, registered, saved_context

__all__ = ["Linear", "Embedding", "Tanh", "ReLU", "Sigmoid", "LastStep", "Sequential", "SequentialStream"]


# The entries the modules' docstrings share, filled in by `filled(_DOCS)`
_DOCS = {
    'dtype': 'dtype : np.float32 or np.float64, default np.float32\n        The dtype of the parameters, and the one inputs must have.',
    'seed': 'seed : int, optional\n        Seeds the initialisation.',
    'init_raises': 'Raises\n    ------\n    ValueError, TypeError\n        A size, option or dtype out of range, naming the argument.',
    'call_raises': 'Raises\n        ------\n        ValueError, TypeError\n            A wrong shape, dtype or value, before any compute.',
    'dy': 'dy : array_like, the shape of the forward\'s output\n            The gradient of the loss with respect to that output, of its dtype.',
    'backward_raises': 'Raises\n        ------\n        RuntimeError\n            No training-mode forward, or its context was already consumed by a backward.\n'
                       '        ValueError, TypeError\n            A wrong shape, dtype or non-finite gradient; nothing changes.',
}


def _saved_or_raise(module):
    return saved_context(module, f"{type(module).__name__}.backward: there is no training-mode forward to "
                                 "back-propagate through (call it in train() mode first)")


def _gradient(name: str, dy: Any, like: np.ndarray) -> np.ndarray:
    """`dy` checked against the output `like` of the forward it belongs to."""
    dy = validate.array(name, dy, like.dtype)
    validate.shape(name, dy, like.shape)
    validate.finite(name, dy)
    return dy


def _linear(x, weight, bias):
    """x @ weight.T + bias, as Linear computes it (and a stream, step by step: numpy runs
    a (T, B, in) input as T products of (B, in), so the bits agree)."""
    y = x @ weight.T
    if bias is not None:
        y += bias
    return y


def _linear_input(x, in_features, dtype):
    """x checked as Linear takes it: its dtype, (..., in_features), finite."""
    x = validate.array("x", x, dtype)
    if x.ndim < 1 or x.shape[-1] != in_features:
        raise ValueError(f"x: expected shape (..., {in_features}), got {x.shape}")
    validate.finite("x", x)
    return x


def _lookup(weight, indices):
    """weight[indices] after checking the indices, as Embedding computes it."""
    indices = validate.to_numpy(indices, "indices")
    if indices.dtype.kind not in "iu":
        raise TypeError(f"indices: expected integers, got dtype {indices.dtype}")
    if indices.size == 1:
        # one token a step (generation): a Python comparison, not two reductions
        low = high = int(indices.reshape(-1)[0])
    else:
        low, high = (indices.min(), indices.max()) if indices.size else (0, 0)
    if low < 0 or high >= weight.shape[0]:
        raise ValueError(f"indices: expected values in [0, {weight.shape[0] - 1}], got min {low}, max {high}")
    return weight[indices]


@filled(_DOCS)
@register
class Linear(Module):
    """y = x @ weight.T + bias over the last axis of x (..., in_features), as torch.nn.Linear:
    weight (out_features, in_features), bias (out_features,), both U(-1/sqrt(in), 1/sqrt(in)).

    Parameters
    ----------
    in_features : int
        Features of the input's last axis.
    out_features : int
        Features of the output's last axis.
    bias : bool, default True
        Whether the module has `bias`.
    %(dtype)s
    %(seed)s

    %(init_raises)s

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> linear = rc.Linear(3, 2, seed=0)
    >>> y = linear(np.ones((4, 3), dtype=np.float32))
    >>> y.shape
    (4, 2)
    >>> linear.backward(np.ones_like(y)).shape
    (4, 3)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype: DTypeLike = np.float32,
                 seed: Optional[int] = None) -> None:
        self.in_features = validate.positive_int("in_features", in_features)
        self.out_features = validate.positive_int("out_features", out_features)
        self.dtype = validate.float_dtype(dtype)
        self.bias = validate.flag("bias", bias)
        shapes: dict[str, tuple[int, ...]] = {"weight": (self.out_features, self.in_features)}
        if self.bias:
            shapes["bias"] = (self.out_features,)
        self._init_params(shapes, self.in_features, seed)

    @filled(_DOCS)
    def __call__(self, x: ArrayLike) -> np.ndarray:
        """``y = linear(x)``; in training mode the input is kept for one `backward`.

        Parameters
        ----------
        x : array_like, (..., in_features)
            The input, of the module's dtype.

        Returns
        -------
        y : np.ndarray, (..., out_features)

        %(call_raises)s
        """
        x = _linear_input(x, self.in_features, self.dtype)
        y = _linear(x, self._params["weight"], self._params.get("bias"))
        self._saved = (x, y) if self.training else None
        return y

    def _stepper(self, first):
        """y = f(x) over copies of the weights now, for a stream; its input is checked
        where it is the caller's (`first`), not where it is a module's output."""
        weight, bias = self._params["weight"].copy(), self._params.get("bias")
        bias = None if bias is None else bias.copy()
        if not first:
            return lambda x: _linear(x, weight, bias)
        in_features, dtype = self.in_features, self.dtype
        return lambda x: _linear(_linear_input(x, in_features, dtype), weight, bias)

    forward = __call__

    @filled(_DOCS)
    def backward(self, dy: ArrayLike) -> np.ndarray:
        """``dx = linear.backward(dy)``; adds into grads["weight"], grads["bias"].

        Parameters
        ----------
        %(dy)s

        Returns
        -------
        dx : np.ndarray, (..., in_features)
            The gradient of the loss with respect to x.

        %(backward_raises)s
        """
        saved = x, y = _saved_or_raise(self)
        dy = _gradient("dy", dy, y)
        rows_dy = dy.reshape(-1, self.out_features)
        # dW = dy.T @ x    (out, in) = (out, N) x (N, in), N = all leading axes
        grads = {"weight": rows_dy.T @ x.reshape(-1, self.in_features)}
        if self.bias:
            grads["bias"] = rows_dy.sum(axis=0)
        dx = dy @ self._params["weight"]
        commit([(self, saved, grads)])
        return dx


@filled(_DOCS)
@register
class Embedding(Module):
    """Row lookup: integer indices (...) -> weight[indices] (..., embedding_dim), as
    torch.nn.Embedding, weight (num_embeddings, embedding_dim) drawn N(0, 1).

    Parameters
    ----------
    num_embeddings : int
        Rows of the table: indices lie in [0, num_embeddings - 1].
    embedding_dim : int
        Features of each row.
    %(dtype)s
    %(seed)s

    %(init_raises)s

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> embedding = rc.Embedding(10, 4, seed=0)
    >>> y = embedding(np.array([[1, 2, 2]]))
    >>> y.shape
    (1, 3, 4)
    >>> embedding.backward(np.ones_like(y)) is None
    True
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype: DTypeLike = np.float32,
                 seed: Optional[int] = None) -> None:
        self.num_embeddings = validate.positive_int("num_embeddings", num_embeddings)
        self.embedding_dim = validate.positive_int("embedding_dim", embedding_dim)
        self.dtype = validate.float_dtype(dtype)
        self._init_params({"weight": (self.num_embeddings, self.embedding_dim)}, 1, seed)
        # PyTorch draws embeddings from N(0, 1), not the recurrent layers' uniform
        self._params["weight"][...] = self._rng.standard_normal(self._params["weight"].shape)

    def __call__(self, indices: ArrayLike) -> np.ndarray:
        """``y = embedding(indices)``; in training mode the indices are kept for one `backward`.

        Parameters
        ----------
        indices : array_like of int, (...)
            Row numbers in [0, num_embeddings - 1].

        Returns
        -------
        y : np.ndarray, (..., embedding_dim)
            The rows looked up (a copy).

        Raises
        ------
        TypeError
            indices are not integers.
        ValueError
            An index out of range.
        """
        indices = validate.to_numpy(indices, "indices")
        y = _lookup(self._params["weight"], indices)
        self._saved = (indices, y) if self.training else None
        return y

    def _stepper(self, first):
        """y = f(indices) over a copy of the table now, for a stream."""
        return functools.partial(_lookup, self._params["weight"].copy())

    forward = __call__

    @filled(_DOCS)
    def backward(self, dy: ArrayLike) -> None:
        """Add into grads["weight"] the rows looked up (repeated indices accumulate).

        Parameters
        ----------
        %(dy)s

        Returns
        -------
        None
            Integer inputs have no gradient.

        %(backward_raises)s
        """
        saved = indices, y = _saved_or_raise(self)
        dy = _gradient("dy", dy, y)
        # a row update: only the rows looked up change (commit adds them with np.add.at,
        # so that repeated indices accumulate)
        commit([(self, saved, {"weight": (indices.ravel(), dy.reshape(-1, self.embedding_dim))})])
        return None


def _float_input(x: Any) -> np.ndarray:
    x = validate.to_numpy(x, "x")
    validate.float_dtype(x.dtype, "x")
    return x


class _Activation(Module):
    """Element-wise y = f(x) whose derivative is a function of y alone."""

    @filled(_DOCS)
    def __call__(self, x: ArrayLike) -> np.ndarray:
        """``y = f(x)`` element-wise; in training mode y is kept for one `backward`.

        Parameters
        ----------
        x : array_like of float, any shape

        Returns
        -------
        y : np.ndarray, the shape and dtype of x

        %(call_raises)s
        """
        y = self._function(_float_input(x))
        self._saved = y if self.training else None
        return y

    def _stepper(self, first):
        return (lambda x: self._function(_float_input(x))) if first else self._function

    forward = __call__

    @filled(_DOCS)
    def backward(self, dy: ArrayLike) -> np.ndarray:
        """``dx = activation.backward(dy)``, dy * f'(x).

        Parameters
        ----------
        %(dy)s

        Returns
        -------
        dx : np.ndarray, the shape of x

        %(backward_raises)s
        """
        y = _saved_or_raise(self)
        dx = _gradient("dy", dy, y) * self._derivative(y)
        commit([(self, y, {})])
        return dx


@register
class Tanh(_Activation):
    """y = tanh(x), element-wise; no parameters.

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> print(np.round(rc.Tanh()(np.array([-1.0, 0.0, 1.0])), 4))
    [-0.7616  0.      0.7616]
    """

    @staticmethod
    def _function(x):
        return np.tanh(x)

    @staticmethod
    def _derivative(y):
        return 1 - y * y


@register
class Sigmoid(_Activation):
    """y = 1 / (1 + exp(-x)), computed without overflow, element-wise; no parameters.

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> print(np.round(rc.Sigmoid()(np.array([-1.0, 0.0, 1.0])), 4))
    [0.2689 0.5    0.7311]
    """

    @staticmethod
    def _function(x):
        # written via tanh: exact sigmoid without overflow in exp for large |x|
        return 0.5 * (np.tanh(0.5 * x) + 1)

    @staticmethod
    def _derivative(y):
        return y * (1 - y)


@register
class ReLU(_Activation):
    """y = max(x, 0); NaN passes through, as torch.nn.ReLU, element-wise; no parameters.

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> print(np.round(rc.ReLU()(np.array([-1.0, 0.0, 1.0])), 4))
    [0. 0. 1.]
    """

    @staticmethod
    def _function(x):
        return np.maximum(x, 0)

    @staticmethod
    def _derivative(y):
        # torch's threshold_backward: zero where y <= 0, so a NaN output passes dy on
        return (~(y <= 0)).astype(y.dtype)


@register
class LastStep(Module):
    """The output of each sequence's last valid step: (T, B, H) -> (B, H), or with
    `lengths`, y[lengths[b] - 1, b]. `batch_first=True` takes (B, T, H).

    Parameters
    ----------
    batch_first : bool, default False
        Whether the input is (B, T, H) instead of (T, B, H).

    Raises
    ------
    ValueError
        batch_first is not a bool.

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> y = np.arange(12.0).reshape(3, 2, 2)
    >>> rc.LastStep()(y, lengths=[3, 1])
    array([[8., 9.],
           [2., 3.]])
    """

    def __init__(self, batch_first: bool = False) -> None:
        super().__init__()
        self.batch_first = validate.flag("batch_first", batch_first)

    def get_config(self):
        return {"batch_first": self.batch_first}

    def __call__(self, y: ArrayLike, lengths: Optional[ArrayLike] = None) -> np.ndarray:
        """``last = last_step(y, lengths=None)``.

        Parameters
        ----------
        y : array_like of float, (T, B, H), or (B, T, H) with batch_first
            A recurrent layer's output.
        lengths : array_like of int, (B,), optional
            Each sequence's length, 1 <= lengths[b] <= T; None: all T.

        Returns
        -------
        last : np.ndarray, (B, H)

        Raises
        ------
        ValueError, TypeError
            A wrong shape, dtype or length, before any compute.
        """
        y = _float_input(y)
        if y.ndim != 3:
            raise ValueError(f"y: expected 3 dimensions ({'B, T' if self.batch_first else 'T, B'}, H), "
                             f"got shape {y.shape}")
        time_major = y.transpose(1, 0, 2) if self.batch_first else y
        T, B, _ = time_major.shape
        last = (np.full(B, T - 1, dtype=np.int64) if lengths is None
                else validate.lengths(lengths, B, T) - 1)
        self._saved = (time_major.shape, time_major.dtype, last) if self.training else None
        return time_major[last, np.arange(B)]

    forward = __call__

    @filled(_DOCS)
    def backward(self, dlast: ArrayLike) -> np.ndarray:
        """``dy = last_step.backward(dlast)``: dlast at each last step, zeros elsewhere.

        Parameters
        ----------
        dlast : array_like, (B, H)
            The gradient of the loss with respect to the output, of its dtype.

        Returns
        -------
        dy : np.ndarray, the shape of y

        %(backward_raises)s
        """
        saved = shape, dtype, last = _saved_or_raise(self)
        dlast = validate.array("dlast", dlast, dtype)
        validate.shape("dlast", dlast, (shape[1], shape[2]))
        dy = np.zeros(shape, dtype=dtype)
        dy[last, np.arange(shape[1])] = dlast
        commit([(self, saved, {})])
        return dy.transpose(1, 0, 2) if self.batch_first else dy


def _commits(module):
    """Whether `module`'s backward adds its gradients through `commit`, so that a chain can
    defer them (rnncore's own modules do)."""
    return isinstance(module, (Module, Sequential))


@register
class Sequential:
    """Modules applied in order, with forward and backward through all of them.

        y, states = model(x, states=None, lengths=None)
        dx, dstates0 = model.backward(dy, dstates=None)

    `states` has one entry per recurrent layer in the chain, in order: its initial state
    as the layer takes it (h0, or (h0, c0) for an LSTM), or None for zeros; the returned
    `states` are the final ones in the same form, ready to carry into the next chunk of a
    long series (truncated BPTT). `lengths` goes to the recurrent layers and to LastStep.
    Parameters and gradients are named "<index>.<name>", as in a torch.nn.Sequential's
    state_dict. A Sequential of registered modules is a registered checkpoint class itself:
    rnncore.save/load round-trip it whole, configuration and weights.

    Parameters
    ----------
    *modules : modules
        Applied in this order; each needs forward, backward, parameters, grads and train.

    Raises
    ------
    TypeError
        A module lacks one of those, naming its index.

    Examples
    --------
    >>> import numpy as np, rnncore as rc
    >>> model = rc.Sequential(rc.LSTM(3, 8, seed=0), rc.LastStep(), rc.Linear(8, 1, seed=1))
    >>> out, states = model(np.zeros((5, 2, 3), dtype=np.float32))
    >>> out.shape, len(states)
    ((2, 1), 1)
    >>> dx, dstates0 = model.backward(np.ones_like(out))
    >>> dx.shape
    (5, 2, 3)
    """

    def __init__(self, *modules: Any) -> None:
        for i, module in enumerate(modules):
            missing = [a for a in ("parameters", "grads", "backward", "train") if not hasattr(module, a)]
            if missing:
                raise TypeError(f"modules[{i}]: expected a module with forward and backward, got "
                                f"{type(module).__name__} (lacks {', '.join(missing)})")
        self.modules = list(modules)
        self._recurrent = [i for i, m in enumerate(self.modules) if isinstance(m, _Recurrent)]
        self.training = True

    def get_config(self) -> dict[str, Any]:
        """{"modules": [{"class": registered name, "config": its get_config()}, ...]}: what
        from_config needs to rebuild the chain (weights travel in state_dict).

        Returns
        -------
        config : dict

        Raises
        ------
        TypeError
            A module's class is not a registered checkpoint class.
        """
        names: dict[type, str] = {}
        for name, cls in registered().items():
            # the first name of a class registered twice, the one rnncore.save records
            names.setdefault(cls, name)
        unregistered = [f"modules[{i}] ({type(m).__name__})" for i, m in enumerate(self.modules)
                        if type(m) not in names]
        if unregistered:
            raise TypeError(f"Sequential.get_config: {', '.join(unregistered)} not registered checkpoint "
                            f"classes; register them with rnncore.checkpoint.register")
        return {"modules": [{"class": names[type(m)], "config": m.get_config()} for m in self.modules]}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Sequential:
        """A Sequential of freshly built modules, each from its registered class and config.

        Parameters
        ----------
        config : mapping
            What get_config returned.

        Returns
        -------
        Sequential

        Raises
        ------
        ValueError
            config is not of that form, or names a class not registered.
        """
        classes = registered()
        entries = config.get("modules") if isinstance(config, Mapping) else None
        if not isinstance(entries, (list, tuple)):
            raise ValueError(f"Sequential.from_config: expected {{'modules': [...]}}, got {config!r}")
        modules = []
        for i, entry in enumerate(entries):
            if not (isinstance(entry, Mapping) and isinstance(entry.get("config"), Mapping)
                    and entry.get("class") in classes):
                raise ValueError(f"Sequential.from_config: modules[{i}]: expected {{'class': a registered name, "
                                 f"'config': {{...}}}} (registered: {sorted(classes)}), got {entry!r}")
            module_class, module_config = classes[entry["class"]], dict(entry["config"])
            # the same fallback a checkpointed layer gets at the top level: a backend this
            # machine lacks must not make the whole model unloadable
            if module_config.get("backend") is not None and module_config["backend"] not in functional.backends():
                warnings.warn(f"Sequential.from_config: modules[{i}] was configured with backend="
                              f"{module_config['backend']!r}, which is not available here; using the default "
                              f"backend", RuntimeWarning, stacklevel=2)
                module_config["backend"] = None
            build = getattr(module_class, "from_config", None)
            modules.append(build(module_config) if callable(build) else module_class(**module_config))
        return cls(*modules)

    def __repr__(self):
        # one module per line, numbered as in the state_dict's names; still a valid call
        lines = "".join(f"\n  {indent(repr(m))},  # {i}" for i, m in enumerate(self.modules))
        return f"Sequential({lines}\n)"

    def __len__(self):
        return len(self.modules)

    def __getitem__(self, index):
        return self.modules[index]

    def _state_list(self, name, states):
        if states is None:
            return [None] * len(self._recurrent)
        if not isinstance(states, (list, tuple)) or len(states) != len(self._recurrent):
            raise ValueError(f"{name}: expected a list of {len(self._recurrent)} states (one per recurrent "
                             f"layer) or None, got {type(states).__name__} of length "
                             f"{len(states) if hasattr(states, '__len__') else '?'}")
        return list(states)

    def __call__(self, x: ArrayLike, states: Optional[list] = None, lengths: Optional[ArrayLike] = None,
                 memory: str = "full") -> tuple[Any, list]:
        """``y, states = model(x, states=None, lengths=None)``.

        Parameters
        ----------
        x : array_like
            The first module's input.
        states : list, optional
            One initial state per recurrent layer, in order (h0, or (h0, c0) for an LSTM,
            or None for zeros); None: zeros for all.
        lengths : array_like of int, (B,), optional
            Passed to the recurrent layers and to LastStep.
        memory : {"full", "lean"}, default "full"
            Passed to the recurrent layers (`RNN.__call__`'s: "lean" keeps a state every
            k steps for the backward, not every step's activations).

        Returns
        -------
        y : np.ndarray
            The last module's output.
        states : list
            The final state of each recurrent layer, in the form `states` takes.

        Raises
        ------
        ValueError, TypeError
            states of the wrong length, or what a module raises.
        """
        functional.check_memory(memory)
        states = iter(self._state_list("states", states))
        finals = []
        for module in self.modules:
            if isinstance(module, _Recurrent):
                x, final = module(x, next(states), lengths, memory=memory)
                finals.append(final)
            elif isinstance(module, LastStep):
                x = module(x, lengths)
            else:
                x = module(x)
        return x, finals

    forward = __call__

    def backward(self, dy: Any, dstates: Optional[list] = None) -> tuple[Optional[np.ndarray], list]:
        """Back through every module; returns the input gradient (None when the first
        module takes integers) and the initial-state gradients, one per recurrent layer.
        All or nothing: every module's gradients are computed before any is added or any
        saved context consumed, so an error in one module leaves them all as they were.

        Parameters
        ----------
        dy : array_like
            The gradient of the loss with respect to the last module's output.
        dstates : list, optional
            One gradient per recurrent layer for its final state (None entries: zeros).

        Returns
        -------
        dx : np.ndarray or None
            The gradient of the input; None when the first module takes integers.
        dstates0 : list
            The gradients of the initial states, one per recurrent layer.

        Raises
        ------
        RuntimeError
            A module has no training-mode forward to back-propagate through.
        ValueError, TypeError
            A wrong shape, dtype or number of states; no module changes.
        """
        dstates = self._state_list("dstates", dstates)
        dstates0 = [None] * len(self._recurrent)
        # a module of the user's own adds its gradients at once: restored if a later one fails
        foreign = [{name: grad.copy() for name, grad in m.grads.items()} if not _commits(m) else None
                   for m in self.modules]
        try:
            with deferred_commits() as entries:
                for index in reversed(range(len(self.modules))):
                    module = self.modules[index]
                    if dy is None:
                        raise ValueError(f"modules[{index}]: expected the integer-input module to come first, "
                                         f"got {type(self.modules[index + 1]).__name__} after it")
                    if isinstance(module, _Recurrent):
                        k = self._recurrent.index(index)
                        dy, dstates0[k] = module.backward(dy, dstates[k])
                    else:
                        dy = module.backward(dy)
            commit(entries)
        except BaseException:
            for module, grads in zip(self.modules, foreign):
                for name, grad in (grads or {}).items():
                    module.grads[name][...] = grad
            raise
        return dy, dstates0

    def _named(self, attribute):
        return {f"{i}.{name}": value for i, module in enumerate(self.modules)
                for name, value in attribute(module).items()}

    def parameters(self) -> dict[str, np.ndarray]:
        """The live parameter arrays of every module, named "<index>.<name>"."""
        return self._named(lambda m: m.parameters())

    @property
    def grads(self) -> dict[str, np.ndarray]:
        """The live gradient arrays, with the names of parameters()."""
        return self._named(lambda m: m.grads)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Every module's state_dict, named "<index>.<name>"."""
        return self._named(lambda m: m.state_dict())

    def load_state_dict(self, mapping: Mapping[str, ArrayLike], strict: bool = True) -> None:
        """Load "<index>.<name>" keys into the modules; everything is checked before
        anything is copied, so a bad mapping leaves every module unchanged.

        Parameters
        ----------
        mapping : mapping of str to array_like
            As state_dict returns.
        strict : bool, default True
            Whether missing and unexpected keys are an error.

        Raises
        ------
        KeyError, ValueError, TypeError
            A missing or unexpected key (strict), or a wrong shape or dtype.
        """
        copy_state(self.parameters(), mapping, strict)

    def zero_grad(self) -> None:
        """Set every module's gradients to zero, in place."""
        for module in self.modules:
            module.zero_grad()

    def train(self, mode: bool = True) -> Sequential:
        """Set training mode (or eval mode, mode=False) on every module; returns self.

        Parameters
        ----------
        mode : bool, default True
        """
        self.training = validate.flag("mode", mode)
        for module in self.modules:
            module.train(mode)
        return self

    def eval(self) -> Sequential:
        """Eval mode on every module, ``train(False)``; returns self."""
        return self.train(False)

    def num_parameters(self) -> int:
        """The number of scalar parameters of all the modules."""
        return sum(int(math.prod(p.shape)) for p in self.parameters().values())

    def stream(self, batch_size: Optional[int] = 1) -> SequentialStream:
        """A stream over the whole chain: inference one step (or one chunk) per call, the
        recurrent layers' states carried between calls; every module's weights copied
        now (see `rnncore.Stream`).

        Parameters
        ----------
        batch_size : int or None, default 1
            The rows stepped together; None: one unbatched sequence.

        Returns
        -------
        SequentialStream

        Raises
        ------
        ValueError
            A bidirectional layer, or no recurrent layer in the chain.
        TypeError
            A module that cannot step (one of the user's own), naming its index.

        Examples
        --------
        >>> import numpy as np, rnncore as rc
        >>> model = rc.Sequential(rc.Embedding(5, 3, seed=0), rc.LSTM(3, 4, seed=1), rc.Linear(4, 5, seed=2))
        >>> stream = model.stream(batch_size=2)
        >>> stream.step(np.array([1, 4])).shape
        (2, 5)
        >>> y, _ = model.eval()(np.array([[1, 4]]))
        >>> bool(np.array_equal(stream.state[0][0], _[0][0]))
        True
        """
        return SequentialStream(self, batch_size)


class SequentialStream:
    """A `Sequential` stepped through time: ``y_t = stream.step(x_t)``, ``y =
    stream(x_chunk)``, ``stream.state``, ``stream.reset(state=None, rows=None)``,
    ``stream.refresh()``, made by ``model.stream(batch_size)``.

    Each recurrent layer runs as a `rnncore.Stream`; Linear, Embedding and the
    activations apply to each step as they apply to a whole sequence, with the weights
    copied when the stream was made. Stepping gives the model's output bit for bit. A
    model with LastStep outputs, at each step, what the model outputs for the sequence
    so far (the recurrent output at that step); a chunk call then returns the model's
    output for the chunk, as calling the model on it with the states carried does.

    Attributes
    ----------
    batch_size : int or None
    steps : int
        Steps taken since the stream was made (its recurrent layers' streams').
    """

    def __init__(self, model: Sequential, batch_size: Optional[int] = 1):
        self.model, self.batch_size = model, batch_size
        if not model._recurrent:
            raise ValueError("stream: expected a model with a recurrent layer, got none (a feed-forward "
                             "model has no state to carry: call it on each step)")
        for i, module in enumerate(model.modules):
            if not isinstance(module, (_Recurrent, LastStep)) and not (
                    hasattr(module, "_stepper") and type(module).__module__ == __name__):
                raise TypeError(f"stream: modules[{i}] ({type(module).__name__}) cannot step: expected "
                                f"rnncore's recurrent layers, Linear, Embedding, activations or LastStep")
        self._streams = [model.modules[i].stream(batch_size) for i in model._recurrent]
        self._build()

    def _build(self):
        """Each module's step over its weights now: a recurrent layer's is its stream."""
        streams = iter(self._streams)
        self._pieces = [("recurrent", next(streams)) if isinstance(module, _Recurrent)
                        else ("last", module) if isinstance(module, LastStep)
                        else ("apply", module._stepper(first=i == 0))
                        for i, module in enumerate(self.model.modules)]

    @property
    def steps(self) -> int:
        return self._streams[0].steps

    def step(self, x_t: ArrayLike, check_finite: bool = True) -> np.ndarray:
        """Advance one step: ``y_t = stream.step(x_t)``.

        Parameters
        ----------
        x_t : array_like, (batch_size, ...), or without the batch axis when batch_size
            is None
            One step of the first module's input (features, or integer tokens for an
            Embedding).
        check_finite : bool, default True
            Whether the recurrent layers refuse NaN and infinity.

        Returns
        -------
        y_t : np.ndarray
            The last module's output for this step.

        Raises
        ------
        ValueError, TypeError
            A wrong shape, dtype or value; the states are left as they were.
        """
        if self.batch_size is not None:
            arr = x_t if isinstance(x_t, np.ndarray) else validate.to_numpy(x_t, "x_t")
            if arr.ndim < 1 or arr.shape[0] != self.batch_size:
                raise ValueError(f"x_t: expected batch_size={self.batch_size} rows first, got shape {arr.shape}")
            x_t = arr
        for kind, piece in self._pieces:
            if kind == "recurrent":
                x_t = piece.step(x_t, check_finite=check_finite)
            elif kind == "apply":
                x_t = piece(x_t)
        return x_t

    def __call__(self, x: ArrayLike) -> np.ndarray:
        """Advance through a chunk: ``y = stream(x)``.

        Parameters
        ----------
        x : array_like
            The chunk as the model takes it (T steps first, or as its layers are laid
            out), T >= 1.

        Returns
        -------
        y : np.ndarray
            What the model returns for the chunk, with the states carried over from the
            calls before.

        Raises
        ------
        ValueError, TypeError
            What a module raises for a wrong shape, dtype or value.
        """
        for kind, piece in self._pieces:
            if kind == "last":
                x = piece(x) if self.batch_size is not None else x[-1]
            else:
                x = piece(x)
        return x

    @property
    def state(self) -> list:
        """The recurrent layers' states now, in the form Sequential's `states` takes."""
        return [stream.state for stream in self._streams]

    def reset(self, state: Optional[list] = None, rows: Optional[ArrayLike] = None) -> None:
        """Set every recurrent layer's state: zeros (None, or a None entry), or the given
        ones, for every row or only `rows`; if one is refused, none changes.

        Parameters
        ----------
        state : list, optional
            One state per recurrent layer, in order, as Sequential's `states` (each as
            that layer's `Stream.reset` takes it), or None entries for zeros.
        rows : sequence of int, optional
            Only these batch rows (see `rnncore.Stream.reset`).

        Raises
        ------
        ValueError, TypeError
            A wrong number of states, shape, dtype or row.
        """
        states = self.model._state_list("state", state)
        saved = [stream.state for stream in self._streams]
        try:
            for stream, state in zip(self._streams, states):
                stream.reset(state, rows)
        except BaseException:
            for stream, state in zip(self._streams, saved):
                stream.reset(state)
            raise

    def refresh(self) -> None:
        """Take every module's current weights; the states carry over."""
        for stream in self._streams:
            stream.refresh()
        self._build()

    def __repr__(self):
        return f"SequentialStream({len(self._pieces)} modules, batch_size={self.batch_size}, steps={self.steps})"
