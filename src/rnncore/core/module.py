"""What every rnncore module shares: one `Module` base (parameters, gradients,
state_dict, train/eval, get_config, pickling, the repr of its constructor call), the
one-context rule of backward, the parameter budget of untrusted configurations, and
the registry of the classes a checkpoint may name (each class registers where it is
defined, with `@register`)."""
from __future__ import annotations

import contextlib
import contextvars
import inspect
import math
import numbers
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Optional

import numpy as np
from numpy.typing import ArrayLike

from . import validate
from .spec import init_bound


# -- the repr: the constructor call --------------------------------------------------
def _is_default(name: str, value: Any, default: Any) -> bool:
    if default is inspect.Parameter.empty:
        return False
    if name == "dtype":
        # the config spells a dtype by name ('float32'), the signature by type (np.float32)
        return bool(np.dtype(value) == np.dtype(default))
    if isinstance(value, bool) or isinstance(default, bool):
        return value is default
    if isinstance(value, (tuple, list)) and isinstance(default, (tuple, list)):
        return tuple(value) == tuple(default)
    if isinstance(value, numbers.Real) and isinstance(default, numbers.Real):
        return value == default
    return type(value) is type(default) and value == default


def indent(text: str, prefix: str = "  ") -> str:
    """`text` with every line after the first indented: a nested multi-line repr."""
    return text.replace("\n", "\n" + prefix)


def call_repr(obj: Any, config: Mapping[str, Any], leading: Iterable[str] = ()) -> str:
    """`Name(required..., name=value...)` from `config` (constructor arguments by name),
    in the order of the constructor's signature; `leading` are ready-made texts for the
    first positional arguments (an optimizer's modules), which `config` does not hold."""
    parameters = inspect.signature(type(obj).__init__).parameters
    parts = list(leading)
    for name, parameter in parameters.items():
        if name not in config:
            continue
        value = config[name]
        if parameter.default is inspect.Parameter.empty:
            parts.append(indent(repr(value)))
        elif not _is_default(name, value, parameter.default):
            parts.append(f"{name}={indent(repr(value))}")
    return f"{type(obj).__name__}({', '.join(parts)})"


class ConfigRepr:
    """`repr` from `get_config()` and the constructor's signature."""

    def __repr__(self) -> str:
        return call_repr(self, self.get_config())  # type: ignore[attr-defined]

# -- the registry: the only classes a checkpoint may name --------------------------------

_REGISTRY: dict[str, type] = {}


def register(cls=None, *, name=None):
    """Allow checkpoints of `cls` (saved and loaded under `name`, by default its class
    name). Usable as a decorator. The class needs state_dict(), load_state_dict(mapping)
    and get_config() returning JSON-serialisable constructor arguments; it is rebuilt by
    `cls.from_config(config)` if it defines one, else `cls(**config)`.

    Parameters
    ----------
    cls : type, optional
        The class; None returns a decorator that registers the class it decorates.
    name : str, optional
        The name checkpoints record; None: the class's name.

    Returns
    -------
    cls, or a decorator
        The class itself, so that it can decorate.

    Raises
    ------
    TypeError
        The class lacks state_dict, load_state_dict or get_config.
    ValueError
        The name is taken by another class.

    Examples
    --------
    >>> import rnncore as rc
    >>> @rc.checkpoint.register(name="docs.Scale")
    ... class Scale:
    ...     def __init__(self, factor=1.0):
    ...         self.factor = factor
    ...     def get_config(self):
    ...         return {"factor": self.factor}
    ...     def state_dict(self):
    ...         return {}
    ...     def load_state_dict(self, mapping):
    ...         pass
    >>> rc.checkpoint.registered()["docs.Scale"] is Scale
    True
    >>> rc.checkpoint.unregister("docs.Scale") is Scale
    True
    """
    def add(cls):
        missing = [m for m in ("state_dict", "load_state_dict", "get_config") if not callable(getattr(cls, m, None))]
        if missing:
            raise TypeError(f"register: {cls.__name__} lacks {missing}, which checkpoints need")
        key = name or cls.__name__
        if _REGISTRY.get(key, cls) is not cls:
            raise ValueError(f"register: the name {key!r} is already taken by {_REGISTRY[key].__module__}."
                             f"{_REGISTRY[key].__qualname__}; pass name= to register {cls.__qualname__}")
        _REGISTRY[key] = cls
        return cls
    return add if cls is None else add(cls)


def registered():
    """The registered names and classes.

    Returns
    -------
    dict of str to type
        A copy: changing it registers nothing.

    Examples
    --------
    >>> import rnncore as rc
    >>> rc.checkpoint.registered()["LSTM"] is rc.LSTM
    True
    """
    return dict(_REGISTRY)


def unregister(name):
    """Withdraw the class registered under `name`: checkpoints naming it no longer load,
    and the name is free for another class (a class defined again, in a notebook or a
    test).

    Parameters
    ----------
    name : str
        A registered name.

    Returns
    -------
    type
        The class that was registered under `name`.

    Raises
    ------
    KeyError
        No class is registered under `name`.

    Examples
    --------
    >>> import rnncore as rc
    >>> @rc.checkpoint.register(name="docs.Shift")
    ... class Shift:
    ...     def get_config(self):
    ...         return {}
    ...     def state_dict(self):
    ...         return {}
    ...     def load_state_dict(self, mapping):
    ...         pass
    >>> rc.checkpoint.unregister("docs.Shift") is Shift
    True
    >>> "docs.Shift" in rc.checkpoint.registered()
    False
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise KeyError(f"unregister: expected a registered name, got {name!r}")
    return _REGISTRY.pop(name)

def copy_state(params, mapping, strict=True):
    """Copy `mapping` (name -> array-like) into the live arrays `params`, in place so that
    references stay valid. Every name, shape and dtype is checked first, and each problem
    listed, so a bad mapping changes nothing."""
    if not isinstance(mapping, Mapping):
        raise TypeError(f"load_state_dict: expected a mapping of parameter names to arrays, got "
                        f"{type(mapping).__name__}")
    strict = validate.flag("strict", strict)
    given = {name: validate.to_numpy(value, name) for name, value in mapping.items()}
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


class Module(ConfigRepr):
    """The base of every rnncore module: parameters by name (live arrays, filled by
    `_init_params`; none for a module without parameters), their gradients,
    state_dict/load_state_dict with PyTorch's names, train/eval, get_config (the
    constructor arguments by name) and the repr of the constructor call.

    Pickling and copying drop the saved context (it holds buffers only its own backward
    needs), so a copy needs a training-mode forward of its own before backward;
    parameters, gradients, mode and random generator are copied."""

    def __init__(self) -> None:
        # a module without parameters; one with them calls `_init_params` instead
        self._params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.training = True
        self._saved = None

    def _init_params(self, shapes, hidden_size, seed, constants=None):
        _check_budget(sum(math.prod(shape) for shape in shapes.values()), self.dtype, charge=True)
        # every parameter U(-1/sqrt(H), 1/sqrt(H)), as PyTorch; drawn in float64 so that
        # float32 and float64 layers with the same seed hold the same values. Those in
        # `constants` ({name: value}: the layer norm's gains and shifts) start at their
        # value and draw nothing, so the others keep the draws of a layer without them.
        constants = constants or {}
        bound = init_bound(hidden_size)
        self._rng = np.random.default_rng(validate.seed(seed))
        self._params = {name: (np.full(shape, constants[name], self.dtype) if name in constants
                               else self._rng.uniform(-bound, bound, shape).astype(self.dtype))
                        for name, shape in shapes.items()}
        self.grads = {name: np.zeros_like(value) for name, value in self._params.items()}
        self.training = True
        self._saved = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_saved"] = None
        # caches derived from the configuration, rebuilt on first use by the copy
        state.pop("_by_layer", None)
        state.pop("_names_by_layer", None)
        state.pop("_form_cache", None)
        return state

    @property
    def _form(self):
        """How this module's calls lie (the `validate.SequenceForm` its `_call_form`
        builds), made at the first call and kept, so that a call formats no names; an
        object unpickled from an older version builds its own."""
        form = self.__dict__.get("_form_cache")
        if form is None:
            form = self._form_cache = self._call_form()
        return form

    def parameters(self) -> dict[str, np.ndarray]:
        """The live parameter arrays by name (updating them updates the module)."""
        return dict(self._params)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters, with PyTorch's names, shapes and gate orders."""
        return {name: value.copy() for name, value in self._params.items()}

    def load_state_dict(self, mapping: Mapping[str, ArrayLike], strict: bool = True) -> None:
        """Copy parameters in from any mapping of name to array-like (a PyTorch
        state_dict as it is). Wrong names or shapes leave the module unchanged."""
        copy_state(self._params, mapping, strict)

    def zero_grad(self) -> None:
        for g in self.grads.values():
            g.fill(0)

    def train(self, mode: bool = True) -> Module:
        self.training = validate.flag("mode", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this object (seed excepted), by name."""
        names = [n for n in inspect.signature(type(self).__init__).parameters if n not in ("self", "seed")]
        config = {n: getattr(self, n if n != "backend" else "_backend_name") for n in names}
        if hasattr(self, "dtype"):
            config["dtype"] = self.dtype.name
        return config
